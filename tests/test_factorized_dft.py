"""The factorized DFT plan against numpy's FFT, and the convolution built on it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.spectral import hermitian_project
from export.factorized_dft import FactorizedDFT
from export.onnx_spectral import factorized_spectral_conv2d

# (height, width, height_first, width_first): odd, even, non-square, prime, trivial splits
SPLITS = [(12, 10, 3, 5), (12, 10, 4, 2), (12, 10, 1, 10), (12, 10, 12, 1), (9, 15, 3, 5),
          (7, 8, 7, 4), (6, 9, 2, 9), (10, 6, 5, 6)]  # fmt: skip


def numpy_spectrum(plan: FactorizedDFT, x: np.ndarray) -> np.ndarray:
    """Apply the forward stages as plain matmuls: ``[W, H, R]`` real -> ``[F, 2, R]``."""
    rest = x.shape[-1]
    t = plan.forward_width_first @ x.reshape(plan.width_first, -1)
    t = plan.forward_width_second @ t.reshape(plan.kept_first, 2 * plan.width_second, -1)
    t = plan.forward_height_first @ t.reshape(plan.width_columns, 2 * plan.height_first, -1)
    t = plan.forward_height_second @ t.reshape(
        plan.width_columns, plan.height_first, 2 * plan.height_second, -1
    )
    return t.reshape(plan.frequencies, 2, rest)


@pytest.mark.parametrize("height,width,height_first,width_first", SPLITS)
def test_forward_stages_give_the_dft_in_the_stated_order(
    height, width, height_first, width_first, rng
):
    plan = FactorizedDFT(height, width, width_first, height_first)
    x = rng.standard_normal((width, height, 3))
    spectrum = numpy_spectrum(plan, x)
    rows, columns = plan.frequency_order()
    expected = np.fft.fft2(x, axes=(1, 0))[columns, rows]  # [F, 3]; axes: W, H
    assert np.allclose(spectrum[:, 0] + 1j * spectrum[:, 1], expected, atol=1e-9)
    # every half-spectrum column appears, itself or as its conjugate's mirror
    assert set(np.minimum(columns, width - columns).tolist()) == set(range(width // 2 + 1))
    assert plan.frequencies == height * plan.width_columns


@pytest.mark.parametrize("height,width,height_first,width_first", SPLITS)
def test_factorized_convolution_equals_numpy_fft_convolution_for_every_split(
    height, width, height_first, width_first, rng
):
    plan = FactorizedDFT(height, width, width_first, height_first)
    cin, cout, batch = 3, 2, 2
    kr, ki = (
        rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)).astype(np.float32) for _ in range(2)
    )
    kr, ki = (t.numpy() for t in hermitian_project(tf.constant(kr), tf.constant(ki), width))
    x = rng.standard_normal((batch, height, width, cin)).astype(np.float32)
    ordered = [tf.constant(part) for part in plan.kernel_order(kr, ki)]
    y = factorized_spectral_conv2d(tf.constant(x), *ordered, plan).numpy()
    spectrum = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
    expected = np.fft.irfft2(
        np.einsum("nhwi,hwio->nhwo", spectrum, kr + 1j * ki.astype(np.float64)),
        s=(height, width),
        axes=(1, 2),
    )
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_kernel_order_extends_the_half_spectrum_hermitian(rng):
    plan = FactorizedDFT(6, 9, 3, 2)
    kr, ki = (rng.standard_normal((6, 5, 2, 3)) for _ in range(2))
    ordered_real, ordered_imag = plan.kernel_order(kr, ki)
    rows, columns = plan.frequency_order()
    for index, (row, column) in enumerate(zip(rows, columns, strict=True)):
        if column <= 4:
            assert np.allclose(ordered_real[index], kr[row, column], atol=1e-6)
            assert np.allclose(ordered_imag[index], ki[row, column], atol=1e-6)
        else:  # conj(K[-h, W - k])
            assert np.allclose(ordered_real[index], kr[(-row) % 6, 9 - column], atol=1e-6)
            assert np.allclose(ordered_imag[index], -ki[(-row) % 6, 9 - column], atol=1e-6)
    assert (columns > 4).any()


def test_cheapest_split_at_the_papers_size_beats_the_dense_transform():
    plan = FactorizedDFT.for_size(150, 150, 32)
    assert 1 < plan.width_first < 150 and 1 < plan.height_first < 150
    # per complex point, the height transform costs N1 + N2 multiply-adds instead of N
    assert plan.height_first + plan.height_second <= 25
    # the inverse's first height stage reads both mixing products: the shorter stage goes there
    assert plan.height_second < plan.height_first
    # the redundant columns cost at most a few percent of the half spectrum
    assert 76 <= plan.width_columns <= 80


def test_bad_plans_and_kernels_get_clear_errors():
    with pytest.raises(ValueError, match="a 0x8 layer has no DFT plan"):
        FactorizedDFT.for_size(0, 8, 4)
    with pytest.raises(ValueError, match="width 10 is not split by a first stage of 3"):
        FactorizedDFT(8, 10, 3, 2)
    with pytest.raises(ValueError, match="height 8 is not split by a first stage of 0"):
        FactorizedDFT(8, 10, 2, 0)
    plan = FactorizedDFT(8, 10, 5, 2)
    with pytest.raises(ValueError, match=r"do not match a 8x10 layer \(expected \(8, 6\)"):
        plan.kernel_order(np.zeros((8, 5, 1, 1)), np.zeros((8, 5, 1, 1)))
    with pytest.raises(ValueError, match="a 8x10 plan for a 8x12 layer"):
        zeros = tf.zeros((1, 8, 12, 1))
        factorized_spectral_conv2d(zeros, tf.zeros((48, 1, 1)), tf.zeros((48, 1, 1)), plan)
