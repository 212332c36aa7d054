"""FactorizedGenerator: values against a numpy reference, re-sampling, bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.generator import FactorizedGenerator, fourier_features


def built_generator(kernel_shape, rank=3, bands=2) -> FactorizedGenerator:
    generator = FactorizedGenerator(rank, hidden_units=(8, 6), fourier_bands=bands)
    generator.build(kernel_shape)
    return generator


def numpy_frequency_factors(generator: FactorizedGenerator, grid) -> np.ndarray:
    """The frequency MLP evaluated by hand in numpy at every ``(h, w)`` of ``grid``."""
    height, half_width = grid
    h, w = np.meshgrid(np.arange(height), np.arange(half_width), indexing="ij")
    coordinates = np.stack(
        [h.ravel() / max(height - 1, 1), w.ravel() / max(half_width - 1, 1)], axis=1
    )
    angles = coordinates[:, :, None] * np.pi * 2.0 ** np.arange(generator.fourier_bands)
    angles = angles.reshape(len(coordinates), -1)
    hidden = np.concatenate([coordinates, np.sin(angles), np.cos(angles)], axis=1)
    for index, layer in enumerate(generator.dense_layers):
        hidden = hidden @ layer.kernel.numpy() + layer.bias.numpy()
        if index < len(generator.dense_layers) - 1:
            hidden = np.maximum(hidden, 0.0)
    return hidden


@pytest.mark.parametrize("kernel_shape", [(9, 5, 3, 4), (6, 4, 2, 2), (7, 8, 1, 5)])
def test_values_and_kernel_match_a_numpy_reference(kernel_shape, rng):
    """value(h, w, i, o) = <A(h, w), B[i, o]> / sqrt(rank), on odd, even, non-square grids."""
    generator = built_generator(kernel_shape)
    frequency = numpy_frequency_factors(generator, kernel_shape[:2])  # [H * Wf, rank]
    channel = generator.channel_factors.numpy()  # [Cin * Cout, rank]
    expected = (frequency @ channel.T / np.sqrt(3)).reshape(kernel_shape)
    np.testing.assert_allclose(
        generator.kernel(kernel_shape).numpy(), expected, rtol=1e-5, atol=1e-6
    )
    positions = tf.constant(rng.integers(0, expected.size, 50), tf.int64)
    for values in (generator.values(positions, kernel_shape), generator(positions)):
        np.testing.assert_allclose(
            values.numpy(), expected.reshape(-1)[positions.numpy()], rtol=1e-5, atol=1e-6
        )


def test_kernel_on_another_grid_samples_the_same_continuous_function():
    """Normalized frequency coordinates: grid points at the same (u, v) get the same value."""
    generator = built_generator((5, 3, 2, 3))
    coarse = generator.kernel((5, 3, 2, 3)).numpy()
    fine = generator.kernel((9, 5, 2, 3)).numpy()  # every second point is a coarse one
    np.testing.assert_allclose(fine[::2, ::2], coarse, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fine[1::2, 1::2], coarse[:-1, :-1], atol=1e-3)


def test_fourier_features_are_the_raw_coordinates_then_sines_then_cosines():
    coordinates = tf.constant([[0.25, 0.5]])
    features = fourier_features(coordinates, 2).numpy()[0]
    angles = np.pi * np.array([0.25, 0.5, 0.5, 1.0])  # coordinate-major: u1 k0, u1 k1, ...
    np.testing.assert_allclose(
        features, np.concatenate([[0.25, 0.5], np.sin(angles), np.cos(angles)]), atol=1e-6
    )
    np.testing.assert_array_equal(fourier_features(coordinates, 0).numpy(), coordinates.numpy())


def test_config_round_trip():
    generator = built_generator((4, 3, 2, 2), rank=5, bands=1)
    clone = FactorizedGenerator.from_config(generator.get_config())
    clone.build((4, 3, 2, 2))
    clone.set_weights(generator.get_weights())
    assert clone.get_config() == generator.get_config()
    np.testing.assert_array_equal(
        clone.kernel((4, 3, 2, 2)).numpy(), generator.kernel((4, 3, 2, 2)).numpy()
    )


def test_factors_start_at_unit_scale():
    """Frequency and channel factors ~N(0, 1), so the values are ~N(0, 1) before scaling."""
    keras.utils.set_random_seed(0)
    generator = FactorizedGenerator(16, hidden_units=(64, 64), fourier_bands=5)
    generator.build((28, 15, 32, 32))
    values = generator.kernel((28, 15, 32, 32)).numpy()
    assert 0.3 < values.std() < 3.0


@pytest.mark.parametrize("rank", [0, -2, 1.5, True])
def test_bad_rank_is_rejected(rank):
    with pytest.raises(ValueError, match="generator_rank must be a positive integer"):
        FactorizedGenerator(rank)


def test_other_channel_counts_are_rejected():
    generator = built_generator((4, 3, 2, 2))
    with pytest.raises(ValueError, match="built for 2 -> 2 channels"):
        generator.kernel((4, 3, 3, 2))
    with pytest.raises(ValueError, match="built for 2 -> 2 channels"):
        generator.values(tf.constant([0], tf.int64), (4, 3, 2, 5))


def test_bad_hidden_units_are_rejected():
    with pytest.raises(ValueError, match="hidden_units"):
        FactorizedGenerator(4, hidden_units=())
