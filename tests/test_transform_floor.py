"""The transform floor: the FFTs of a CF-Conv training step, against a numpy replay."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.bench.transform_floor import (
    floor_kernels,
    spectral_schedule,
    transform_counts,
    transform_schedule,
)


def schedule_reference(images: np.ndarray, layers: int, filters: int, chunk: int) -> float:
    """The schedule's checksum, slowly: numpy transforms, float64, image by image."""
    height, width = images.shape[2:]
    activation = images.astype(np.float64)
    masks = []
    for _ in range(layers):
        spectrum = np.fft.rfft2(activation, axes=(2, 3))
        spectrum = spectrum[:, np.arange(filters) % spectrum.shape[1]]
        output = np.fft.irfft2(spectrum, s=(height, width), axes=(2, 3))
        masks.append(output > 0)
        activation = np.maximum(output, 0)
    gradient, checksum = activation, 0.0
    for layer in reversed(range(layers)):
        gradient = np.where(masks[layer], gradient, 0.0)
        spectrum = np.fft.rfft2(gradient, axes=(2, 3))
        checksum += spectrum[::chunk, 0, 0, 0].real.sum()  # each chunk's first image
        gradient = np.fft.irfft2(spectrum, s=(height, width), axes=(2, 3))
    return checksum


@pytest.mark.parametrize("height,width,chunk", [(9, 7, 1), (8, 10, 2), (6, 6, 4)])
def test_schedule_equals_numpy_replay_for_every_chunk_size(height, width, chunk, rng):
    images = rng.standard_normal((4, 3, height, width)).astype(np.float32)
    got = float(transform_schedule(tf.constant(images), layers=3, filters=5, chunk=chunk))
    want = schedule_reference(images, layers=3, filters=5, chunk=chunk)
    assert abs(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 2])
def test_schedule_runs_a_cf_steps_transforms_on_its_shapes(chunk):
    """Per chunk: 2L rfft2d (the first on the image's 3 channels, the rest on `filters`)
    and 2L - 1 irfft2d, all on `filters` channels and channels-first."""
    layers, filters, batch = 3, 4, 2
    step = tf.function(lambda x: transform_schedule(x, layers, filters, chunk))
    graph = step.get_concrete_function(tf.TensorSpec([batch, 3, 8, 6], tf.float32)).graph
    transforms = [op for op in graph.get_operations() if op.type in ("RFFT2D", "IRFFT2D")]
    chunks = batch // chunk
    counted = {kind: sum(op.type == kind for op in transforms) for kind in ("RFFT2D", "IRFFT2D")}
    assert counted == {kind: count * chunks for kind, count in transform_counts(layers).items()}
    input_channels = sorted(op.inputs[0].shape[1] for op in transforms)
    assert input_channels == [3] * chunks + [filters] * (len(transforms) - chunks)
    assert all(op.inputs[0].shape[0] == chunk for op in transforms)


@pytest.mark.parametrize(
    "layers,chunk,message",
    [(2, 3, "does not divide the batch of 4"), (2, 0, "does not divide"), (0, 1, "at least one")],
)
def test_bad_schedules_are_refused(layers, chunk, message):
    with pytest.raises(ValueError, match=message):
        transform_schedule(tf.zeros([4, 3, 6, 6]), layers, 4, chunk)


def spectral_schedule_reference(images: np.ndarray, kernels: list) -> float:
    """Sum of d(sum of the last activation)/d(first layer's output), backpropagated by
    hand: each layer's input gradient is the circular correlation
    ``irfft2(sum_o conj(K) rfft2(g))`` (float64 numpy)."""
    height, width = images.shape[1:3]
    spectra = [kr.numpy() + 1j * ki.numpy().astype(np.float64) for kr, ki in kernels]
    activation, pre_activations = images.astype(np.float64), []
    for kernel in spectra:
        mixed = np.einsum("bhwi,hwio->bhwo", np.fft.rfft2(activation, axes=(1, 2)), kernel)
        pre_activations.append(np.fft.irfft2(mixed, s=(height, width), axes=(1, 2)))
        activation = np.maximum(pre_activations[-1], 0)
    gradient = np.ones_like(activation)
    for layer in reversed(range(1, len(spectra))):
        gradient = gradient * (pre_activations[layer] > 0)
        spectrum = np.fft.rfft2(gradient, axes=(1, 2))
        correlated = np.einsum("bhwo,hwio->bhwi", spectrum, np.conj(spectra[layer]))
        gradient = np.fft.irfft2(correlated, s=(height, width), axes=(1, 2))
    return gradient.sum()


@pytest.mark.parametrize("height,width", [(7, 6), (8, 8), (5, 9)])
def test_spectral_schedule_equals_hand_backpropagation(height, width, rng):
    images = rng.uniform(0, 1, (2, height, width, 3)).astype(np.float32)
    kernels = floor_kernels(height, width, 3, layers=3, filters=4)
    assert [tuple(kr.shape) for kr, _ in kernels] == [
        (height, width // 2 + 1, 3, 4),
        (height, width // 2 + 1, 4, 4),
        (height, width // 2 + 1, 4, 4),
    ]
    got = float(tf.function(lambda: spectral_schedule(tf.constant(images), kernels))())
    want = spectral_schedule_reference(images, kernels)
    assert abs(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_spectral_schedule_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        spectral_schedule(tf.zeros([1, 6, 6, 3]), [])
