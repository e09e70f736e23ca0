"""advsweep: adversarial-robustness sweeps on Keras classifiers.

Everything installs and imports under this one name, so that it never shadows (or is shadowed by) a
``models`` or ``attacks`` package of the environment it is installed into. In the repository the four
layers keep their top-level folders (``assets/``, ``models/``, ``attacks/``, ``experiments/``), which install as
``advsweep.assets`` … ``advsweep.experiments`` through setuptools' package-dir mapping (pyproject.toml). Data
flows one way, and a layer imports only those below it
(``[tool.importlinter]`` in pyproject.toml states the contract; CI checks it):

    advsweep.assets → advsweep.models → advsweep.attacks → advsweep.experiments
"""
