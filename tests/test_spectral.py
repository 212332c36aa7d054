"""The spectral convolution against slow, obvious references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf import spectral
from cfconv_tf.spectral import hermitian_project, sampled_spectral_conv2d, spectral_conv2d

SHAPES = [  # (batch, height, width, cin, cout): odd, even, non-square, cin != cout
    (2, 7, 7, 3, 5),
    (2, 8, 8, 4, 2),
    (1, 6, 9, 2, 3),
    (3, 9, 6, 1, 4),
    (1, 5, 2, 2, 2),
]


def circular_conv_reference(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Direct circular convolution: y[p,q,o] = sum_{a,b,i} x[p-a, q-b, i] k[a,b,i,o]."""
    batch, height, width, _ = x.shape
    y = np.zeros((batch, height, width, k.shape[-1]))
    for a in range(height):
        for b in range(width):
            shifted = np.roll(x, (a, b), axis=(1, 2)).astype(np.float64)
            y += np.einsum("bhwi,io->bhwo", shifted, k[a, b])
    return y


@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_conv_equals_direct_circular_convolution(shape, rng):
    batch, height, width, cin, cout = shape
    x = rng.standard_normal((batch, height, width, cin)).astype(np.float32)
    k = rng.standard_normal((height, width, cin, cout)).astype(np.float32)
    spectrum = np.fft.rfft2(k, axes=(0, 1))
    y = spectral_conv2d(
        tf.constant(x),
        tf.constant(spectrum.real, tf.float32),
        tf.constant(spectrum.imag, tf.float32),
    )
    expected = circular_conv_reference(x, k)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_projected_kernel_equals_numpy_irfft_of_any_spectrum(shape, rng):
    """For an arbitrary (non-Hermitian) K, conv with P(K) is numpy's irfft2(X * K)."""
    batch, height, width, cin, cout = shape
    x = rng.standard_normal((batch, height, width, cin)).astype(np.float32)
    kr, ki = (
        rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)).astype(np.float32) for _ in range(2)
    )
    pr, pi = hermitian_project(tf.constant(kr), tf.constant(ki), width)
    y = spectral_conv2d(tf.constant(x), pr, pi).numpy()
    spectrum_x = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
    mixed = np.einsum("bhwi,hwio->bhwo", spectrum_x, kr + 1j * ki.astype(np.float64))
    expected = np.fft.irfft2(mixed, s=(height, width), axes=(1, 2))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("height,width", [(7, 7), (8, 8), (6, 9), (9, 6), (4, 1)])
def test_projection_is_idempotent_and_keeps_real_kernels(height, width, rng):
    kr, ki = (
        tf.constant(rng.standard_normal((height, width // 2 + 1, 2, 3)), tf.float32)
        for _ in range(2)
    )
    once = hermitian_project(kr, ki, width)
    twice = hermitian_project(*once, width)
    for a, b in zip(once, twice, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    # Columns other than DC / Nyquist are untouched.
    interior = slice(1, (width + 1) // 2)
    np.testing.assert_array_equal(once[0].numpy()[:, interior], kr.numpy()[:, interior])
    # The spectrum of a real kernel is already Hermitian: projection changes nothing.
    spectrum = np.fft.rfft2(rng.standard_normal((height, width, 2, 3)), axes=(0, 1))
    real = hermitian_project(
        tf.constant(spectrum.real, tf.float32), tf.constant(spectrum.imag, tf.float32), width
    )
    np.testing.assert_allclose(real[0].numpy(), spectrum.real, atol=1e-5)
    np.testing.assert_allclose(real[1].numpy(), spectrum.imag, atol=1e-5)


def autodiff_spectral_conv_reference(x: tf.Tensor, kr: tf.Tensor, ki: tf.Tensor) -> tf.Tensor:
    """The obvious TF form, four real einsums between rfft2d and irfft2d, left to autodiff."""
    height, width = x.shape[1], x.shape[2]
    spectrum = tf.signal.rfft2d(tf.transpose(x, [0, 3, 1, 2]))
    xr, xi = tf.math.real(spectrum), tf.math.imag(spectrum)
    yr = tf.einsum("bihw,hwio->bohw", xr, kr) - tf.einsum("bihw,hwio->bohw", xi, ki)
    yi = tf.einsum("bihw,hwio->bohw", xr, ki) + tf.einsum("bihw,hwio->bohw", xi, kr)
    y = tf.signal.irfft2d(tf.complex(yr, yi), fft_length=[height, width])
    return tf.transpose(y, [0, 2, 3, 1])


@pytest.mark.parametrize("shape", SHAPES)
def test_written_out_gradient_equals_autodiff(shape, rng):
    """The custom gradient (input and both kernel parts) against autodiff of the
    einsum form, through the Hermitian projection, on a loss that weights every output."""
    batch, height, width, cin, cout = shape
    x = tf.constant(rng.standard_normal((batch, height, width, cin)), tf.float32)
    kr, ki = (
        tf.constant(rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)), tf.float32)
        for _ in range(2)
    )
    weights = tf.constant(rng.standard_normal((batch, height, width, cout)), tf.float32)
    results = []
    for conv in (spectral_conv2d, autodiff_spectral_conv_reference):
        with tf.GradientTape() as tape:
            tape.watch([x, kr, ki])
            y = conv(x, *hermitian_project(kr, ki, width))
            loss = tf.reduce_sum(weights * y + 0.5 * y**2)
        results.append([y, *tape.gradient(loss, [x, kr, ki])])
    for name, got, want in zip(("y", "dx", "dkr", "dki"), *results, strict=True):
        want = want.numpy()
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(
            got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name
        )


@pytest.mark.parametrize(
    "shape,fraction", [((2, 6, 8, 3, 2), 0.3), ((1, 7, 5, 2, 3), 0.6), ((3, 5, 6, 1, 4), 1.0)]
)
def test_sampled_gradient_equals_autodiff_through_scatter_and_projection(shape, fraction, rng):
    """Each written value's gradient, taken only at the sampled entries, against autodiff
    of scatter -> Hermitian projection (its slices) -> the einsum form."""
    from cfconv_tf.spectral import _project_columns

    batch, height, width, cin, cout = shape
    kernel_shape = (height, width // 2 + 1, cin, cout)
    total = int(np.prod(kernel_shape))
    positions = tf.constant(
        np.sort(rng.choice(total, int(total * fraction), replace=False)), tf.int64
    )
    edge_columns = (positions.numpy() // (cin * cout)) % kernel_shape[1]
    assert (edge_columns == 0).any()  # the projection's mirrored rows are exercised
    base = [tf.constant(rng.uniform(-1, 1, kernel_shape), tf.float32) for _ in range(2)]
    values = [tf.constant(rng.uniform(-1, 1, positions.shape), tf.float32) for _ in range(2)]
    x = tf.constant(rng.standard_normal((batch, height, width, cin)), tf.float32)
    weights = tf.constant(rng.standard_normal((batch, height, width, cout)), tf.float32)

    def scattered(part: int) -> tf.Tensor:
        flat = tf.tensor_scatter_nd_update(
            tf.reshape(base[part], [-1]), positions[:, None], values[part]
        )
        return tf.reshape(flat, kernel_shape)

    results = []
    for sampled in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([x, *values])
            if sampled:
                y = sampled_spectral_conv2d(x, scattered(0), scattered(1), positions, *values)
            else:
                kernel = _project_columns(scattered(0), scattered(1), width)
                y = autodiff_spectral_conv_reference(x, *kernel)
            loss = tf.reduce_sum(weights * y + 0.5 * y**2)
        results.append([y, *tape.gradient(loss, [x, *values])])
    for name, got, want in zip(("y", "dx", "d_real", "d_imag"), *results, strict=True):
        want = want.numpy()
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(
            got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name
        )


def test_sampled_gradient_works_with_an_unknown_batch_size(rng):
    """Keras traces training steps with the batch dimension unknown (a last partial batch)."""
    kernel = [tf.constant(rng.uniform(-1, 1, (6, 4, 2, 3)), tf.float32) for _ in range(2)]
    positions = tf.constant([0, 5, 40, 100], tf.int64)
    values = [tf.gather(tf.reshape(part, [-1]), positions) for part in kernel]

    @tf.function(
        input_signature=[tf.TensorSpec([None, 6, 6, 2], tf.float32)]
        + [tf.TensorSpec([4], tf.float32)] * 2
    )
    def value_gradients(x, values_real, values_imag):
        with tf.GradientTape() as tape:
            tape.watch([values_real, values_imag])
            y = sampled_spectral_conv2d(x, *kernel, positions, values_real, values_imag)
            loss = tf.reduce_sum(y**2)
        return tape.gradient(loss, [values_real, values_imag])

    x = tf.constant(rng.standard_normal((3, 6, 6, 2)), tf.float32)
    d_real, d_imag = value_gradients(x, *values)
    assert d_real.shape == (4,) and float(tf.reduce_max(tf.abs(d_real))) > 0
    assert float(tf.reduce_max(tf.abs(d_imag))) > 0


@pytest.mark.parametrize("height,width", [(7, 7), (8, 8), (6, 9), (9, 6), (5, 2)])
def test_projection_gradient_equals_autodiff_of_its_slices(height, width, rng):
    from cfconv_tf.spectral import _project_columns

    kr, ki, wr, wi = (
        tf.constant(rng.standard_normal((height, width // 2 + 1, 2, 3)), tf.float32)
        for _ in range(4)
    )
    grads = []
    for project in (hermitian_project, _project_columns):
        with tf.GradientTape() as tape:
            tape.watch([kr, ki])
            pr, pi = project(kr, ki, width)
            loss = tf.reduce_sum(wr * pr + wi * pi)
        grads.append(tape.gradient(loss, [kr, ki]))
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "batch,height,width,channels,chunk_bytes,sizes",
    [
        (32, 150, 150, 32, 3 * 2**20, [1] * 32),  # the paper's shape: one image per call
        (64, 28, 28, 32, 3 * 2**20, [22, 21, 21]),
        (3, 7, 6, 2, 2 * (2 * 7 * 4 * 8), [2, 1]),  # two images of 448 bytes
        (2, 8, 8, 3, 3 * 2**20, [2]),
        (None, 8, 8, 3, 1, [-1]),  # unknown batch: one call
    ],
)
def test_chunk_sizes_cover_the_batch_in_near_equal_cache_sized_chunks(
    batch, height, width, channels, chunk_bytes, sizes, monkeypatch
):
    monkeypatch.setattr(spectral, "CHUNK_BYTES", chunk_bytes)
    assert spectral._chunk_sizes(batch, height, width, channels) == sizes


@pytest.mark.parametrize("shape,images_per_chunk", [((3, 7, 6, 2, 3), 2), ((2, 8, 8, 3, 2), 1)])
def test_chunked_and_whole_batch_transforms_agree(shape, images_per_chunk, rng, monkeypatch):
    """A static batch is transformed in chunks, an unknown batch all at once: the output
    and every gradient are the same either way."""
    batch, height, width, cin, cout = shape
    half_width = width // 2 + 1
    # chunks of `images_per_chunk` images of the smaller channel count
    monkeypatch.setattr(
        spectral, "CHUNK_BYTES", images_per_chunk * min(cin, cout) * height * half_width * 8
    )
    x = tf.constant(rng.standard_normal((batch, height, width, cin)), tf.float32)
    kr, ki = (
        tf.constant(rng.uniform(-1, 1, (height, half_width, cin, cout)), tf.float32)
        for _ in range(2)
    )

    def output_and_gradients(x):
        with tf.GradientTape() as tape:
            tape.watch([x, kr, ki])
            y = spectral_conv2d(x, *hermitian_project(kr, ki, width))
            loss = tf.reduce_sum(y * tf.sin(y))
        return [y, *tape.gradient(loss, [x, kr, ki])]

    static = tf.function(output_and_gradients)
    unknown = tf.function(
        output_and_gradients,
        input_signature=[tf.TensorSpec([None, height, width, cin], tf.float32)],
    )
    forward_transforms = [
        op for op in static.get_concrete_function(x).graph.get_operations() if op.type == "RFFT2D"
    ]
    assert len(forward_transforms) > 2  # chunked
    assert max(op.inputs[0].shape[0] for op in forward_transforms) == images_per_chunk
    operations = unknown.get_concrete_function().graph.get_operations()
    assert sum(op.type == "RFFT2D" for op in operations) == 2  # whole batch
    for name, got, want in zip(("y", "dx", "dkr", "dki"), static(x), unknown(x), strict=True):
        want = want.numpy()
        assert np.abs(want).max() > 0, name
        np.testing.assert_allclose(
            got.numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name
        )
