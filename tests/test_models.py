"""Model builders: the input/output contract, in-graph preprocessing, a frozen base, clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from advsweep.assets import VGG16_LAYERS
from advsweep.models import ModelConfig, build_small_cnn, build_vgg16_classifier, check_contract, probability_model
from advsweep.models.training import to_float_images


def test_in_graph_preprocessing_equals_keras_preprocess_input(vgg16_weights, test_images):
    weights, _ = vgg16_weights
    model = build_vgg16_classifier(weights, input_size=32, resize="pad")
    x = test_images[0][:16]
    pipeline = keras.Model(model.input, model.get_layer("caffe_preprocess").output)
    ours = pipeline(x).numpy()
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    rgb = np.repeat(padded * 255.0, 3, axis=-1)
    reference = keras.applications.vgg16.preprocess_input(rgb.copy())
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_bilinear_preprocessing_equals_keras_preprocess_input(vgg16_weights, test_images):
    weights, _ = vgg16_weights
    model = build_vgg16_classifier(weights, input_size=64, resize="bilinear", cut="block5_pool")
    x = test_images[0][:8]
    ours = keras.Model(model.input, model.get_layer("caffe_preprocess").output)(x).numpy()
    resized = keras.layers.Resizing(64, 64, interpolation="bilinear")(x).numpy()
    reference = keras.applications.vgg16.preprocess_input(np.repeat(resized * 255.0, 3, axis=-1))
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_base_carries_the_imagenet_weights_and_is_frozen(vgg16_weights):
    weights, _ = vgg16_weights
    model = build_vgg16_classifier(weights, cut="block5_pool")
    base = model.get_layer("vgg16_base")
    assert not base.trainable and base.trainable_weights == []
    for name in VGG16_LAYERS:
        kernel, bias = base.get_layer(name).get_weights()
        np.testing.assert_array_equal(kernel, weights[name][0])
        np.testing.assert_array_equal(bias, weights[name][1])
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"head"}


def test_base_is_unchanged_after_training(vgg16_model, vgg16_weights):
    """The session fixture trained the head; the base must still hold the ImageNet weights."""
    weights, _ = vgg16_weights
    base = vgg16_model.get_layer("vgg16_base")
    for layer in base.layers:
        if layer.name in weights:
            np.testing.assert_array_equal(layer.get_weights()[0], weights[layer.name][0])
            np.testing.assert_array_equal(layer.get_weights()[1], weights[layer.name][1])


@pytest.mark.parametrize("model_name", ["small_cnn", "vgg16"])
def test_output_is_logits_not_probabilities(model_name, small_cnn, vgg16_model, test_images):
    model = small_cnn if model_name == "small_cnn" else vgg16_model
    check_contract(model)
    logits = model(test_images[0][:64]).numpy()
    assert logits.shape == (64, 10)
    assert logits.min() < 0 or logits.max() > 1
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-2)


def test_models_classify_real_digits(small_cnn, vgg16_model, test_images):
    x, y = test_images
    assert np.mean(np.argmax(small_cnn(x).numpy(), 1) == y) > 0.9
    assert np.mean(np.argmax(vgg16_model(x).numpy(), 1) == y) > 0.9


def test_probability_view_applies_temperature(small_cnn, test_images):
    x = test_images[0][:8]
    logits = small_cnn(x).numpy()
    probabilities = probability_model(small_cnn, temperature=0.6)(x).numpy()
    expected = np.exp(logits / 0.6 - (logits / 0.6).max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"input_size": 16}, "input_size.*Received: input_size=16"),
        ({"input_size": 32.0}, "input_size"),
        ({"resize": "nearest"}, r"`resize` must be one of 'pad', 'bilinear'. Received: resize='nearest'"),
        ({"cut": "block2_conv1"}, "cut.*block4_pool.*Received: cut='block2_conv1'"),
        ({"head": "svm"}, r"`head` must be one of 'linear', 'mlp'"),
        ({"head": "mlp", "hidden_units": ()}, "hidden_units"),
        ({"head": "mlp", "hidden_units": (512, -1)}, "hidden_units"),
        ({"dropout": 1.0}, "dropout"),
    ],
    ids=["size-too-small", "size-float", "resize", "cut", "head", "no-hidden", "negative-hidden", "dropout"],
)
def test_invalid_vgg16_options_raise_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        build_vgg16_classifier(None, **options)


@pytest.mark.parametrize(
    "values,match",
    [
        ({"kind": "resnet"}, r"`kind` must be one of 'vgg16', 'small_cnn'"),
        ({"colour": "red"}, r"unknown model option\(s\) \['colour'\]"),
        ({"epochs": 0}, "epochs"),
        ({"temperature": 0}, "temperature"),
        ({"train_examples": 60000}, "train_examples.*1 to 55000"),
        ({"seed": -1}, "seed"),
        # an option that another voids is refused, not taken into the model id for nothing
        ({"kind": "vgg16", "hidden_units": [256]}, r"hidden_units shape the MLP head only: set head='mlp'.*"
                                                   r"Received: head='linear', hidden_units=\(256,\)"),
        ({"kind": "vgg16_scratch", "dropout": 0.5}, r"dropout shape the MLP head only.*dropout=0.5"),
        ({"kind": "madry_cnn", "temperature": 0.6, "adversarial": {"method": "pgd", "eps": 0.3}},
         r"adversarial training uses the plain cross-entropy.*temperature=0.6 with adversarial='pgd'"),
    ],
    ids=["kind", "unknown-key", "epochs", "temperature", "train-examples", "seed", "hidden-with-linear",
         "dropout-with-linear", "temperature-with-adversarial"],
)
def test_invalid_model_config_raises(values, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_mapping(values)


def test_voidable_options_work_where_they_apply():
    """The same options are taken, and change the model id, where they do something."""
    mlp = ModelConfig(kind="vgg16", head="mlp", hidden_units=(256,), dropout=0.5)
    assert mlp.model_id != ModelConfig(kind="vgg16", head="mlp").model_id
    assert ModelConfig(kind="small_cnn", temperature=0.6).model_id != ModelConfig(kind="small_cnn").model_id


def test_temperature_must_be_positive(small_cnn):
    with pytest.raises(ValueError, match="temperature"):
        probability_model(small_cnn, temperature=0)


def test_model_id_is_stable_and_ignores_options_of_other_kinds():
    assert ModelConfig().model_id == ModelConfig().model_id
    assert ModelConfig(kind="small_cnn").model_id == ModelConfig(kind="small_cnn", cut="block5_pool").model_id
    assert ModelConfig(cut="block5_pool").model_id != ModelConfig().model_id


def test_small_cnn_has_the_tutorial_architecture():
    model = build_small_cnn()
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    assert [model.get_layer(n).filters for n in ("conv1", "conv2")] == [32, 64]
    assert model.get_layer("dense").units == 64 and model.output_shape == (None, 10)


def test_saved_model_round_trips(tmp_path, vgg16_model, test_images):
    path = tmp_path / "m.keras"
    vgg16_model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = test_images[0][:8]
    np.testing.assert_allclose(loaded(x).numpy(), vgg16_model(x).numpy(), atol=1e-5)


def test_to_float_images_scales_to_unit_interval():
    images = np.array([[[0, 255]]], dtype=np.uint8).repeat(28, 1).repeat(14, 2)
    x = to_float_images(images)
    assert x.shape == (1, 28, 28, 1) and x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
