"""``cfconv bench infer``: frozen CF-Conv vs spatial CNNs in Keras, SavedModel, onnxruntime.

Models (random weights; speed does not depend on them): the frozen CF model, the 3x3
spatial baseline, and spatial models whose kernels cover the CF kernel's receptive
field (31x31, and the full input size when it can finish within the time budget).
Each is timed at batch 1 (latency) and a larger batch (throughput) in every runtime.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import keras
import numpy as np

from cfconv_tf.bench.flops import model_flops
from cfconv_tf.bench.timing import median, time_interleaved
from cfconv_tf.config import load_model_config
from cfconv_tf.models import build_model
from export.compact import EXACT, KernelStorage
from export.freeze import freeze_model
from export.native import library_path
from export.onnx_export import build_onnx, save_onnx
from export.parity import Runner, keras_runner
from export.savedmodel import write_savedmodel
from export.self_check import load_onnx, load_savedmodel
from export.signature import signature_of

BASELINE = "spatial 3x3"
# ONNX lowering of the CF model -> how its FLOPs are counted (cfconv_tf.bench.flops)
SPECTRAL_LOWERINGS = {
    "factorized": "dft-factorized",
    "matmul": "dft-matmul",
    "dft": "fft",
    "native": "fft",
}
# The CF model's ONNX files: runtime label -> (lowering, kernel storage)
CF_ONNX_FILES = {
    **{f"onnxruntime {lowering}": (lowering, EXACT) for lowering in SPECTRAL_LOWERINGS},
    **{
        f"onnxruntime native, {dtype} kernels": ("native", KernelStorage(dtype=dtype))
        for dtype in ("float16", "int8")
    },
}


def frozen_cf_model(size: int, channels: int, classes: int, conv_layers: int = 6) -> keras.Model:
    """The paper's CF model at ``size``, frozen, with random weights (seed 0).

    Not checked against the model it was frozen from: it is only timed, and freezing is
    checked where exports are made and in the export tests."""
    config = load_model_config("paper_cnn").replace(conv_layers=conv_layers)
    shape = (size, size, channels)
    return freeze_model(build_model(config, "cf", shape, classes, seed=0), check=False)


def spatial_kernels(size: int) -> list[int]:
    """Kernel sizes of the spatial models: 3x3, the CF kernel's receptive field (31x31 or
    the largest odd size that fits), and the whole input."""
    return list(dict.fromkeys((3, min(31, size if size % 2 else size - 1), size)))


def model_names(size: int) -> list[str]:
    """The suite's models, in its order (what ``--rows`` selects from)."""
    return ["cf", *(f"spatial {kernel}x{kernel}" for kernel in spatial_kernels(size))]


def select_models(size: int, names: list[str] | None) -> list[str]:
    """The models named in ``names`` (all when ``None``), in the suite's order.

    Raises:
        ValueError: a name that is no model of the suite; the message lists them.
    """
    known = model_names(size)
    unknown = [name for name in names or () if name not in known]
    if unknown:
        raise ValueError(f"unknown inference benchmark rows {unknown}; known: {known}")
    return [name for name in known if names is None or name in names]


def benchmark_models(
    size: int, channels: int, classes: int, conv_layers: int = 6, names: list[str] | None = None
) -> dict[str, keras.Model]:
    """The frozen CF model and the spatial models to compare it with (those in ``names``)."""
    config = load_model_config("paper_cnn").replace(conv_layers=conv_layers)
    shape = (size, size, channels)
    models = {}
    for name in select_models(size, names):
        if name == "cf":
            models[name] = frozen_cf_model(size, channels, classes, conv_layers)
        else:
            kernel = int(name.split()[1].split("x")[0])
            models[name] = build_model(
                config.replace(spatial_kernel_size=kernel), "spatial", shape, classes, seed=0
            )
    return models


def runtimes(
    name: str, model: keras.Model, workdir: Path
) -> Iterator[tuple[str, Callable, str, int]]:
    """``(runtime, runner of images, spectral implementation for FLOPs, bytes of weights a
    call reads)`` for one model; an ONNX file's weights are its size on disk."""
    class_names = [str(index) for index in range(max(int(model.outputs[0].shape[-1]), 2))]
    signature = signature_of(model, class_names)
    (image,) = (info.name for info in signature.inputs)

    def on_images(run: Runner) -> Callable:
        return lambda images: run({image: images})

    weight_bytes = sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)
    yield "keras", on_images(keras_runner(model, signature)), "fft", weight_bytes
    folder = workdir / name.replace(" ", "_")
    write_savedmodel(model, signature, folder / "savedmodel", {})
    yield "savedmodel", on_images(load_savedmodel(folder / "savedmodel").run), "fft", weight_bytes
    files = CF_ONNX_FILES if name == "cf" else {"onnxruntime": ("factorized", EXACT)}
    for label, (lowering, storage) in files.items():
        if lowering == "native" and library_path() is None:  # no compiler at install
            continue
        target = folder / label.replace(" ", "_").replace(",", "")
        target.mkdir(parents=True)
        path = save_onnx(build_onnx(model, signature, lowering, storage=storage), target)
        file_bytes = sum(item.stat().st_size for item in target.iterdir())
        yield label, on_images(load_onnx(path).run), SPECTRAL_LOWERINGS[lowering], file_bytes


def run_infer(
    size: int,
    channels: int = 3,
    classes: int = 2,
    batch_sizes=(1, 32),
    repeats: int = 7,
    conv_layers: int = 6,
    peak_gflops: float = 50.0,
    weight_stream_gbs: float = 20.0,
    budget_seconds: float = 60.0,
    progress: Callable[[str], None] = lambda _: None,
    row_names: list[str] | None = None,
) -> list[dict]:
    """Time every (model in ``row_names``, default all; runtime; batch size): one row each.

    Every runtime is loaded and warmed up first, then the rows are timed in turn
    (:func:`cfconv_tf.bench.timing.time_interleaved`), so drifts of a shared machine's
    speed fall on all rows alike and the ratios between rows hold. Each row also
    carries the bytes of weights a call reads (for ONNX, the file's size) and
    ``weight_floor_ms``, the time to read them once at ``weight_stream_gbs``
    (:func:`cfconv_tf.bench.timing.weight_stream_gbs`): no call can be faster, whatever
    the batch.
    """
    rows = []
    calls = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="cfconv-bench-") as tmp:
        models = benchmark_models(size, channels, classes, conv_layers, row_names)
        for name, model in models.items():
            for runtime, runner, implementation, weight_bytes in runtimes(name, model, Path(tmp)):
                flops = model_flops(model, implementation)
                for batch in batch_sizes:
                    progress(f"infer {name} {runtime} batch {batch}: load")
                    row = {
                        "model": name,
                        "conv_layers": conv_layers,
                        "runtime": runtime,
                        "batch": batch,
                        "flops_per_image": flops,
                        "weight_mb": weight_bytes / 1e6,
                        "weight_floor_ms": weight_bytes / weight_stream_gbs / 1e6,
                    }
                    rows.append(row)
                    estimate = flops * batch / (0.5 * peak_gflops * 1e9)
                    if estimate > budget_seconds:
                        row["status"] = f"skipped: ~{estimate:.0f} s per call"
                        continue
                    images = rng.uniform(0, 255, (batch, size, size, channels)).astype(np.float32)
                    calls[len(rows) - 1] = partial(runner, images)
                    calls[len(rows) - 1]()  # warm-up
        progress("infer: timing the rows in turn")
        durations = time_interleaved(calls, repeats, budget_seconds)
    for index, runs in durations.items():
        row = rows[index]
        seconds = median(runs)
        flops = row["flops_per_image"] * row["batch"]
        row.update(
            {
                "status": "ok",
                "runs_ms": [r * 1e3 for r in runs],
                "median_ms": seconds * 1e3,
                "images_per_s": row["batch"] / seconds,
                "achieved_gflops": flops / seconds / 1e9,
                "peak_fraction": flops / seconds / 1e9 / peak_gflops,
            }
        )
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Median time relative to the 3x3 model in the same runtime and batch."""
    baseline = {
        (row["runtime"].split()[0], row["batch"]): row["median_ms"]
        for row in rows
        if row["model"] == BASELINE and row["status"] == "ok"
    }
    for row in rows:
        reference = baseline.get((row["runtime"].split()[0], row["batch"]))
        if row["status"] == "ok" and reference:
            row["ratio_to_3x3"] = row["median_ms"] / reference
