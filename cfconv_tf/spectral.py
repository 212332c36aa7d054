"""Spectral convolution: rfft2 -> complex multiply-accumulate over Cin -> irfft2.

The spectral kernel is held as two real float32 tensors (real and imaginary part)
because complex variables and complex einsum gradients are unreliable in TF/Keras
(keras#20581, tensorflow#37307).
"""

from __future__ import annotations

import tensorflow as tf


def hermitian_project(kr: tf.Tensor, ki: tf.Tensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Project the DC (and Nyquist) columns of a half-spectrum kernel onto Hermitian form.

    For a real input, the product ``X * K`` on those columns equals ``X * P(K)`` after
    the inverse real FFT, where ``P(K)[h] = (K[h] + conj(K[-h])) / 2``. Applying ``P``
    explicitly makes the layer one well-defined function that every FFT
    implementation (TF, numpy, the ONNX lowerings) computes identically.

    Args:
        kr, ki: real and imaginary kernel parts, shape ``[H, W//2+1, ...]``.
        width: the spatial width ``W`` of the signal (needed for the parity of W).

    Returns:
        The projected ``(kr, ki)``, same shapes.
    """
    height, half_width = kr.shape[0], kr.shape[1]
    mirror = [(-h) % height for h in range(height)]

    def project(column_r: tf.Tensor, column_i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return (
            0.5 * (column_r + tf.gather(column_r, mirror, axis=0)),
            0.5 * (column_i - tf.gather(column_i, mirror, axis=0)),
        )

    dc_r, dc_i = project(kr[:, :1], ki[:, :1])
    if width % 2 == 1:
        return tf.concat([dc_r, kr[:, 1:]], axis=1), tf.concat([dc_i, ki[:, 1:]], axis=1)
    last = half_width - 1
    nyquist_r, nyquist_i = project(kr[:, last:], ki[:, last:])
    return (
        tf.concat([dc_r, kr[:, 1:last], nyquist_r], axis=1),
        tf.concat([dc_i, ki[:, 1:last], nyquist_i], axis=1),
    )


def spectral_conv2d(x: tf.Tensor, kr: tf.Tensor, ki: tf.Tensor) -> tf.Tensor:
    """Circular 2D convolution of ``x`` with a kernel given by its half spectrum.

    ``y[b, :, :, o] = irfft2( sum_i rfft2(x[b, :, :, i]) * K[:, :, i, o] )``.

    Args:
        x: float32 input, shape ``[B, H, W, Cin]``.
        kr, ki: real and imaginary part of ``K``, shape ``[H, W//2+1, Cin, Cout]``.
            They are used as given; call :func:`hermitian_project` first for the
            layer's canonical function.

    Returns:
        float32 output, shape ``[B, H, W, Cout]``.
    """
    height, width = x.shape[1], x.shape[2]
    spectrum = tf.signal.rfft2d(tf.transpose(x, [0, 3, 1, 2]))  # [B, Cin, H, Wf]
    xr, xi = tf.math.real(spectrum), tf.math.imag(spectrum)
    yr = tf.einsum("bihw,hwio->bohw", xr, kr) - tf.einsum("bihw,hwio->bohw", xi, ki)
    yi = tf.einsum("bihw,hwio->bohw", xr, ki) + tf.einsum("bihw,hwio->bohw", xi, kr)
    y = tf.signal.irfft2d(tf.complex(yr, yi), fft_length=[height, width])
    return tf.transpose(y, [0, 2, 3, 1])
