"""Two defences' own layers, as a researcher writes them, for docs/defenses.md: a 4-level input quantizer (not
differentiable: its gradient is zero almost everywhere) and Gaussian input noise at inference (randomized: its random
op has no seed). A sweep loads a model that uses them with `custom_objects = "experiments/configs/defenses/my_defense.py"`
in the model's table; Keras finds the classes by the names they are registered under."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="my_defense")
class Quantize(keras.layers.Layer):
    """Rounds each pixel of a [0, 1] image to one of ``levels`` evenly spaced values."""

    def __init__(self, levels=4, **kwargs):
        super().__init__(**kwargs)
        self.levels = levels

    def call(self, x):
        return tf.round(x * (self.levels - 1)) / (self.levels - 1)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


@keras.saving.register_keras_serializable(package="my_defense")
class GaussianNoise(keras.layers.Layer):
    """Adds fresh Gaussian noise of standard deviation ``sigma`` to the input at every call, inference included."""

    def __init__(self, sigma=0.3, **kwargs):
        super().__init__(**kwargs)
        self.sigma = sigma

    def call(self, x):
        return x + tf.random.normal(tf.shape(x), stddev=self.sigma)

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}
