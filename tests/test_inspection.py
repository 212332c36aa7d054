"""cfconv inspect: spatial kernels and effective sizes against direct references."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.cli import main
from cfconv_tf.kernel_analysis import effective_kernel_sizes, spatial_kernels
from cfconv_tf.spectral import hermitian_project, spectral_conv2d


def circular_convolution(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct ``y[b, p, q, o] = sum_{i, m, n} x[b, p - m, q - n, i] k[m, n, i, o]``."""
    height, width = kernel.shape[:2]
    y = np.zeros(x.shape[:3] + kernel.shape[3:])
    for m in range(height):
        for n in range(width):
            shifted = np.roll(x, shift=(m, n), axis=(1, 2))
            y += np.einsum("bpqi,io->bpqo", shifted, kernel[m, n])
    return y


@pytest.mark.parametrize("size", [(7, 8), (9, 9), (6, 11)])
def test_spatial_kernel_is_what_the_layer_convolves_with(size, rng):
    height, width = size
    shape = (height, width // 2 + 1, 2, 3)
    kr, ki = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    kr, ki = (t.numpy() for t in hermitian_project(tf.constant(kr), tf.constant(ki), width))
    x = rng.standard_normal((2, height, width, 2)).astype(np.float32)
    spatial = spatial_kernels(kr, ki, width)
    assert spatial.shape == (height, width, 2, 3)
    expected = circular_convolution(x.astype(np.float64), spatial)
    actual = spectral_conv2d(tf.constant(x), tf.constant(kr), tf.constant(ki)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def brute_force_size(kernel: np.ndarray, energy: float) -> int:
    height, width = kernel.shape
    total = np.square(kernel).sum()
    for radius in range(max(height, width)):
        rows = np.unique(np.arange(-radius, radius + 1) % height)
        cols = np.unique(np.arange(-radius, radius + 1) % width)
        if np.square(kernel[np.ix_(rows, cols)]).sum() >= energy * total * (1 - 1e-12):
            return 2 * radius + 1
    raise AssertionError("the whole grid holds all the energy")


@pytest.mark.parametrize("size", [(7, 8), (10, 5), (9, 9)])
@pytest.mark.parametrize("energy", [0.5, 0.9, 1.0])
def test_effective_size_matches_a_brute_force_window_search(size, energy, rng):
    # Kernels of decaying magnitude around random centres, so sizes vary.
    spatial = rng.standard_normal(size + (3, 4)) * rng.uniform(0.05, 1, size + (1, 1)) ** 4
    sizes = effective_kernel_sizes(spatial, energy)
    assert sizes.shape == (3, 4)
    for i in range(3):
        for o in range(4):
            assert sizes[i, o] == brute_force_size(spatial[:, :, i, o], energy)


def test_effective_size_of_known_kernels():
    kernels = np.zeros((9, 8, 1, 4))
    kernels[0, 0, 0, 0] = 1.0  # a delta at the origin
    for m in (-1, 0, 1):
        for n in (-1, 0, 1):
            kernels[m, n, 0, 1] = 1.0  # a 3x3 box around the origin, wrapping
    kernels[2, -1, 0, 2] = 1.0  # a delta two rows down, one column left
    sizes = effective_kernel_sizes(kernels, 0.9)
    assert sizes.tolist() == [[1, 3, 5, 1]]  # the all-zero kernel counts as size 1
    with pytest.raises(ValueError, match="energy share"):
        effective_kernel_sizes(kernels, 0.0)


def test_cli_inspect_writes_pictures_and_sizes_for_trained_and_frozen(trained_runs, tmp_path):
    out = tmp_path / "inspect"
    assert main(["inspect", str(trained_runs["cf"]), "--out", str(out), "--pairs", "3"]) == 0
    report = json.loads((out / "kernels.json").read_text())
    assert list(report) == ["cfconv_0", "cfconv_1"]
    for name, layer in report.items():
        assert (out / f"{name}.png").stat().st_size > 20_000
        size = layer["effective_size"]
        assert 1 <= size["min"] <= size["median"] <= size["max"] <= 29
        assert sum(size["histogram"].values()) == np.prod(layer["spatial_shape"][2:])
    assert (out / "effective_kernel_size.png").stat().st_size > 10_000

    model = keras.saving.load_model(trained_runs["cf"] / "model.keras")
    for name, layer in report.items():
        cf = model.get_layer(name)
        kernel = [t.numpy() for t in cf.inference_kernel()]
        assert layer["kernel_rms"] == pytest.approx(
            np.sqrt(np.mean(kernel[0] ** 2 + kernel[1] ** 2)), rel=1e-5
        )
        assert layer["he_rms"] == pytest.approx(np.sqrt(2 / cf.kernel_shape[2]))
        assert layer["generator_scale"] == pytest.approx(float(cf.generator_scale.numpy()))

    frozen = tmp_path / "frozen.keras"
    assert main(["freeze", str(trained_runs["cf"]), "--out", str(frozen)]) == 0
    assert main(["inspect", str(frozen), "--out", str(tmp_path / "frozen")]) == 0
    # A frozen layer has the same kernel, and no generators to report a scale of.
    for layer in report.values():
        del layer["generator_scale"]
    assert json.loads((tmp_path / "frozen" / "kernels.json").read_text()) == report


def test_cli_inspect_rejects_a_bad_energy_share(trained_runs, tmp_path, capsys):
    argv = ["inspect", str(trained_runs["cf"]), "--out", str(tmp_path), "--energy", "1.5"]
    assert main(argv) == 2
    assert "energy share must lie in (0, 1]" in capsys.readouterr().err


def test_cli_inspect_refuses_models_without_spectral_layers(trained_runs, tmp_path, capsys):
    assert main(["inspect", str(trained_runs["spatial"]), "--out", str(tmp_path)]) == 2
    assert "has no CF-Conv layers" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "no trained model" in capsys.readouterr().err
