"""Kernel generators: coordinate MLPs and the normalized kernel coordinates they read."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

# Hidden widths of each generator MLP in the paper (sec. 6): 4 -> these -> 1.
PAPER_HIDDEN_UNITS: tuple[int, ...] = (32, 32, 32, 16, 16, 16, 8, 8, 8)
# Initializers of the hidden layers' weights: Keras' default (the paper names none),
# or He's, which keeps a deep ReLU MLP's output at the scale of its input.
HIDDEN_INITIALIZERS = ("glorot_uniform", "he_normal")


def normalized_coordinates(positions: tf.Tensor, kernel_shape: Sequence[int]) -> tf.Tensor:
    """Map flat kernel positions to normalized ``(h, w, i, o)`` coordinates in [0, 1].

    Each axis index is divided by ``size - 1`` (an axis of size 1 maps to 0), the
    convention of the paper (sec. 3), so a kernel can be re-sampled on another grid.

    Args:
        positions: int64 flat indices into a row-major kernel, shape ``[n]``.
        kernel_shape: ``(H, Wf, Cin, Cout)``.

    Returns:
        float32 coordinates, shape ``[n, 4]``.
    """
    dims = tf.constant(list(kernel_shape), dtype=tf.int64)
    indices = tf.transpose(tf.unravel_index(positions, dims))  # [n, 4]
    scale = tf.constant([1.0 / max(size - 1, 1) for size in kernel_shape], tf.float32)
    return tf.cast(indices, tf.float32) * scale


def validate_fourier_bands(bands: int) -> int:
    """Check a ``fourier_bands`` setting: an integer >= 0 (0 = raw coordinates)."""
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 0:
        raise ValueError(f"fourier_bands must be an integer >= 0, got {bands!r}")
    return bands


def validate_hidden_initializer(name: str) -> str:
    """Check a ``hidden_initializer`` setting: one of :data:`HIDDEN_INITIALIZERS`."""
    if name not in HIDDEN_INITIALIZERS:
        raise ValueError(f"hidden_initializer must be one of {HIDDEN_INITIALIZERS}, got {name!r}")
    return name


@keras.saving.register_keras_serializable(package="cfconv_tf")
class CoordinateMLP(keras.layers.Layer):
    """An MLP from normalized kernel coordinates to one kernel value.

    ``4 -> hidden_units[0] -> ... -> hidden_units[-1] -> 1`` with ReLU between the
    linear layers and a linear output, as the paper's ``R_theta`` / ``I_theta``.

    With ``fourier_bands = L > 0`` (not in the paper) each coordinate ``u`` is also fed
    as ``sin(2^k pi u), cos(2^k pi u)`` for ``k < L`` (the positional encoding of NeRF):
    a ReLU MLP on raw coordinates can only draw smooth functions, so neighbouring
    channels would get nearly the same kernel.

    ``hidden_initializer``: Keras' default ``glorot_uniform`` halves the signal's
    variance at every ReLU layer (the paper's 10-layer MLP outputs values of std
    ~0.005); ``he_normal`` keeps it.

    Call: coordinates ``[n, 4]`` float32 -> values ``[n]`` float32.
    """

    def __init__(
        self,
        hidden_units: Sequence[int] = PAPER_HIDDEN_UNITS,
        fourier_bands: int = 0,
        hidden_initializer: str = "glorot_uniform",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.fourier_bands = validate_fourier_bands(fourier_bands)
        self.hidden_initializer = validate_hidden_initializer(hidden_initializer)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        if not self.hidden_units or min(self.hidden_units) <= 0:
            raise ValueError(
                f"hidden_units must be a non-empty list of positive widths, "
                f"got {list(hidden_units)}"
            )

    def build(self, input_shape) -> None:
        self.dense_layers = [
            keras.layers.Dense(
                units,
                activation="relu",
                kernel_initializer=self.hidden_initializer,
                name=f"dense_{index}",
            )
            for index, units in enumerate(self.hidden_units)
        ]
        self.dense_layers.append(keras.layers.Dense(1, name="output"))
        shape = tuple(input_shape)[:-1] + (4 + 8 * self.fourier_bands,)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)

    def call(self, coordinates: tf.Tensor) -> tf.Tensor:
        hidden = coordinates
        if self.fourier_bands:
            frequencies = tf.constant([math.pi * 2.0**k for k in range(self.fourier_bands)])
            angles = tf.reshape(coordinates[:, :, None] * frequencies, [-1, 4 * self.fourier_bands])
            hidden = tf.concat([coordinates, tf.sin(angles), tf.cos(angles)], axis=-1)
        for layer in self.dense_layers:
            hidden = layer(hidden)
        return tf.squeeze(hidden, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "hidden_units": list(self.hidden_units),
                "fourier_bands": self.fourier_bands,
                "hidden_initializer": self.hidden_initializer,
            }
        )
        return config
