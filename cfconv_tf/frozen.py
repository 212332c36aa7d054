"""The inference form of a CF-Conv layer: a constant spectral kernel, no MLPs, no state."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import keras
import tensorflow as tf

from cfconv_tf.spectral import spectral_conv2d

# (layer, float32 input [B, H, W, Cin]) -> float32 output [B, H, W, filters]
Convolution = Callable[["FrozenSpectralConv2D", tf.Tensor], tf.Tensor]
_CONVOLUTION: ContextVar[Convolution | None] = ContextVar("cfconv_frozen_convolution", default=None)


@contextlib.contextmanager
def convolution_override(convolve: Convolution) -> Iterator[None]:
    """Make frozen layers called (or traced) inside this block convolve with ``convolve``.

    An exporter uses it to trace the model with an equivalent form of the convolution
    that its converter understands (:mod:`export.onnx_spectral`); outside the block the
    layers use :func:`cfconv_tf.spectral.spectral_conv2d`.
    """
    token = _CONVOLUTION.set(convolve)
    try:
        yield
    finally:
        _CONVOLUTION.reset(token)


@keras.saving.register_keras_serializable(package="cfconv_tf")
class FrozenSpectralConv2D(keras.layers.Layer):
    """Circular convolution with a fixed half-spectrum kernel, then ``activation``.

    Weights: ``kernel_real`` and ``kernel_imag``, ``[H, W//2+1, Cin, filters]``
    float32, set by :func:`export.freeze.freeze_model` (already Hermitian-projected on
    the DC/Nyquist columns, so every FFT implementation computes the same function).

    Input ``[B, H, W, Cin]`` with H, W fixed at build -> output ``[B, H, W, filters]``
    in the layer's compute dtype; the transforms and the kernel are float32 under any
    dtype policy.
    """

    def __init__(self, filters: int, activation=None, **kwargs) -> None:
        # no autocast of inputs or weights: the layer keeps its kernel and transforms in
        # float32 itself (its weights are also created with autocast=False, which holds
        # where a mixed layer sits in a float32 model)
        super().__init__(**{**kwargs, "autocast": False})
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
        self.kernel_real, self.kernel_imag = (
            self.add_weight(
                name=name,
                shape=shape,
                initializer="zeros",
                trainable=False,
                dtype="float32",
                autocast=False,
            )
            for name in ("kernel_real", "kernel_imag")
        )
        self.input_spec = keras.InputSpec(ndim=4, axes={1: height, 2: width, -1: channels})

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.cast(inputs, tf.float32)
        convolve = _CONVOLUTION.get()
        if convolve is None:
            y = spectral_conv2d(
                x, tf.convert_to_tensor(self.kernel_real), tf.convert_to_tensor(self.kernel_imag)
            )
        else:
            y = convolve(self, x)
        return self.activation(tf.cast(y, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"filters": self.filters, "activation": keras.activations.serialize(self.activation)}
        )
        return config
