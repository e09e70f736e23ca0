"""Model builders returning plain ``keras.Model`` (MNIST: float32 (N, 28, 28, 1) in [0, 1] → logits (N, 10)), and
the loading of any Keras classifier that returns logits (:func:`load_classifier`).

The package imports lazily: ``import advsweep.models.config`` (model options and their checks) does not import
TensorFlow, so that a config is checked before TensorFlow starts.
"""

from __future__ import annotations

if __name__ != "advsweep.models":  # the folder imported by its bare name, from the repository root
    raise ImportError(f"{__name__!r} is the folder of advsweep.models: import advsweep.models (after `pip install -e .`), "
                      "so that one copy of the code runs")

from typing import TYPE_CHECKING

from advsweep.lazy import lazy_exports

if TYPE_CHECKING:  # the names as mypy and editors see them
    from advsweep.models.common import (
        INPUT_SHAPE,
        NUM_CLASSES,
        as_classifier,
        check_contract,
        ends_in_softmax,
        load_classifier,
        probability_model,
    )
    from advsweep.models.config import CUTS, HEADS, MODEL_KINDS, AdversarialConfig, ModelConfig, RESIZES
    from advsweep.models.madry_cnn import build_madry_cnn
    from advsweep.models.small_cnn import build_small_cnn
    from advsweep.models.trades_cnn import build_trades_cnn
    from advsweep.models.wong_cnn import build_wong_cnn
    from advsweep.models.vgg16 import build_vgg16_classifier, feature_extractor

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "CUTS": "advsweep.models.config",
    "HEADS": "advsweep.models.config",
    "INPUT_SHAPE": "advsweep.models.common",
    "MODEL_KINDS": "advsweep.models.config",
    "NUM_CLASSES": "advsweep.models.common",
    "RESIZES": "advsweep.models.config",
    "ModelConfig": "advsweep.models.config",
    "AdversarialConfig": "advsweep.models.config",
    "build_madry_cnn": "advsweep.models.madry_cnn",
    "build_small_cnn": "advsweep.models.small_cnn",
    "build_trades_cnn": "advsweep.models.trades_cnn",
    "build_wong_cnn": "advsweep.models.wong_cnn",
    "build_vgg16_classifier": "advsweep.models.vgg16",
    "as_classifier": "advsweep.models.common",
    "check_contract": "advsweep.models.common",
    "ends_in_softmax": "advsweep.models.common",
    "load_classifier": "advsweep.models.common",
    "feature_extractor": "advsweep.models.vgg16",
    "probability_model": "advsweep.models.common",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
