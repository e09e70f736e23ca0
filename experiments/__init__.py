"""Configs, the sweep runner, metrics, tables, plots and the command line of advsweep."""

if __name__ != "advsweep.experiments":  # the folder imported by its bare name, from the repository root
    raise ImportError(f"{__name__!r} is the folder of advsweep.experiments: import advsweep.experiments (after `pip install -e .`), "
                      "so that one copy of the code runs")
