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

    ``P`` is linear and self-adjoint, so its gradient is ``P`` applied to the incoming
    gradient; it is given as such (autodiff of the slices, gather and concat below
    materializes about ten full-size kernels and cost ~90 ms per 150x150 32->32 layer
    and step).

    Args:
        kr, ki: real and imaginary kernel parts, shape ``[H, W//2+1, ...]``.
        width: the spatial width ``W`` of the signal (needed for the parity of W).

    Returns:
        The projected ``(kr, ki)``, same shapes.
    """

    @tf.custom_gradient
    def project(kr: tf.Tensor, ki: tf.Tensor):
        def gradient(d_real: tf.Tensor, d_imag: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return _project_columns(d_real, d_imag, width)

        return _project_columns(kr, ki, width), gradient

    return project(tf.convert_to_tensor(kr), tf.convert_to_tensor(ki))


def _project_columns(kr: tf.Tensor, ki: tf.Tensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``P`` of :func:`hermitian_project`, written with slices, a gather and a concat."""
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


def _to_frequency_major(spectrum: tf.Tensor) -> tf.Tensor:
    """Complex ``[B, C, H, Wf]`` -> real ``[H*Wf, B, 2C]`` (C real parts, then C imaginary).

    A bitcast views complex64 as float32 pairs for free, so the layout change is one
    transpose (splitting real and imaginary parts first would copy the tensor three
    more times).
    """
    batch, channels, height, half_width = spectrum.shape
    pairs = tf.bitcast(spectrum, tf.float32)  # [B, C, H, Wf, 2]
    return tf.reshape(tf.transpose(pairs, [2, 3, 0, 4, 1]), [height * half_width, -1, 2 * channels])


def _from_frequency_major(values: tf.Tensor, height: int, half_width: int) -> tf.Tensor:
    """Real ``[H*Wf, B, 2C]`` (C real parts, then C imaginary) -> complex ``[B, C, H, Wf]``."""
    channels = values.shape[-1] // 2
    pairs = tf.reshape(values, [height, half_width, -1, 2, channels])
    return tf.bitcast(tf.transpose(pairs, [2, 4, 0, 1, 3]), tf.complex64)


def _block_kernel(kr: tf.Tensor, ki: tf.Tensor) -> tf.Tensor:
    """``[H, Wf, Cin, Cout]`` parts -> real block form ``[H*Wf, 2Cin, 2Cout]``.

    ``[[Kr, Ki], [-Ki, Kr]]``, so that ``[Xr, Xi] @ block = [Re(XK), Im(XK)]``: the
    complex channel mixing at every frequency becomes one real batched matmul.
    """
    height, half_width, cin, cout = kr.shape
    top = tf.concat([kr, ki], axis=3)
    bottom = tf.concat([-ki, kr], axis=3)
    return tf.reshape(tf.concat([top, bottom], axis=2), [height * half_width, 2 * cin, 2 * cout])


def _irfft_weights(height: int, width: int) -> tf.Tensor:
    """``c_w / (H W)`` per half-spectrum column, ``[Wf]``: the adjoint of irfft2.

    The inverse real transform counts interior columns twice (once for their mirror)
    and the DC (and, for even W, Nyquist) column once.
    """
    half_width = width // 2 + 1
    weights = [1.0] + [2.0] * (half_width - 1)
    if width % 2 == 0:
        weights[-1] = 1.0
    return tf.constant(weights, tf.float32) / float(height * width)


@tf.custom_gradient
def spectral_conv2d(x: tf.Tensor, kr: tf.Tensor, ki: tf.Tensor):
    """Circular 2D convolution of ``x`` with a kernel given by its half spectrum.

    ``y[b, :, :, o] = irfft2( sum_i rfft2(x[b, :, :, i]) * K[:, :, i, o] )``. The channel
    mixing runs as one real batched matmul per call over all ``H * Wf`` frequencies
    (block form of the complex product), not as four complex einsums.

    The gradient is written out rather than left to autodiff: with a Hermitian-consistent
    kernel the layer is a real circular convolution, so the input gradient is the
    circular correlation ``irfft2(sum_o conj(K) * rfft2(dy))``, one transform pair like the
    forward pass (TF's generic rfft2d gradient adds an irfft2d and two dense DFT matmuls).
    The kernel gradient is ``sum_b conj(X) * G`` with ``G`` the adjoint of irfft2 applied to
    ``dy``, exactly what autodiff gives (tests compare both).

    Args:
        x: float32 input, shape ``[B, H, W, Cin]``.
        kr, ki: real and imaginary part of ``K``, shape ``[H, W//2+1, Cin, Cout]``, with
            Hermitian DC (and Nyquist) columns: pass them through
            :func:`hermitian_project` first (the input gradient assumes it).

    Returns:
        float32 output, shape ``[B, H, W, Cout]``.
    """
    height, width = x.shape[1], x.shape[2]
    half_width = width // 2 + 1
    block = _block_kernel(kr, ki)
    spectrum = tf.signal.rfft2d(tf.transpose(x, [0, 3, 1, 2]))  # [B, Cin, H, Wf]
    x_major = _to_frequency_major(spectrum)
    y_spectrum = _from_frequency_major(tf.matmul(x_major, block), height, half_width)
    y = tf.signal.irfft2d(y_spectrum, fft_length=[height, width])
    y = tf.transpose(y, [0, 2, 3, 1])

    def gradient(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dy_spectrum = tf.signal.rfft2d(tf.transpose(dy, [0, 3, 1, 2]))  # [B, Cout, H, Wf]
        dy_major = _to_frequency_major(dy_spectrum)
        # Input: correlation with the kernel, [dYr, dYi] @ block^T = [Re, Im] of conj(K) dY.
        dx_spectrum = _from_frequency_major(
            tf.matmul(dy_major, block, transpose_b=True), height, half_width
        )
        dx = tf.transpose(tf.signal.irfft2d(dx_spectrum, fft_length=[height, width]), [0, 2, 3, 1])
        # Kernel: [Xr, Xi]^T @ [Gr, Gi] per frequency, G = dY weighted as irfft2's adjoint.
        column_weights = tf.tile(_irfft_weights(height, width), [height])[:, None, None]
        d_block = tf.matmul(x_major, dy_major * column_weights, transpose_a=True)
        cin = kr.shape[2]
        shape = kr.shape
        dkr = d_block[:, :cin, : shape[3]] + d_block[:, cin:, shape[3] :]
        dki = d_block[:, :cin, shape[3] :] - d_block[:, cin:, : shape[3]]
        return dx, tf.reshape(dkr, shape), tf.reshape(dki, shape)

    return y, gradient
