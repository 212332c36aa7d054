"""The inference form of a CF-Conv layer: a constant spectral kernel, no MLPs, no state."""

from __future__ import annotations

import keras
import tensorflow as tf

from cfconv_tf.spectral import spectral_conv2d


@keras.saving.register_keras_serializable(package="cfconv_tf")
class FrozenSpectralConv2D(keras.layers.Layer):
    """Circular convolution with a fixed half-spectrum kernel, then ``activation``.

    Weights: ``kernel_real`` and ``kernel_imag``, ``[H, W//2+1, Cin, filters]``
    float32, set by :func:`export.freeze.freeze_model` (already Hermitian-projected on
    the DC/Nyquist columns, so every FFT implementation computes the same function).

    Input ``[B, H, W, Cin]`` with H, W fixed at build -> output ``[B, H, W, filters]``.
    """

    def __init__(self, filters: int, activation=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape) -> None:
        if len(input_shape) != 4 or None in tuple(input_shape[1:]):
            raise ValueError(
                f"{self.name} needs inputs [batch, height, width, channels] with fixed "
                f"sizes, got {tuple(input_shape)}"
            )
        height, width, channels = (int(size) for size in input_shape[1:])
        self.input_size = (height, width)
        shape = (height, width // 2 + 1, channels, self.filters)
        self.kernel_real = self.add_weight(
            name="kernel_real", shape=shape, initializer="zeros", trainable=False
        )
        self.kernel_imag = self.add_weight(
            name="kernel_imag", shape=shape, initializer="zeros", trainable=False
        )
        self.input_spec = keras.InputSpec(ndim=4, axes={1: height, 2: width, -1: channels})

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        kernel_real = tf.convert_to_tensor(self.kernel_real)
        kernel_imag = tf.convert_to_tensor(self.kernel_imag)
        return self.activation(spectral_conv2d(inputs, kernel_real, kernel_imag))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"filters": self.filters, "activation": keras.activations.serialize(self.activation)}
        )
        return config
