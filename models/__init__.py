"""Model builders returning plain ``keras.Model``: float32 (N, 28, 28, 1) in [0, 1] → logits (N, 10).

The package imports lazily: ``import models.config`` (model options and their checks) does not import
TensorFlow, so that a config is checked before TensorFlow starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as mypy and editors see them
    from models.common import INPUT_SHAPE, NUM_CLASSES, check_contract, probability_model
    from models.config import CUTS, HEADS, MODEL_KINDS, ModelConfig, RESIZES
    from models.small_cnn import build_small_cnn
    from models.vgg16 import build_vgg16_classifier, feature_extractor

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    "CUTS": "models.config",
    "HEADS": "models.config",
    "INPUT_SHAPE": "models.common",
    "MODEL_KINDS": "models.config",
    "NUM_CLASSES": "models.common",
    "RESIZES": "models.config",
    "ModelConfig": "models.config",
    "build_small_cnn": "models.small_cnn",
    "build_vgg16_classifier": "models.vgg16",
    "check_contract": "models.common",
    "feature_extractor": "models.vgg16",
    "probability_model": "models.common",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
