"""A frozen ImageNet-VGG16 conv base with a trainable head, as an MNIST classifier that returns logits.

The whole input pipeline lives inside the graph, so that every attack (and foolbox) sees one
function from MNIST pixels in [0, 1] to logits and ε is measured in MNIST pixel units:

    (N, 28, 28, 1) in [0, 1] → zero-pad or bilinear resize to S × S → grey to three channels →
    caffe preprocessing (× 255, BGR order, minus the ImageNet channel means) → VGG16 conv base up to
    ``cut`` (frozen, ImageNet weights) → flatten → head (feature scaling, optional hidden layers) →
    logits (N, 10)

Reference: K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015. Structure follows ``keras/src/applications/vgg16.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from advsweep.models.common import INPUT_SHAPE, NUM_CLASSES
from advsweep.models.config import CUTS, HEADS, MAX_INPUT_SIZE, MIN_INPUT_SIZE, RESIZES, check_vgg16_options

CAFFE_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)


def build_vgg16_base(
    weights: dict[str, tuple[np.ndarray, np.ndarray]] | None,
    *,
    input_size: int = 32,
    cut: str = "block4_pool",
) -> keras.Model:
    """The VGG16 conv base from its input up to the pooling layer ``cut``, frozen.

    Args:
        weights: ``{layer: (kernel (H, W, I, O), bias (O,))}`` for the conv layers, as returned by
            :func:`advsweep.assets.load_vgg16_weights`; ``None`` leaves them random (for loading a saved model).
        input_size: side S of the square input, already caffe-preprocessed, shape ``(N, S, S, 3)``.
        cut: the last layer kept, one of :data:`CUTS`.

    Returns:
        A non-trainable ``keras.Model`` named ``"vgg16_base"`` with Keras' layer names.
    """
    full = keras.applications.VGG16(weights=None, include_top=False, input_shape=(input_size, input_size, 3))
    base = keras.Model(full.input, full.get_layer(cut).output, name="vgg16_base")
    if weights is not None:
        for layer in base.layers:
            if layer.name in weights:
                kernel, bias = weights[layer.name]
                layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    base.trainable = False
    return base


def build_preprocessing(*, input_size: int = 32, resize: str = "pad") -> list[keras.layers.Layer]:
    """The in-graph layers from MNIST pixels in [0, 1] to VGG16's caffe-preprocessed input.

    Equivalent to ``keras.applications.vgg16.preprocess_input(255 * rgb(resize(x)))``.
    """
    if resize == "pad":
        extra = input_size - INPUT_SHAPE[0]
        before, after = extra // 2, extra - extra // 2
        resize_layer: keras.layers.Layer = keras.layers.ZeroPadding2D(((before, after), (before, after)), name="resize")
    else:
        resize_layer = keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize")
    return [
        resize_layer,
        keras.layers.Concatenate(axis=-1, name="grey_to_rgb"),
        keras.layers.Rescaling(scale=255.0, offset=[-m for m in CAFFE_BGR_MEAN], name="caffe_preprocess"),
    ]


def build_head(
    num_features: int,
    *,
    head: str = "linear",
    hidden_units: Sequence[int] = (512,),
    dropout: float = 0.0,
    feature_scaling: bool = True,
) -> keras.Model:
    """The trainable head from flattened base features to logits, as a ``keras.Sequential`` named ``"head"``.

    With ``feature_scaling``, a ``Normalization`` layer standardises each feature; call
    ``head.get_layer("feature_scaling").adapt(train_features)`` before training.
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=(num_features,), name="features")]
    if feature_scaling:
        layers.append(keras.layers.Normalization(axis=-1, name="feature_scaling"))
    if head == "mlp":
        for index, units in enumerate(hidden_units, start=1):
            layers.append(keras.layers.Dense(units, activation="relu", name=f"hidden{index}"))
            if dropout > 0:
                layers.append(keras.layers.Dropout(dropout, name=f"dropout{index}"))
    layers.append(keras.layers.Dense(NUM_CLASSES, name="logits"))
    return keras.Sequential(layers, name="head")


def build_vgg16_classifier(
    weights: dict[str, tuple[np.ndarray, np.ndarray]] | None,
    *,
    input_size: int = 32,
    resize: str = "pad",
    cut: str = "block4_pool",
    head: str = "linear",
    hidden_units: Sequence[int] = (512,),
    dropout: float = 0.0,
    feature_scaling: bool = True,
) -> keras.Model:
    """Build the frozen-VGG16 MNIST classifier.

    Args:
        weights: the ImageNet conv weights (see :func:`build_vgg16_base`).
        input_size: side of the square image fed to VGG16, 32 (Keras' minimum) to 224.
        resize: ``"pad"`` (zero-pad the 28 × 28 digit, centred) or ``"bilinear"`` (resize).
        cut: last VGG16 layer kept: ``"block5_pool"`` (the whole base), ``"block4_pool"`` or
            ``"block3_pool"``.
        head: ``"linear"`` (one dense layer) or ``"mlp"`` (ReLU hidden layers, then dense).
        hidden_units: widths of the MLP's hidden layers.
        dropout: dropout rate after each hidden layer, in [0, 1).
        feature_scaling: standardise the base features before the head (needs ``adapt``).

    Returns:
        A ``keras.Model`` named ``"vgg16_mnist"``: float32 ``(N, 28, 28, 1)`` in [0, 1] → logits
        ``(N, 10)``. Its sub-model ``"vgg16_base"`` is frozen; its sub-model ``"head"`` trains.

    Raises:
        ValueError: an option is outside its allowed values.
    """
    check_vgg16_options(
        input_size=input_size, resize=resize, cut=cut, head=head, hidden_units=hidden_units, dropout=dropout
    )
    resize_layer, grey_to_rgb, caffe = build_preprocessing(input_size=input_size, resize=resize)
    base = build_vgg16_base(weights, input_size=input_size, cut=cut)
    num_features = int(np.prod(base.output_shape[1:]))
    head_model = build_head(
        num_features, head=head, hidden_units=hidden_units, dropout=dropout, feature_scaling=feature_scaling
    )

    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    resized = resize_layer(inputs)
    rgb = grey_to_rgb([resized, resized, resized])
    features = keras.layers.Flatten(name="flatten")(base(caffe(rgb)))
    logits = head_model(features)
    return keras.Model(inputs, logits, name="vgg16_mnist")


def feature_extractor(model: keras.Model) -> keras.Model:
    """The frozen part of a :func:`build_vgg16_classifier` model: image → flattened base features."""
    return keras.Model(model.input, model.get_layer("flatten").output, name="vgg16_features")
