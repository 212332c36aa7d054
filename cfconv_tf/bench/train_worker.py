"""One training benchmark in a fresh process: ``python -m cfconv_tf.bench.train_worker JSON``.

Runs ``warmup + repeats`` training steps of one model (``paper_cnn`` with the spec's
samples, layer count, ``config`` changes and the generator settings of the named
configuration ``generator_of``) on random data, or for variant ``transforms`` the
transforms of such a step alone (with ``mixing``: its spectral convolutions;
:mod:`cfconv_tf.bench.transform_floor`), and prints one
JSON line: seconds per timed step and the process's peak resident memory. Run in a
subprocess so that each measurement starts clean and an out-of-memory failure (under
the parent's RLIMIT_AS) takes down only this process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def benchmark_config(spec: dict):
    """The :class:`~cfconv_tf.config.ModelConfig` a benchmark spec describes."""
    from cfconv_tf.config import GENERATOR_FIELDS, load_model_config

    changes = dict(spec.get("config", {}))
    if spec.get("generator_of"):
        source = load_model_config(spec["generator_of"])
        changes.update({field: getattr(source, field) for field in GENERATOR_FIELDS})
    return load_model_config("paper_cnn").replace(
        samples=spec.get("samples"), conv_layers=spec.get("conv_layers"), **changes
    )


def measure(spec: dict) -> dict:
    """Seconds per timed step and peak RSS of the spec's model or transform floor."""
    if spec["variant"] == "transforms":
        return _measure_transforms(spec)
    return _measure_training(spec)


def _measure_transforms(spec: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    from cfconv_tf.bench.transform_floor import (
        floor_kernels,
        spectral_schedule,
        transform_schedule,
    )
    from cfconv_tf.config import load_model_config

    config = load_model_config("paper_cnn").replace(conv_layers=spec.get("conv_layers"))
    layers, filters, size = config.conv_layers, config.filters, spec["size"]
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 1, (spec["batch"], size, size, 3)), tf.float32)
    if spec.get("mixing"):
        kernels = floor_kernels(size, size, 3, layers, filters)
        step = tf.function(lambda: spectral_schedule(images, kernels))
    else:
        channels_first = tf.transpose(images, [0, 3, 1, 2])
        chunk = spec.get("chunk") or spec["batch"]
        step = tf.function(lambda: transform_schedule(channels_first, layers, filters, chunk))
    durations = []
    for _ in range(spec["warmup"] + spec["repeats"]):
        start = time.perf_counter()
        float(step())
        durations.append(time.perf_counter() - start)
    return _result(durations[spec["warmup"] :])


def _result(step_seconds: list[float]) -> dict:
    return {
        "step_seconds": step_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _measure_training(spec: dict) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from cfconv_tf.models import build_model
    from cfconv_tf.training import compile_model

    keras.utils.set_random_seed(0)
    config = benchmark_config(spec)
    shape = (spec["size"], spec["size"], 3)
    model = build_model(config, spec["variant"], shape, classes=2, seed=0)
    compile_model(model, 2, learning_rate=1e-3)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (spec["batch"], *shape)).astype(np.float32)
    labels = rng.integers(0, 2, spec["batch"]).astype(np.int32)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()

    durations: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step to finish
            durations.append(time.perf_counter() - self.start)

    steps = spec["warmup"] + spec["repeats"]
    model.fit(data, steps_per_epoch=steps, epochs=1, callbacks=[StepTimer()], verbose=0)
    return _result(durations[spec["warmup"] :])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
