"""``cfconv bench layer``: where one CF-Conv layer's training step spends its time.

One layer ``[B, H, W, C] -> [B, H, W, C]`` at the benchmark's shape; each stage is timed
on its own as a compiled ``tf.function`` (median of the repeats): the two transforms,
the spectral convolution forward and forward+backward, the sparse update (drawing
positions, both MLPs, the scatter) forward+backward, and the whole layer's training
step, next to a 3x3 ``Conv2D`` forward+backward on the same input. Stages overlap
inside the whole step, so they need not add up; they say which stage to work on.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from cfconv_tf.bench.timing import median, time_calls
from cfconv_tf.layers import CFConv2D
from cfconv_tf.spectral import hermitian_project, spectral_conv2d

BASELINE = "conv2d 3x3 fwd+bwd"


def _gradient_step(forward: Callable[[], tf.Tensor], sources: list) -> Callable[[], list]:
    """A compiled call of ``forward`` and the gradient of ``sum(y^2)`` w.r.t. ``sources``."""

    @tf.function
    def step() -> list:
        with tf.GradientTape() as tape:
            tape.watch([s for s in sources if isinstance(s, tf.Tensor)])
            y = forward()
            loss = tf.reduce_sum(tf.square(y))
        return [loss, *tape.gradient(loss, sources)]

    return step


def _stages(
    size: int, batch: int, channels: int, samples: tuple[int | float, ...]
) -> list[tuple[str, Callable[[], object]]]:
    """``(name, compiled call)`` for every stage at this shape."""
    x = tf.random.stateless_normal((batch, size, size, channels), seed=(0, 0))
    channels_first = tf.transpose(x, [0, 3, 1, 2])
    spectrum = tf.signal.rfft2d(channels_first)
    conv = keras.layers.Conv2D(channels, 3, padding="same")
    conv.build(x.shape)
    stages = [(BASELINE, _gradient_step(lambda: conv(x), [x, *conv.trainable_variables]))]

    kernel_shape = (size, size // 2 + 1, channels, channels)
    kernel = hermitian_project(
        *(tf.random.stateless_uniform(kernel_shape, (0, part), -1.0, 1.0) for part in (1, 2)),
        size,
    )
    stages += [
        ("rfft2d", tf.function(lambda: tf.signal.rfft2d(channels_first))),
        ("irfft2d", tf.function(lambda: tf.signal.irfft2d(spectrum, fft_length=[size, size]))),
        ("spectral conv fwd", tf.function(lambda: spectral_conv2d(x, *kernel))),
        ("spectral conv fwd+bwd", _gradient_step(lambda: spectral_conv2d(x, *kernel), [x])),
    ]
    for count in samples:
        layer = CFConv2D(channels, samples=count, seed=0)
        layer.build(x.shape)
        label = f"{layer.sample_count} samples"
        stages.append(
            (
                f"sparse update fwd+bwd, {label}",
                _gradient_step(
                    lambda layer=layer: tf.concat(
                        [tf.reshape(k, [-1]) for k in layer.sparse_update()[0]], 0
                    ),
                    layer.trainable_variables,
                ),
            )
        )
        for gradient in ("full", "sampled"):
            layer = CFConv2D(channels, samples=count, seed=0, kernel_gradient=gradient)
            layer.build(x.shape)
            stages.append(
                (
                    f"cf layer fwd+bwd, {label}, {gradient} kernel gradient",
                    _gradient_step(
                        lambda layer=layer: layer(x, training=True),
                        [x, *layer.trainable_variables],
                    ),
                )
            )
    return stages


def run_layer_stages(
    size: int = 150,
    batch: int = 32,
    channels: int = 32,
    samples: tuple[int | float, ...] = (2**12, 2**18),
    repeats: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """One row per stage: median milliseconds and the ratio to the 3x3 conv's step."""
    rows = []
    for name, call in _stages(size, batch, channels, samples):
        progress(f"layer {name}")
        runs = time_calls(call, repeats, warmup=2, budget_seconds=60.0)
        rows.append(
            {
                "stage": name,
                "input_size": size,
                "batch": batch,
                "channels": channels,
                "runs_ms": [r * 1e3 for r in runs],
                "median_ms": median(runs) * 1e3,
            }
        )
    baseline = rows[0]["median_ms"]
    for row in rows:
        row["ratio_to_3x3"] = row["median_ms"] / baseline
    return rows
