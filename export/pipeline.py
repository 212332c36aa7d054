"""What the ``freeze``, ``export`` and ``verify`` verbs do, as plain functions.

A model argument is a ``.keras`` file or a training run directory; a run directory
(or the folder of its ``model.keras``) also supplies the class names and the dataset
to evaluate on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from cfconv_tf.data import batched, load_dataset
from cfconv_tf.training import compile_model
from export.atomic import staged_version
from export.freeze import freeze_model, image_input_size, load_trained_model
from export.names import CLASS_NAMES_KEY, PREPROCESSING_KEY
from export.onnx_export import build_onnx, save_onnx
from export.parity import (
    compare,
    keras_runner,
    onnx_runner,
    random_inputs,
    savedmodel_runner,
    tolerance_for,
)
from export.savedmodel import write_savedmodel
from export.signature import classifier_units, input_infos, signature_of
from export.triton import write_repository_entry

FORMATS = ("savedmodel", "onnx", "triton")
PREPROCESSING = "float32 pixels in [0, 255], NHWC; the model scales them by 1/255"


def run_dir_of(model_path: str | Path) -> Path | None:
    """The training run directory a model belongs to, if any."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "run.json").is_file() else None


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (Triton's ``labels.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no labels file at {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path} holds no class names")
    return names


def class_names_for(model_path: str | Path, labels: str | Path | None = None) -> list[str] | None:
    """Class names: from ``labels`` (a file), else from the model's run directory, else None."""
    if labels is not None:
        return read_labels(labels)
    run_dir = run_dir_of(model_path)
    if run_dir and (run_dir / "test_metrics.json").is_file():
        return json.loads((run_dir / "test_metrics.json").read_text())["class_names"]
    return None


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
    classes = classifier_units(model)
    if classes is None:
        raise ValueError(f"{model.name} is not a classifier: accuracy is not defined for it")
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
    dtype: str | None = None,
) -> dict:
    """Freeze, save to ``out`` (.keras) and report trained vs frozen test accuracy.

    Sizes are reported for a model with one image input, accuracy for an image
    classifier whose dataset is known.
    """
    trained = load_trained_model(model_path)
    frozen = freeze_model(trained, source, input_size, dtype)
    one_image = sum(len(info.shape) == 4 for info in input_infos(trained)) == 1
    report = {"source": source, "out": str(out)}
    if one_image:
        height, width, _ = image_input_size(trained)
        frozen_size = image_input_size(frozen)[:2]
        report.update({"trained_size": [height, width], "frozen_size": list(frozen_size)})
        if (dataset or run_dir_of(model_path)) and classifier_units(trained):
            report["trained_accuracy"] = accuracy(
                trained, test_split(model_path, (height, width), dataset, evaluate_limit)
            )
            report["frozen_accuracy"] = accuracy(
                frozen, test_split(model_path, frozen_size, dataset, evaluate_limit)
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging.keras")
    frozen.save(staging)
    staging.replace(out)
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
    labels: str | Path | None = None,
    dtype: str | None = None,
) -> Path:
    """Freeze (if needed) and export; returns the written version folder.

    ``labels``: a class-names file for a classifier outside a run directory; ``dtype``:
    a dtype policy for every layer (:func:`export.freeze.freeze_model`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    trained = load_trained_model(model_path)
    frozen = freeze_model(trained, source, input_size, dtype)
    if labels is not None and classifier_units(frozen) is None:
        raise ValueError(
            f"class names were given, but {frozen.name} is not a classifier (one softmax or "
            f"one-unit sigmoid output); export it without them"
        )
    signature = signature_of(frozen, class_names_for(model_path, labels))
    metadata = {
        "name": name,
        "kernel_source": source,
        "trained_model": str(model_path),
        "inputs": [[info.name, list(info.shape), info.dtype] for info in signature.inputs],
        "outputs": [[info.name, list(info.shape), info.dtype] for info in signature.outputs],
    }
    if run_dir_of(model_path):
        metadata[PREPROCESSING_KEY] = PREPROCESSING
    if fmt != "savedmodel":  # build (and so validate) before anything is staged
        onnx_model = build_onnx(
            frozen,
            signature,
            lowering,
            opset,
            {
                key: value if isinstance(value, str) else json.dumps(value)
                for key, value in metadata.items()
            },
        )
    with staged_version(Path(out), name, version) as (staging, final):
        if fmt == "savedmodel":
            saved = {**metadata, CLASS_NAMES_KEY: signature.class_names}
            write_savedmodel(frozen, signature, staging, saved)
        else:
            save_onnx(onnx_model, staging)
    if fmt == "triton":
        write_repository_entry(final.parent, name, signature)
    return final


@dataclass(frozen=True)
class ParityReport:
    """Relative errors by input kind ("random", "test images") and candidate, and the
    bound they are held to (see ``tolerance_for``)."""

    errors: dict[str, dict[str, float]]
    tolerance: float

    def failures(self) -> list[str]:
        """One line per candidate and input kind beyond the tolerance."""
        return [
            f"{name} on {kind}: {error:.2e}"
            for kind, errors in self.errors.items()
            for name, error in errors.items()
            if error > self.tolerance
        ]


def verify_exports(
    model_path: str | Path,
    savedmodels: list[str],
    onnx_files: list[str],
    dataset: str | None = None,
    samples: int = 16,
    seed: int = 0,
) -> ParityReport:
    """Relative error of the frozen model and each export against the trained model.

    Compared on random inputs and, for an image model whose dataset is known, on real
    test images.
    """
    trained = load_trained_model(model_path)
    signature = signature_of(trained, class_names_for(model_path))
    frozen = freeze_model(trained)
    candidates = {"frozen keras": keras_runner(frozen, signature)}
    candidates.update({f"savedmodel {p}": savedmodel_runner(p) for p in savedmodels})
    candidates.update({f"onnxruntime {p}": onnx_runner(p) for p in onnx_files})
    inputs = {"random": random_inputs(signature.inputs, samples, np.random.default_rng(seed))}
    if (dataset or run_dir_of(model_path)) and len(signature.inputs) == 1:
        height, width, _ = image_input_size(trained)
        images, _ = next(iter(test_split(model_path, (height, width), dataset).batch(samples)))
        inputs["test images"] = {signature.inputs[0].name: images.numpy()}
    reference = keras_runner(trained, signature)
    return ParityReport(
        {kind: compare(reference, candidates, arrays) for kind, arrays in inputs.items()},
        tolerance_for(trained),
    )
