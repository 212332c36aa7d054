"""What the ``freeze``, ``export`` and ``verify`` verbs do, as plain functions.

A model argument is a ``.keras`` file or a training run directory; a run directory
(or the folder of its ``model.keras``) also supplies the class names and the dataset
to evaluate on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from cfconv_tf.data import batched, load_dataset
from cfconv_tf.training import compile_model, headline_metric, metric_label
from export.atomic import free_version, staged_version
from export.compact import EXACT, KernelStorage, compact_model
from export.freeze import computes_the_trained_model, freeze_model
from export.model_files import load_trained_model, unsaveable_layers
from export.model_graph import image_input_size
from export.names import CLASS_NAMES_KEY, KERNEL_STORAGE_KEY, PREPROCESSING_KEY
from export.onnx_export import build_onnx, save_onnx
from export.parity import (
    ReferenceOutputs,
    Runner,
    compare,
    keras_runner,
    random_inputs,
    reference_outputs,
    tolerance_for,
)
from export.savedmodel import write_savedmodel
from export.self_check import (
    LoadedExport,
    check_export,
    described,
    load_keras,
    load_onnx,
    load_savedmodel,
    same_inputs,
)
from export.signature import Signature, classifier_units, input_infos, signature_of
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


def scored_head(model: keras.Model) -> tuple[int, bool] | None:
    """``(classes, dense)`` of a model with a classifier's head: one class per image
    (``dense`` false) or per pixel; ``None`` for any other model."""
    classes = classifier_units(model)
    if classes is not None:
        return classes, False
    classes = classifier_units(model, rank=4)
    return None if classes is None else (classes, True)


def test_score(model: keras.Model, test, batch_size: int = 64) -> tuple[str, float]:
    """``(metric, value)`` on ``test``: the accuracy of a classifier (sigmoid or softmax
    head), the IoU of the foreground pixels of a per-pixel one
    (:func:`cfconv_tf.training.compile_model`'s ``dense``).

    Raises:
        ValueError: the model is neither.
    """
    head = scored_head(model)
    if head is None:
        raise ValueError(
            f"{model.name} has no classifier head (per image or per pixel): no accuracy or "
            f"IoU to report for it"
        )
    classes, dense = head
    compile_model(model, classes, learning_rate=1e-3, dense=dense)
    metrics = model.evaluate(batched(test, batch_size), return_dict=True, verbose=0)
    name = headline_metric(metrics)
    return metric_label(name), float(metrics[name])


def freeze_and_report(
    model_path: str | Path,
    out: str | Path,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    dataset: str | None = None,
    evaluate_limit: int | None = None,
    dtype: str | None = None,
    storage: KernelStorage = EXACT,
) -> dict:
    """Freeze, save to ``out`` (.keras) and report trained vs frozen test accuracy.

    Sizes are reported for a model with one image input, accuracy for an image
    classifier whose dataset is known (``trained_accuracy``, ``frozen_accuracy``; for a
    per-pixel classifier the IoU, ``trained_iou``, ``frozen_iou``). With compact kernel
    ``storage`` the frozen model computes with the kernels an export with that storage
    keeps, and the report has each layer's kernel error (:mod:`export.compact`). The
    saved file is loaded back and checked before it replaces ``out``.
    """
    trained = load_trained_model(model_path)
    # the saved file is checked against the trained model, except with compact storage,
    # where it is checked against the compacted frozen model: then freezing is checked here
    frozen = freeze_model(trained, source, input_size, dtype, check=not storage.is_exact)
    unsaveable = unsaveable_layers(frozen)
    if unsaveable:
        raise ValueError(
            f"the frozen model cannot be saved as a .keras file: layers {unsaveable} create "
            f"their CF layers in their own __init__ instead of taking them through their "
            f"config, so Keras would load them with new, trainable CF layers. Export the "
            f"model directly (cfconv export freezes in memory)."
        )
    report = {"source": source, "out": str(out)}
    if not storage.is_exact:
        report["kernel_errors"] = compact_model(frozen, storage)
    one_image = sum(len(info.shape) == 4 for info in input_infos(trained)) == 1
    if one_image:
        height, width, _ = image_input_size(trained)
        frozen_size = image_input_size(frozen)[:2]
        report.update({"trained_size": [height, width], "frozen_size": list(frozen_size)})
        if (dataset or run_dir_of(model_path)) and scored_head(trained):
            for name, model, size in (
                ("trained", trained, (height, width)),
                ("frozen", frozen, frozen_size),
            ):
                split = test_split(model_path, size, dataset, evaluate_limit)
                metric, value = test_score(model, split)
                report[f"{name}_{metric}"] = value
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging.keras")
    try:
        frozen.save(staging)
        reference = _reference(trained, frozen, source, input_size, dtype, storage)
        expected = reference_outputs(reference, signature_of(reference))
        report["parity"] = check_export(load_keras(staging), expected)
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return report


def _reference(
    trained: keras.Model,
    frozen: keras.Model,
    source: str,
    input_size: tuple[int, int] | None,
    dtype: str | None,
    storage: KernelStorage,
) -> keras.Model:
    """The model an export of ``frozen`` must compute: the trained one where the two
    compute the same function (and the kernels are kept exactly), else the frozen one."""
    same = computes_the_trained_model(trained, source, input_size, dtype)
    return trained if same and storage.is_exact else frozen


@dataclass(frozen=True)
class PreparedExport:
    """A trained model frozen (and its kernels compacted) once, with what every export
    of it must compute, ready to be written in any format (:func:`write_export`)."""

    frozen: keras.Model
    signature: Signature
    metadata: dict  # every export's metadata but its name
    storage: KernelStorage
    expected: ReferenceOutputs  # the trained (or, see `_reference`, frozen) model's outputs


def prepare_export(
    model_path: str | Path,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    labels: str | Path | None = None,
    dtype: str | None = None,
    storage: KernelStorage = EXACT,
) -> PreparedExport:
    """Load, freeze and (with compact ``storage``) compact a trained model for export.

    ``labels``: a class-names file for a classifier outside a run directory; ``dtype``:
    a dtype policy for every layer (:func:`export.freeze.freeze_model`); ``storage``:
    compact spectral kernels for ONNX (:mod:`export.compact`; the metadata holds the
    storage and each layer's kernel error). Each written export is checked against the
    reference outputs; the frozen model is checked here only with compact storage, whose
    reference is the compacted frozen model rather than the trained one.
    """
    trained = load_trained_model(model_path)
    frozen = freeze_model(trained, source, input_size, dtype, check=not storage.is_exact)
    if labels is not None and classifier_units(frozen) is None:
        raise ValueError(
            f"class names were given, but {frozen.name} is not a classifier (one softmax or "
            f"one-unit sigmoid output); export it without them"
        )
    signature = signature_of(frozen, class_names_for(model_path, labels))
    metadata = {
        "kernel_source": source,
        "trained_model": str(model_path),
        "inputs": [[info.name, list(info.shape), info.dtype] for info in signature.inputs],
        "outputs": [[info.name, list(info.shape), info.dtype] for info in signature.outputs],
    }
    if run_dir_of(model_path):
        metadata[PREPROCESSING_KEY] = PREPROCESSING
    if not storage.is_exact:
        metadata[KERNEL_STORAGE_KEY] = {
            **dataclasses.asdict(storage),
            "relative_errors": compact_model(frozen, storage),
        }
    reference = _reference(trained, frozen, source, input_size, dtype, storage)
    return PreparedExport(
        frozen, signature, metadata, storage, reference_outputs(reference, signature)
    )


def _check_format(fmt: str, storage: KernelStorage) -> None:
    """Refuse an unknown format, and compact kernels outside ONNX."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if fmt == "savedmodel" and not storage.is_exact:
        raise ValueError(
            "compact kernels (--kernel-rank, --kernel-dtype) are an ONNX storage option; "
            "a SavedModel keeps its kernels as float32 variables"
        )


def write_export(
    prepared: PreparedExport,
    fmt: str,
    out: str | Path,
    name: str,
    version: int | None = None,
    lowering: str = "factorized",
    opset: int | None = None,
) -> Path:
    """Write one export of a prepared model; returns the written version folder.

    The written file is loaded by its runtime and checked against the prepared reference
    outputs before the version folder appears.
    """
    _check_format(fmt, prepared.storage)
    frozen, signature = prepared.frozen, prepared.signature
    metadata = {"name": name, **prepared.metadata}
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
            prepared.storage,
        )
    with staged_version(Path(out), name, version) as (staging, final):
        if fmt == "savedmodel":
            saved = {**metadata, CLASS_NAMES_KEY: signature.class_names}
            write_savedmodel(frozen, signature, staging, saved)
            check_export(load_savedmodel(staging), prepared.expected)
        else:
            check_export(load_onnx(save_onnx(onnx_model, staging)), prepared.expected)
    if fmt == "triton":
        write_repository_entry(final.parent, name, signature)
    return final


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
    storage: KernelStorage = EXACT,
) -> Path:
    """Freeze and export (:func:`prepare_export`, then :func:`write_export`); returns
    the written version folder. A bad format, storage, name or version is refused
    before the model is loaded.
    """
    _check_format(fmt, storage)
    free_version(Path(out), name, version)
    prepared = prepare_export(model_path, source, input_size, labels, dtype, storage)
    return write_export(prepared, fmt, out, name, version, lowering, opset)


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
            if not error <= self.tolerance
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
    test images. An export made otherwise (at another input size, with kernels from the
    generators, or with compact kernels: read from its inputs and metadata) is compared
    on random inputs with the trained model frozen and compacted the same way, which is
    what such an export holds.

    Raises:
        ValueError: an export that cannot be loaded or run, or whose inputs are not the
            model's (at any input size).
    """
    trained = load_trained_model(model_path)
    class_names = class_names_for(model_path)
    signature = signature_of(trained, class_names)
    exports = [load_savedmodel(path) for path in savedmodels]
    exports += [load_onnx(path) for path in onnx_files]
    frozen = freeze_model(trained, check=False)  # compared with the trained model below
    candidates = {"frozen keras": keras_runner(frozen, signature)}
    others: dict[tuple, dict[str, Runner]] = {}  # (size, source, storage) -> exports
    for export in exports:
        how = _how_exported(export, signature)
        if how == (None, "state", EXACT):
            candidates[export.what] = export.run
        else:
            others.setdefault(how, {})[export.what] = export.run
    rng = np.random.default_rng(seed)
    inputs = {"random": random_inputs(signature.inputs, samples, rng)}
    if (dataset or run_dir_of(model_path)) and len(signature.inputs) == 1:
        height, width, _ = image_input_size(trained)
        images, _ = next(iter(test_split(model_path, (height, width), dataset).batch(samples)))
        inputs["test images"] = {signature.inputs[0].name: images.numpy()}
    reference = keras_runner(trained, signature)
    errors = {kind: compare(reference, candidates, arrays) for kind, arrays in inputs.items()}
    for (size, source, storage), runners in others.items():
        there = freeze_model(trained, source, size)
        described_as = [f"kernels from the {source}"]
        if size is not None:
            described_as.insert(0, f"at {size[0]}x{size[1]}")
        if not storage.is_exact:
            compact_model(there, storage)
            described_as.append(f"stored as {storage}")
        there_signature = signature_of(there, class_names)
        errors[f"random, against the model frozen {', '.join(described_as)}"] = compare(
            keras_runner(there, there_signature),
            runners,
            random_inputs(there_signature.inputs, samples, rng),
        )
    return ParityReport(errors, tolerance_for(trained))


def _how_exported(
    export: LoadedExport, signature: Signature
) -> tuple[tuple[int, int] | None, str, KernelStorage]:
    """``(input size or None for the trained one, kernel source, kernel storage)`` of an
    export, from its inputs and its metadata."""
    size = (
        None if same_inputs(export.inputs, signature.inputs) else _resized_image(export, signature)
    )
    source = export.metadata.get("kernel_source", "state")
    stored = export.metadata.get(KERNEL_STORAGE_KEY)
    if stored is None:
        return size, source, EXACT
    settings = json.loads(stored) if isinstance(stored, str) else stored
    return size, source, KernelStorage(settings["rank"], settings["dtype"])


def _resized_image(export: LoadedExport, signature: Signature) -> tuple[int, int]:
    """The ``(H, W)`` an export of the model at another input size takes, or a
    ``ValueError`` when its inputs differ from the model's in more than that."""
    images = [info for info in signature.inputs if len(info.shape) == 4]
    found = {info.name: info for info in export.inputs}
    if len(images) == 1 and images[0].name in found:
        image = found[images[0].name]
        size = image.shape[1:3]
        resized = [
            dataclasses.replace(info, shape=(None, *size, info.shape[3]))
            if info.name == image.name
            else info
            for info in signature.inputs
        ]
        if None not in size and same_inputs(export.inputs, resized):
            return int(size[0]), int(size[1])
    raise ValueError(
        f"{export.what} takes the inputs {described(export.inputs)}, which are not the "
        f"model's {described(signature.inputs)} at any input size: it is not an export "
        f"of this model"
    )
