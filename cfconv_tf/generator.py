"""Kernel generators: functions from kernel positions to spectral kernel values.

Two kinds, chosen by a layer's ``generator`` setting:

- :class:`CoordinateMLP` (``"coordinate_mlp"``, the paper's): one MLP of the normalized
  coordinates ``(h, w, i, o)``;
- :class:`FactorizedGenerator` (``"factorized"``, not in the paper): an MLP of the
  frequency coordinates ``(h, w)`` giving ``rank`` factors, times a learned factor
  vector per channel pair ``(i, o)``.

Both answer :meth:`values` for flat positions into a kernel of any spatial size (the
frequency coordinates are normalized, so the kernel can be re-sampled on another grid).
"""

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
GENERATORS = ("coordinate_mlp", "factorized")


def normalized_coordinates(positions: tf.Tensor, kernel_shape: Sequence[int]) -> tf.Tensor:
    """Map flat kernel positions to normalized ``(h, w, i, o)`` coordinates in [0, 1].

    Each axis index is divided by ``size - 1`` (an axis of size 1 maps to 0), the
    convention of the paper (sec. 3), so a kernel can be re-sampled on another grid.

    Args:
        positions: int64 flat indices into a row-major kernel, shape ``[n]``.
        kernel_shape: ``(H, Wf, Cin, Cout)`` (or any row-major shape of ``d`` axes,
            e.g. the ``(H, Wf)`` frequency grid).

    Returns:
        float32 coordinates, shape ``[n, 4]`` (``[n, d]``).
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


def validate_generator(name: str) -> str:
    """Check a ``generator`` setting: one of :data:`GENERATORS`."""
    if name not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}, got {name!r}")
    return name


def validate_generator_rank(rank: int) -> int:
    """Check a ``generator_rank`` setting: a positive integer."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"generator_rank must be a positive integer, got {rank!r}")
    return rank


def fourier_features(coordinates: tf.Tensor, bands: int) -> tf.Tensor:
    """``[u, sin(2^k pi u), cos(2^k pi u) for k < bands]`` of each coordinate column.

    ``[n, d]`` -> ``[n, d (1 + 2 bands)]`` float32 (the input itself when ``bands == 0``).
    """
    if not bands:
        return coordinates
    width = coordinates.shape[-1]
    frequencies = tf.constant([math.pi * 2.0**k for k in range(bands)])
    angles = tf.reshape(coordinates[:, :, None] * frequencies, [-1, width * bands])
    return tf.concat([coordinates, tf.sin(angles), tf.cos(angles)], axis=-1)


def _relu_stack(hidden_units: Sequence[int], initializer: str, dtype) -> list[keras.layers.Dense]:
    """The hidden ReLU layers of a generator MLP, named ``dense_<k>``, in ``dtype``'s policy."""
    return [
        keras.layers.Dense(
            units,
            activation="relu",
            kernel_initializer=initializer,
            name=f"dense_{index}",
            dtype=dtype,
        )
        for index, units in enumerate(hidden_units)
    ]


def _build_stack(layers: Sequence[keras.layers.Dense], input_width: int) -> None:
    """Build ``layers`` in sequence on inputs ``[None, input_width]``."""
    shape = (None, input_width)
    for layer in layers:
        layer.build(shape)
        shape = (None, layer.units)


def _apply_stack(layers: Sequence[keras.layers.Dense], inputs: tf.Tensor) -> tf.Tensor:
    """``inputs [n, d]`` through ``layers`` in sequence: ``[n, last layer's units]``."""
    for layer in layers:
        inputs = layer(inputs)
    return inputs


def _validate_hidden_units(hidden_units: Sequence[int]) -> tuple[int, ...]:
    units = tuple(int(width) for width in hidden_units)
    if not units or min(units) <= 0:
        raise ValueError(
            f"hidden_units must be a non-empty list of positive widths, got {list(hidden_units)}"
        )
    return units


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
        self.hidden_units = _validate_hidden_units(hidden_units)

    def build(self, input_shape) -> None:
        self.dense_layers = _relu_stack(
            self.hidden_units, self.hidden_initializer, self.dtype_policy
        )
        self.dense_layers.append(keras.layers.Dense(1, name="output", dtype=self.dtype_policy))
        _build_stack(self.dense_layers, 4 * (1 + 2 * self.fourier_bands))

    def call(self, coordinates: tf.Tensor) -> tf.Tensor:
        hidden = _apply_stack(self.dense_layers, fourier_features(coordinates, self.fourier_bands))
        return tf.squeeze(hidden, axis=-1)

    def values(self, positions: tf.Tensor, kernel_shape: Sequence[int]) -> tf.Tensor:
        """Values ``[n]`` at int64 flat ``positions`` ``[n]`` of a ``kernel_shape`` kernel."""
        return self.call(normalized_coordinates(positions, kernel_shape))

    def kernel(self, kernel_shape: Sequence[int], chunk_size: int = 2**16) -> tf.Tensor:
        """The values at every position of a ``kernel_shape`` kernel, that shape.

        Evaluated in chunks of ``chunk_size`` positions (the MLP's activations for a
        150x150 kernel's 11.7M positions would not fit at once).
        """
        total = math.prod(int(size) for size in kernel_shape)
        chunks = [
            self.values(
                tf.range(start, min(start + chunk_size, total), dtype=tf.int64), kernel_shape
            )
            for start in range(0, total, chunk_size)
        ]
        return tf.reshape(tf.concat(chunks, 0), kernel_shape)

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


@keras.saving.register_keras_serializable(package="cfconv_tf")
class FactorizedGenerator(keras.layers.Layer):
    """A kernel generator factorized into frequency and channel-pair factors.

    ``value(h, w, i, o) = <A(h, w), B[i, o]> / sqrt(rank)``, where ``A`` is a ReLU MLP
    ``2 (1 + 2 fourier_bands) -> hidden_units -> rank`` of the normalized frequency
    coordinates (their Fourier features) and ``B`` a learned ``[Cin * Cout, rank]``
    table (channels are discrete: there is nothing continuous to share between them).

    Why (docs/results.md): the paper's one MLP of ``(h, w, i, o)`` must draw
    1,024 channel pairs' kernels from numeric channel coordinates and learns them
    slowly; here each pair owns its factors and only the frequency axis is continuous
    (so :meth:`values` still re-samples the kernel on another grid). It is also cheap:
    ``A`` is evaluated once per frequency of the grid (``H * Wf`` rows) however many
    positions are asked for, then each position costs one ``rank``-long dot product.

    Build with the kernel shape ``(H, Wf, Cin, Cout)`` the layer trains on. Call:
    int64 flat positions ``[n]`` into that kernel -> values ``[n]`` float32
    (:meth:`values` and :meth:`kernel` take any grid with the same channel counts).
    """

    def __init__(
        self,
        rank: int = 16,
        hidden_units: Sequence[int] = (64, 64),
        fourier_bands: int = 0,
        hidden_initializer: str = "he_normal",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.rank = validate_generator_rank(rank)
        self.hidden_units = _validate_hidden_units(hidden_units)
        self.fourier_bands = validate_fourier_bands(fourier_bands)
        self.hidden_initializer = validate_hidden_initializer(hidden_initializer)

    def build(self, kernel_shape) -> None:
        self.kernel_shape = tuple(int(size) for size in kernel_shape)
        self.channels = self.kernel_shape[2:]
        self.dense_layers = _relu_stack(
            self.hidden_units, self.hidden_initializer, self.dtype_policy
        )
        # unit-variance factors: A's output and B's entries are both ~N(0, 1), so
        # values are ~N(0, 1) before the layer's kernel_scale
        self.dense_layers.append(
            keras.layers.Dense(
                self.rank,
                kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "normal"),
                name="output",
                dtype=self.dtype_policy,
            )
        )
        _build_stack(self.dense_layers, 2 * (1 + 2 * self.fourier_bands))
        self.channel_factors = self.add_weight(
            name="channel_factors",
            shape=(self.channels[0] * self.channels[1], self.rank),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            autocast=False,  # read inside a mixed-precision CF layer's call, stays float32
        )

    def frequency_factors(self, grid: tuple[int, int]) -> tf.Tensor:
        """``A`` at every frequency of an ``(H, Wf)`` grid: ``[H * Wf, rank]``, row-major."""
        height, half_width = grid
        positions = tf.range(height * half_width, dtype=tf.int64)
        coordinates = normalized_coordinates(positions, (height, half_width))
        return _apply_stack(self.dense_layers, fourier_features(coordinates, self.fourier_bands))

    def call(self, positions: tf.Tensor) -> tf.Tensor:
        return self.values(positions, self.kernel_shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def values(self, positions: tf.Tensor, kernel_shape: Sequence[int]) -> tf.Tensor:
        """Values ``[n]`` at int64 flat ``positions`` ``[n]`` of a ``kernel_shape`` kernel."""
        self._check_channels(kernel_shape)
        height, half_width = (int(size) for size in kernel_shape[:2])
        pairs = self.channels[0] * self.channels[1]
        frequency = tf.gather(self.frequency_factors((height, half_width)), positions // pairs)
        channel = tf.gather(self.channel_factors, positions % pairs)
        return tf.reduce_sum(frequency * channel, axis=-1) / math.sqrt(self.rank)

    def kernel(self, kernel_shape: Sequence[int]) -> tf.Tensor:
        """The values at every position of a ``kernel_shape`` kernel, that shape.

        One ``[H * Wf, rank] x [rank, Cin * Cout]`` product.
        """
        self._check_channels(kernel_shape)
        height, half_width = (int(size) for size in kernel_shape[:2])
        product = tf.matmul(
            self.frequency_factors((height, half_width)), self.channel_factors, transpose_b=True
        )
        return tf.reshape(product / math.sqrt(self.rank), kernel_shape)

    def _check_channels(self, kernel_shape: Sequence[int]) -> None:
        channels = tuple(int(size) for size in kernel_shape[2:])
        if channels != self.channels:
            raise ValueError(
                f"{self.name} was built for {self.channels[0]} -> {self.channels[1]} "
                f"channels, asked for a kernel of shape {tuple(kernel_shape)}"
            )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "rank": self.rank,
                "hidden_units": list(self.hidden_units),
                "fourier_bands": self.fourier_bands,
                "hidden_initializer": self.hidden_initializer,
            }
        )
        return config
