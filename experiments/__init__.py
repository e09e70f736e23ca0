"""Configs, the sweep runner, metrics, tables, plots and the command line of advsweep."""
