"""The FFTs a CF-Conv training step cannot avoid, timed on their own: a lower bound.

Each CF-Conv layer of a training step transforms its input (``rfft2d``) and its output
(``irfft2d``) in the forward pass, and in the backward pass the output gradient
(``rfft2d``: the kernel gradient needs its spectrum) and, except in the first layer,
the input gradient (``irfft2d``). :func:`transform_schedule` runs exactly those TF
transforms on tensors of the same shapes as the paper's network, with the ReLU masks
between layers and nothing else: no channel mixing, no generators, no sampling, no
optimizer, and channels-first throughout so that no layout change is needed. Even if
everything else in a CF-Conv step cost nothing, a step built on TF's FFT kernels would
cost at least this.

The transforms run on ``chunk`` images at a time (all images at once with ``chunk ==
batch``): a chunk of one image's channels fits in cache, which makes TF's FFT kernels
faster than on the whole batch, so the benchmark measures both and the smaller is
the floor.

:func:`spectral_schedule` adds what every CF-Conv step also needs: the channel mixing
of the forward pass and of the input gradient, as :func:`~cfconv_tf.spectral.spectral_conv2d`
computes them (with the layout changes its batched matmuls need), still without a
kernel gradient, generator, sampling or optimizer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cfconv_tf.spectral import hermitian_project, spectral_conv2d


def transform_counts(layers: int) -> dict[str, int]:
    """How many ``rfft2d`` and ``irfft2d`` ops a step of ``layers`` CF-Conv layers runs
    per chunk: one of each per layer forward, one ``rfft2d`` per layer and one
    ``irfft2d`` per layer but the first backward."""
    return {"RFFT2D": 2 * layers, "IRFFT2D": 2 * layers - 1}


def _chunk_schedule(images: tf.Tensor, layers: int, filters: int) -> tf.Tensor:
    """The forward and backward transforms of one chunk ``[n, C, H, W]`` (channels-first).

    The first layer's spectrum ``[n, C, H, Wf]`` is repeated to ``filters`` channels (the
    size the mixing produces); later layers transform ``filters`` channels. The backward
    pass starts from the last activation as the output gradient. Returns a scalar that
    depends on every transform's result (so that none is pruned from the graph).
    """
    height, width = images.shape[2], images.shape[3]
    fft_length = [height, width]
    activation = images
    masks = []
    for _ in range(layers):
        spectrum = tf.signal.rfft2d(activation)
        if spectrum.shape[1] != filters:
            spectrum = tf.gather(spectrum, tf.range(filters) % spectrum.shape[1], axis=1)
        output = tf.signal.irfft2d(spectrum, fft_length=fft_length)
        masks.append(output > 0)
        activation = tf.nn.relu(output)
    gradient = activation
    checksum = tf.constant(0.0)
    for layer in reversed(range(layers)):
        gradient = tf.where(masks[layer], gradient, 0.0)
        spectrum = tf.signal.rfft2d(gradient)
        checksum += tf.math.real(spectrum[0, 0, 0, 0])  # the kernel gradient's input
        if layer > 0:
            gradient = tf.signal.irfft2d(spectrum, fft_length=fft_length)
    return checksum


def transform_schedule(images: tf.Tensor, layers: int, filters: int, chunk: int) -> tf.Tensor:
    """Every transform of a CF-Conv training step on ``images [B, C, H, W]``, ``chunk``
    images at a time (``B`` must be a multiple of ``chunk``). Returns a scalar checksum.

    Raises:
        ValueError: ``chunk`` does not divide the batch, or fewer than one layer.
    """
    batch = images.shape[0]
    if layers < 1:
        raise ValueError(f"the schedule needs at least one layer, got {layers}")
    if chunk < 1 or batch % chunk:
        raise ValueError(f"chunk {chunk} does not divide the batch of {batch} images")
    return tf.add_n(
        [_chunk_schedule(part, layers, filters) for part in tf.split(images, batch // chunk)]
    )


def floor_kernels(
    height: int, width: int, channels: int, layers: int, filters: int, seed: int = 0
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """Fixed random Hermitian-projected kernels ``(Kr, Ki)``, each ``[H, W//2+1, Cin,
    filters]``, for :func:`spectral_schedule` (``Cin`` = ``channels``, then ``filters``).
    Made once, outside the timed function, so they are its inputs, not graph constants."""
    rng = np.random.default_rng(seed)
    kernels = []
    for index in range(layers):
        shape = (height, width // 2 + 1, channels if index == 0 else filters, filters)
        scale = 1.0 / np.sqrt(shape[2])
        parts = (tf.constant(rng.uniform(-scale, scale, shape), tf.float32) for _ in range(2))
        kernels.append(hermitian_project(*parts, width))
    return kernels


def spectral_schedule(images: tf.Tensor, kernels: list[tuple[tf.Tensor, tf.Tensor]]) -> tf.Tensor:
    """The spectral convolutions of a CF-Conv step on ``images [B, H, W, C]`` (channels
    last, as the layers take them): a ReLU spectral convolution per kernel of
    :func:`floor_kernels` forward; backward, the gradient with respect to the first
    layer's output (every later layer's input gradient; no kernel gradient, and the
    first layer's backward transform is left out too). Returns a scalar checksum.

    Raises:
        ValueError: no kernels.
    """
    if not kernels:
        raise ValueError("the schedule needs at least one layer, got 0")
    first = tf.nn.relu(spectral_conv2d(images, *kernels[0]))
    with tf.GradientTape() as tape:
        tape.watch(first)
        activation = first
        for kernel in kernels[1:]:
            activation = tf.nn.relu(spectral_conv2d(activation, *kernel))
        loss = tf.reduce_sum(activation)
    return tf.reduce_sum(tape.gradient(loss, first))
