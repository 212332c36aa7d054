"""Inference backends over exported models: onnxruntime (default) and TF SavedModel.

A backend reads a model's inputs and outputs from the model itself (the onnxruntime
session, the SavedModel's ``serving_default`` signature) and the class names the
exporter stored with it; it serves whatever the model takes and returns. Metadata that
does not fit the model (class names that are not distinct strings, one per class of its
``probabilities`` output; text entries that are not text) keeps it from loading.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.names import (
    CLASS_INDEX,
    CLASS_NAMES_KEY,
    LOWERING_KEY,
    METADATA_FILE,
    ONNX_FILE,
    PREPROCESSING_KEY,
    PROBABILITIES,
    SAVEDMODEL_FILE,
    SIGNATURE_NAME,
)
from export.tensor_info import TensorInfo
from serving.errors import ClientError
from serving.images import image_size
from serving.tensors import KSERVE_NAMES

BACKENDS = ("onnxruntime", "tf")
MODEL_FILES = {"onnxruntime": ONNX_FILE, "tf": SAVEDMODEL_FILE}
TEXT_KEYS = (PREPROCESSING_KEY, LOWERING_KEY)  # metadata entries that are text
Arrays = dict[str, np.ndarray]


class Backend:
    """What every backend has: ``inputs``, ``outputs``, ``class_names``, ``predict``."""

    platform = ""
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    class_names: list[str] | None = None

    def predict(self, inputs: Arrays) -> Arrays:
        raise NotImplementedError

    def check_servable(self) -> None:
        """Refuse (at load) a model the server cannot batch or encode, or whose class names
        do not fit it.

        Raises:
            ValueError: a tensor without a free batch axis, or of a type the protocols
                do not carry; class names that are not one per class of a
                ``probabilities`` output ``[N, classes]``.
        """
        for info in (*self.inputs, *self.outputs):
            if info.dtype not in KSERVE_NAMES:
                raise ValueError(f"tensor {info.name!r} has type {info.dtype}, not served")
            if not info.shape or info.shape[0] is not None:
                raise ValueError(
                    f"tensor {info.name!r} of shape {list(info.shape)} has no free batch "
                    f"axis; the server batches requests along the first axis"
                )
        if self.class_names is not None:
            self._check_class_names(len(self.class_names))

    def _check_class_names(self, count: int) -> None:
        """``count`` class names need a ``probabilities`` output ``[N, count]``."""
        shapes = {info.name: list(info.shape) for info in self.outputs}
        shape = shapes.get(PROBABILITIES)
        if shape != [None, count]:
            raise ValueError(
                f"the metadata lists {count} class names, which need a {PROBABILITIES!r} "
                f"output of shape {[None, count]}; the model's is {shape or 'missing'}"
            )

    @property
    def output_labels(self) -> dict[str, list[str]]:
        """Class names by the output whose classes they name (Triton's output labels)."""
        return {PROBABILITIES: self.class_names} if self.class_names else {}

    @property
    def image_classifier(self) -> tuple[str, tuple[int, int, int]] | None:
        """``(input name, (H, W, C))`` if the model classifies images: one image input,
        ``probabilities`` and ``class_index`` outputs, and known class names."""
        names = {info.name for info in self.outputs}
        if len(self.inputs) != 1 or not {PROBABILITIES, CLASS_INDEX} <= names:
            return None
        size = image_size(self.inputs[0].shape)
        if size is None or not self.class_names:
            return None
        return self.inputs[0].name, size


class OnnxBackend(Backend):
    """An onnxruntime session on the chosen execution providers."""

    platform = "onnxruntime_onnx"

    def __init__(
        self, folder: Path, threads: int | None = None, providers: Sequence[str] = ()
    ) -> None:
        from export.ort_session import CPU, onnx_session, tensor_infos

        self.session = onnx_session(Path(folder) / ONNX_FILE, threads, providers or (CPU,))
        self.inputs = tensor_infos(self.session.get_inputs())
        self.outputs = tensor_infos(self.session.get_outputs())
        props = self.session.get_modelmeta().custom_metadata_map
        self.class_names = _class_names(_from_json(props.get(CLASS_NAMES_KEY), CLASS_NAMES_KEY))
        self._output_names = [info.name for info in self.outputs]

    def predict(self, inputs: Arrays) -> Arrays:
        """The outputs; an input the model itself refuses (e.g. a size its free axes cannot
        take) is the client's error."""
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            results = self.session.run(self._output_names, inputs)
        except InvalidArgument as error:
            raise ClientError(f"the model refused the input: {str(error)[-300:]}") from error
        return dict(zip(self._output_names, results, strict=True))


class TFBackend(Backend):
    """The ``serving_default`` signature of a SavedModel."""

    platform = "tensorflow_savedmodel"

    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]
        specs = self.signature.structured_input_signature[1]
        self.inputs = tuple(_tf_info(name, spec) for name, spec in sorted(specs.items()))
        outputs = self.signature.structured_outputs
        self.outputs = tuple(_tf_info(name, spec) for name, spec in sorted(outputs.items()))
        metadata = Path(folder) / METADATA_FILE
        if metadata.is_file():
            self.class_names = _class_names(saved_model_metadata(metadata).get(CLASS_NAMES_KEY))

    def predict(self, inputs: Arrays) -> Arrays:
        outputs = self.signature(
            **{name: self._tf.constant(value) for name, value in inputs.items()}
        )
        return {name: value.numpy() for name, value in outputs.items()}


def _tf_info(name: str, spec) -> TensorInfo:
    return TensorInfo(name, tuple(spec.shape.as_list()), spec.dtype.name)


def _from_json(text: str | None, key: str) -> object:
    """A metadata entry stored as JSON text (ONNX metadata_props hold text only)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the metadata's {key!r} is not JSON: {error}") from None


def saved_model_metadata(path: Path) -> dict:
    """A SavedModel's metadata (:data:`METADATA_FILE`): a JSON object whose text entries
    are text."""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the metadata {METADATA_FILE} is not JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"the metadata {METADATA_FILE} is not a JSON object")
    for key in TEXT_KEYS:
        if not isinstance(metadata.get(key, ""), str):
            raise ValueError(
                f"the metadata's {key!r} must be text, got {json.dumps(metadata[key])[:80]}"
            )
    return metadata


def _class_names(value: object) -> list[str] | None:
    """The class names of a model's metadata, if it has them: a non-empty list of
    distinct strings."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise ValueError(
            f"the metadata's {CLASS_NAMES_KEY!r} must be a non-empty list of strings, got "
            f"{json.dumps(value)[:80]}"
        )
    repeated = sorted(name for name, count in Counter(value).items() if count > 1)
    if repeated:
        raise ValueError(f"the metadata's class names are not distinct: {repeated[:5]} repeated")
    return value


def load_backend(
    kind: str, folder: Path, threads: int | None = None, providers: Sequence[str] = ()
) -> Backend:
    """Load a model version and check that the server can serve it."""
    if kind == "onnxruntime":
        backend = OnnxBackend(folder, threads, providers)
    elif kind == "tf":
        backend = TFBackend(folder)
    else:
        raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
    backend.check_servable()
    return backend
