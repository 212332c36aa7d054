"""What the ``freeze``, ``export`` and ``verify`` verbs do, as plain functions.

A model argument is a ``.keras`` file or a training run directory; a run directory
(or the folder of its ``model.keras``) also supplies the class names and the dataset
to evaluate on.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from cfconv_tf.data import batched, load_dataset
from cfconv_tf.training import compile_model
from export.atomic import staged_version
from export.freeze import freeze_model, load_trained_model, model_input_size
from export.onnx_model import build_onnx, save_onnx
from export.parity import TOLERANCE, compare, keras_runner, onnx_runner, savedmodel_runner
from export.savedmodel import write_savedmodel
from export.triton import write_repository_entry

FORMATS = ("savedmodel", "onnx", "triton")
PREPROCESSING = "float32 pixels in [0, 255], NHWC; the model scales them by 1/255"


def run_dir_of(model_path: str | Path) -> Path | None:
    """The training run directory a model belongs to, if any."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "run.json").is_file() else None


def class_names_for(model: keras.Model, model_path: str | Path) -> list[str]:
    """Class names from the model's run directory, else ``class_0 ...``."""
    run_dir = run_dir_of(model_path)
    if run_dir and (run_dir / "test_metrics.json").is_file():
        return json.loads((run_dir / "test_metrics.json").read_text())["class_names"]
    units = int(model.outputs[0].shape[-1])
    return [f"class_{index}" for index in range(max(units, 2))]


def test_split(
    model_path: str | Path,
    input_size: tuple[int, int] | None,
    dataset: str | None = None,
    limit: int | None = None,
):
    """The test split of the model's dataset (from its run, or ``dataset``) at a size."""
    run_dir = run_dir_of(model_path)
    channels = None
    if run_dir is not None:
        run = json.loads((run_dir / "run.json").read_text())
        dataset = dataset or run["dataset"]
        channels = run["config"]["channels"]
    if dataset is None:
        raise ValueError("no dataset to evaluate on: give --dataset or a run directory")
    test = load_dataset(dataset, input_size, channels).test
    return test.take(limit) if limit else test


def accuracy(model: keras.Model, test, batch_size: int = 64) -> float:
    """Test accuracy of a classifier (sigmoid or softmax head)."""
    classes = max(int(model.outputs[0].shape[-1]), 2)
    compile_model(model, classes, learning_rate=1e-3)
    metrics = model.evaluate(batched(test, batch_size), return_dict=True, verbose=0)
    return float(next(value for name, value in metrics.items() if "accuracy" in name))


def freeze_and_report(
    model_path: str | Path,
    out: str | Path,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    dataset: str | None = None,
    evaluate_limit: int | None = None,
) -> dict:
    """Freeze, save to ``out`` (.keras) and report trained vs frozen test accuracy."""
    trained = load_trained_model(model_path)
    frozen = freeze_model(trained, source, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging.keras")
    frozen.save(staging)
    staging.replace(out)
    height, width, _ = model_input_size(trained)
    frozen_size = model_input_size(frozen)[:2]
    report = {
        "source": source,
        "trained_size": [height, width],
        "frozen_size": list(frozen_size),
        "out": str(out),
    }
    if dataset or run_dir_of(model_path):
        report["trained_accuracy"] = accuracy(
            trained, test_split(model_path, (height, width), dataset, evaluate_limit)
        )
        report["frozen_accuracy"] = accuracy(
            frozen, test_split(model_path, frozen_size, dataset, evaluate_limit)
        )
    return report


def export_model(
    model_path: str | Path,
    fmt: str,
    out: str | Path,
    name: str,
    version: int | None = None,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    lowering: str = "factorized",
    opset: int | None = None,
) -> Path:
    """Freeze (if needed) and export; returns the written version folder."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    trained = load_trained_model(model_path)
    frozen = freeze_model(trained, source, input_size)
    class_names = class_names_for(trained, model_path)
    metadata = {
        "name": name,
        "class_names": class_names,
        "input_size": list(model_input_size(frozen)),
        "preprocessing": PREPROCESSING,
        "kernel_source": source,
        "trained_model": str(model_path),
    }
    if fmt != "savedmodel":  # build (and so validate) before anything is staged
        onnx_model = build_onnx(
            frozen,
            class_names,
            lowering,
            opset,
            {
                key: json.dumps(value) if not isinstance(value, str) else value
                for key, value in metadata.items()
                if key not in ("class_names", "input_size")
            },
        )
    with staged_version(Path(out), name, version) as (staging, final):
        if fmt == "savedmodel":
            write_savedmodel(frozen, staging, metadata)
        else:
            save_onnx(onnx_model, staging)
    if fmt == "triton":
        write_repository_entry(final.parent, name, model_input_size(frozen), class_names)
    return final


def verify_exports(
    model_path: str | Path,
    savedmodels: list[str],
    onnx_files: list[str],
    dataset: str | None = None,
    samples: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Relative error of the frozen model and each export against the trained model.

    Compared on fresh random pixels and on real test images (when a dataset is known).
    """
    trained = load_trained_model(model_path)
    candidates = {"frozen keras": keras_runner(freeze_model(trained))}
    candidates.update({f"savedmodel {p}": savedmodel_runner(p) for p in savedmodels})
    candidates.update({f"onnxruntime {p}": onnx_runner(p) for p in onnx_files})
    height, width, channels = model_input_size(trained)
    inputs = {
        "random": np.random.default_rng(seed)
        .uniform(0, 255, (samples, height, width, channels))
        .astype(np.float32)
    }
    if dataset or run_dir_of(model_path):
        images, _ = next(iter(test_split(model_path, (height, width), dataset).batch(samples)))
        inputs["test images"] = images.numpy()
    return {
        kind: compare(keras_runner(trained), candidates, images) for kind, images in inputs.items()
    }


def parity_failures(report: dict[str, dict[str, float]], tolerance: float = TOLERANCE) -> list[str]:
    return [
        f"{name} on {kind}: {error:.2e}"
        for kind, errors in report.items()
        for name, error in errors.items()
        if error > tolerance
    ]
