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


def _frequency_major_pairs(spectrum: tf.Tensor) -> tf.Tensor:
    """Complex ``[n, C, H, Wf]`` -> real ``[H*Wf, 2, n, C]``: real parts, then imaginary.

    A bitcast views complex64 as float32 pairs for free, so the layout change is one
    transpose (splitting real and imaginary parts first would copy the tensor three
    more times).
    """
    _, channels, height, half_width = spectrum.shape
    pairs = tf.bitcast(spectrum, tf.float32)  # [n, C, H, Wf, 2]
    return tf.reshape(tf.transpose(pairs, [2, 3, 4, 0, 1]), [height * half_width, 2, -1, channels])


def _from_frequency_major(real: tf.Tensor, imag: tf.Tensor, height: int) -> tf.Tensor:
    """Real and imaginary parts ``[H*Wf, n, C]`` -> complex ``[n, C, H, Wf]``."""
    frequencies, channels = real.shape[0], real.shape[-1]
    pairs = tf.reshape(tf.stack([real, imag]), [2, height, frequencies // height, -1, channels])
    return tf.bitcast(tf.transpose(pairs, [3, 4, 1, 2, 0]), tf.complex64)


# Transforms run on chunks of images whose half spectrum is about this size: small
# enough to stay in cache between the two axes' passes of TF's FFT kernels, large enough
# that op overheads stay small (one image at 150x150x32 is 2.9 MB).
CHUNK_BYTES = 3 * 2**20


def _chunk_sizes(batch: int | None, height: int, width: int, channels: int) -> list[int]:
    """How many images each transform call takes: near-equal chunks of at most
    :data:`CHUNK_BYTES` of half spectrum (at least one image each), ``[batch]`` (one
    call) when the batch fits in one chunk, or ``[-1]`` when the batch is unknown."""
    if batch is None:
        return [-1]
    per_image = channels * height * (width // 2 + 1) * 8
    per_chunk = max(1, CHUNK_BYTES // per_image)
    chunks = -(-batch // per_chunk)
    return [batch // chunks + (index < batch % chunks) for index in range(chunks)]


def _spectrum_major(x: tf.Tensor) -> tf.Tensor:
    """``rfft2`` of ``x [B, H, W, C]`` in frequency-major form ``[H*Wf, 2B, C]``: the B real
    rows, then the B imaginary rows, per frequency (what :func:`_complex_mix` takes).

    With a static batch the transforms run on chunks of :func:`_chunk_sizes` images: TF's
    FFT kernels are faster on data that stays in cache between the two axes' passes
    than on a whole batch (measured at 150x150x32, batch 32: 39 against 49 ms for this
    function, one image per chunk; ``cfconv bench train``'s floor rows measure the
    same effect on a whole step's transforms).
    """
    _, height, width, channels = x.shape
    parts = [
        _frequency_major_pairs(tf.signal.rfft2d(tf.transpose(chunk, [0, 3, 1, 2])))
        for chunk in tf.split(x, _chunk_sizes(x.shape[0], height, width, channels))
    ]
    return tf.reshape(tf.concat(parts, axis=2), [height * (width // 2 + 1), -1, channels])


def _spatial_from_major(real: tf.Tensor, imag: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """``irfft2`` of a frequency-major spectrum (parts ``[H*Wf, B, C]``): ``[B, H, W, C]``.

    In chunks of images like :func:`_spectrum_major` (measured: 59 against 86 ms at
    150x150x32, batch 32, one image per chunk).
    """
    sizes = _chunk_sizes(real.shape[1], height, width, real.shape[2])
    outputs, start = [], 0
    for size in sizes:
        rows = slice(None) if size < 0 else slice(start, start + size)
        spectrum = _from_frequency_major(real[:, rows], imag[:, rows], height)
        output = tf.signal.irfft2d(spectrum, fft_length=[height, width])
        outputs.append(tf.transpose(output, [0, 2, 3, 1]))  # while it is in cache
        start += size
    return tf.concat(outputs, axis=0)


def _complex_mix(
    stacked: tf.Tensor, kr: tf.Tensor, ki: tf.Tensor, adjoint: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per frequency, ``X K`` (or ``Y conj(K)^T`` with ``adjoint``) as two real batched matmuls.

    Args:
        stacked: ``[F, 2B, Cin]`` real rows then imaginary rows (``[F, 2B, Cout]`` for the
            adjoint), as :func:`_spectrum_major` lays them out.
        kr, ki: ``[F, Cin, Cout]``, used in place (no block matrix is built, so nothing
            kernel-sized is allocated per call).

    Returns:
        ``(real, imag)``, each ``[F, B, Cout]`` (``[F, B, Cin]`` for the adjoint).
    """
    by_real = tf.matmul(stacked, kr, transpose_b=adjoint)  # [Ur Kr; Ui Kr]
    by_imag = tf.matmul(stacked, ki, transpose_b=adjoint)  # [Ur Ki; Ui Ki]
    real_kr, imag_kr = tf.split(by_real, 2, axis=1)
    real_ki, imag_ki = tf.split(by_imag, 2, axis=1)
    if adjoint:  # conj(K): (Ur + j Ui)(Kr - j Ki)
        return real_kr + imag_ki, imag_kr - real_ki
    return real_kr - imag_ki, real_ki + imag_kr


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


def _frequency_major_kernel(kr: tf.Tensor, ki: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``[H, Wf, Cin, Cout]`` kernel parts as ``[F, Cin, Cout]`` (``F = H * Wf``)."""
    shape = [kr.shape[0] * kr.shape[1], *kr.shape[2:]]
    return tf.reshape(kr, shape), tf.reshape(ki, shape)


def _convolve(
    x: tf.Tensor, kernel_real: tf.Tensor, kernel_imag: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The forward pass: ``(y [B, H, W, Cout], x_major [F, 2B, Cin])``.

    ``kernel_real``/``kernel_imag`` are ``[F, Cin, Cout]`` (``F = H * Wf``); ``x_major`` is
    what the kernel gradient needs, kept for the backward pass.
    """
    height, width = x.shape[1], x.shape[2]
    x_major = _spectrum_major(x)  # [F, 2B, Cin]
    y = _spatial_from_major(*_complex_mix(x_major, kernel_real, kernel_imag), height, width)
    return y, x_major


def _correlate(
    dy: tf.Tensor, kernel_real: tf.Tensor, kernel_imag: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The input gradient and the weighted output spectrum ``G`` for the kernel gradient.

    The input gradient is the circular correlation ``irfft2(sum_o conj(K) rfft2(dy))``.
    ``G [F, 2B, Cout]`` is ``dy``'s spectrum weighted as irfft2's adjoint (real rows,
    then imaginary rows), so that ``dK = sum_b conj(X) G`` per frequency.
    """
    height, width = dy.shape[1], dy.shape[2]
    dy_major = _spectrum_major(dy)
    dx = _spatial_from_major(
        *_complex_mix(dy_major, kernel_real, kernel_imag, adjoint=True), height, width
    )
    column_weights = tf.tile(_irfft_weights(height, width), [height])[:, None, None]
    return dx, dy_major * column_weights


def _kernel_gradient(x_major: tf.Tensor, weighted: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``sum_b conj(X) G`` at every frequency: ``(dKr, dKi)``, each ``[F, Cin, Cout]``.

    ``dKr = Xr^T Gr + Xi^T Gi``, ``dKi = Xr^T Gi - Xi^T Gr`` (contracting the 2B rows).
    """
    g_real, g_imag = tf.split(weighted, 2, axis=1)
    dkr = tf.matmul(x_major, weighted, transpose_a=True)
    dki = tf.matmul(x_major, tf.concat([g_imag, -g_real], axis=1), transpose_a=True)
    return dkr, dki


def _kernel_gradient_at(
    x_major: tf.Tensor, weighted: tf.Tensor, positions: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`_kernel_gradient` only at flat ``positions`` of ``[F, Cin, Cout]``: two ``[S]``.

    Each entry is a dot product over the 2B rows of one ``X`` column and one ``G`` column,
    gathered element by element (no transpose of the full tensors).
    """
    rows = tf.shape(x_major, out_type=positions.dtype)[1]  # 2B: the batch may be unknown
    cin, cout = x_major.shape[2], weighted.shape[2]
    frequency = positions // (cin * cout)
    row = tf.range(rows)[None, :]
    x_index = (frequency * rows)[:, None] * cin + row * cin + ((positions // cout) % cin)[:, None]
    g_index = (frequency * rows)[:, None] * cout + row * cout + (positions % cout)[:, None]
    x_columns = tf.gather(tf.reshape(x_major, [-1]), x_index)  # [S, 2B]: Xr then Xi
    g_columns = tf.gather(tf.reshape(weighted, [-1]), g_index)  # [S, 2B]: Gr then Gi
    g_real, g_imag = tf.split(g_columns, 2, axis=1)
    dkr = tf.reduce_sum(x_columns * g_columns, axis=1)
    dki = tf.reduce_sum(x_columns * tf.concat([g_imag, -g_real], axis=1), axis=1)
    return dkr, dki


def _project_gradient_at(
    x_major: tf.Tensor,
    weighted: tf.Tensor,
    positions: tf.Tensor,
    kernel_shape: tuple[int, int, int, int],
    width: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``P(dK)`` at ``positions``: the gradient of the entries written there.

    Off the DC (and Nyquist) columns ``P`` is the identity; on them,
    ``P(dK)[h] = (dK[h] + conj(dK[-h])) / 2``, so the mirrored row's gradient is computed
    too (for those entries only).
    """
    height, half_width, cin, cout = kernel_shape
    per_row = half_width * cin * cout
    column = (positions // (cin * cout)) % half_width
    on_edge = tf.equal(column, 0)
    if width % 2 == 0:
        on_edge = on_edge | tf.equal(column, half_width - 1)
    edge = tf.where(on_edge)  # [E, 1] indices into positions
    edge_positions = tf.gather_nd(positions, edge)
    row = edge_positions // per_row
    mirrored = edge_positions + (((height - row) % height) - row) * per_row
    both = tf.concat([positions, mirrored], axis=0)
    dkr, dki = _kernel_gradient_at(x_major, weighted, both)
    count = tf.shape(positions)[0]
    edge_real = 0.5 * (tf.gather_nd(dkr, edge) + dkr[count:])
    edge_imag = 0.5 * (tf.gather_nd(dki, edge) - dki[count:])
    return (
        tf.tensor_scatter_nd_update(dkr[:count], edge, edge_real),
        tf.tensor_scatter_nd_update(dki[:count], edge, edge_imag),
    )


@tf.custom_gradient
def spectral_conv2d(x: tf.Tensor, kr: tf.Tensor, ki: tf.Tensor):
    """Circular 2D convolution of ``x`` with a kernel given by its half spectrum.

    ``y[b, :, :, o] = irfft2( sum_i rfft2(x[b, :, :, i]) * K[:, :, i, o] )``. The channel
    mixing runs as two real batched matmuls over all ``H * Wf`` frequencies, with real
    and imaginary rows stacked along the batch (see :func:`_complex_mix`), not as four
    complex einsums.

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
    kernel_real, kernel_imag = _frequency_major_kernel(kr, ki)
    y, x_major = _convolve(x, kernel_real, kernel_imag)

    def gradient(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dx, weighted = _correlate(dy, kernel_real, kernel_imag)
        dkr, dki = _kernel_gradient(x_major, weighted)
        return dx, tf.reshape(dkr, kr.shape), tf.reshape(dki, kr.shape)

    return y, gradient


def sampled_spectral_conv2d(
    x: tf.Tensor,
    kr: tf.Tensor,
    ki: tf.Tensor,
    positions: tf.Tensor,
    values_real: tf.Tensor,
    values_imag: tf.Tensor,
) -> tf.Tensor:
    """``spectral_conv2d(x, *hermitian_project(kr, ki))`` with the kernel gradient taken only
    at the sampled entries, and given to the values written there.

    A sparse update writes ``values`` into the kernel at ``positions`` and trains only
    them; autodiff would form the full ``[H, Wf, Cin, Cout]`` kernel gradient (two batched
    matmuls), project it, then gather ``S`` entries. Here each sampled entry's gradient is
    one dot product over the batch (plus its mirrored row on the DC/Nyquist columns, for
    the projection), equal to what autodiff gives (tests compare both).

    Args:
        x: ``[B, H, W, Cin]`` float32.
        kr, ki: the kernel ``[H, W//2+1, Cin, Cout]`` already holding ``values`` at
            ``positions`` (no gradient flows into them).
        positions: int64 ``[S]`` flat indices into the kernel.
        values_real, values_imag: ``[S]``, the entries written at ``positions``; they
            receive the gradient.

    Returns:
        ``[B, H, W, Cout]`` float32.
    """
    width = x.shape[2]
    kernel_shape = tuple(kr.shape)
    kernel_real, kernel_imag = _frequency_major_kernel(
        *_project_columns(tf.stop_gradient(kr), tf.stop_gradient(ki), width)
    )

    @tf.custom_gradient
    def convolve(x: tf.Tensor, values_real: tf.Tensor, values_imag: tf.Tensor):
        y, x_major = _convolve(x, kernel_real, kernel_imag)

        def gradient(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dx, weighted = _correlate(dy, kernel_real, kernel_imag)
            d_real, d_imag = _project_gradient_at(x_major, weighted, positions, kernel_shape, width)
            return dx, d_real, d_imag

        return y, gradient

    return convolve(x, values_real, values_imag)
