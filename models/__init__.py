"""Model builders returning plain ``keras.Model``: float32 (N, 28, 28, 1) in [0, 1] → logits (N, 10)."""

from models.common import INPUT_SHAPE, NUM_CLASSES, check_contract, probability_model
from models.config import MODEL_KINDS, ModelConfig
from models.small_cnn import build_small_cnn
from models.vgg16 import CUTS, HEADS, RESIZES, build_vgg16_classifier, feature_extractor

__all__ = [
    "CUTS",
    "HEADS",
    "INPUT_SHAPE",
    "MODEL_KINDS",
    "NUM_CLASSES",
    "RESIZES",
    "ModelConfig",
    "build_small_cnn",
    "build_vgg16_classifier",
    "check_contract",
    "feature_extractor",
    "probability_model",
]
