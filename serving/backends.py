"""Inference backends over exported models: onnxruntime (default) and TF SavedModel.

A backend reads a model's inputs and outputs from the model itself (the onnxruntime
session, the SavedModel's ``serving_default`` signature) and the class names the
exporter stored with it; it serves whatever the model takes and returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.names import (
    CLASS_INDEX,
    CLASS_NAMES_KEY,
    METADATA_FILE,
    ONNX_FILE,
    PROBABILITIES,
    SAVEDMODEL_FILE,
    SIGNATURE_NAME,
)
from export.tensor_info import TensorInfo
from serving.images import image_size

BACKENDS = ("onnxruntime", "tf")
MODEL_FILES = {"onnxruntime": ONNX_FILE, "tf": SAVEDMODEL_FILE}
Arrays = dict[str, np.ndarray]


class Backend:
    """What every backend has: ``inputs``, ``outputs``, ``class_names``, ``predict``."""

    platform = ""
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    class_names: list[str] | None = None

    def predict(self, inputs: Arrays) -> Arrays:
        raise NotImplementedError

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
        self.providers = tuple(self.session.get_providers())
        self.inputs = tensor_infos(self.session.get_inputs())
        self.outputs = tensor_infos(self.session.get_outputs())
        props = self.session.get_modelmeta().custom_metadata_map
        self.class_names = _class_names(props.get(CLASS_NAMES_KEY))
        self._output_names = [info.name for info in self.outputs]

    def predict(self, inputs: Arrays) -> Arrays:
        results = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))


class TFBackend(Backend):
    """The ``serving_default`` signature of a SavedModel."""

    platform = "tensorflow_savedmodel"

    def __init__(
        self, folder: Path, threads: int | None = None, providers: Sequence[str] = ()
    ) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]
        self.providers = ()
        specs = self.signature.structured_input_signature[1]
        self.inputs = tuple(_tf_info(name, spec) for name, spec in sorted(specs.items()))
        outputs = self.signature.structured_outputs
        self.outputs = tuple(_tf_info(name, spec) for name, spec in sorted(outputs.items()))
        metadata = Path(folder) / METADATA_FILE
        if metadata.is_file():
            self.class_names = _class_names(json.loads(metadata.read_text()).get(CLASS_NAMES_KEY))

    def predict(self, inputs: Arrays) -> Arrays:
        outputs = self.signature(
            **{name: self._tf.constant(value) for name, value in inputs.items()}
        )
        return {name: value.numpy() for name, value in outputs.items()}


def _tf_info(name: str, spec) -> TensorInfo:
    return TensorInfo(name, tuple(spec.shape.as_list()), spec.dtype.name)


def _class_names(value) -> list[str] | None:
    """Class names from the exporter's metadata (a JSON list, or a list), if any."""
    if isinstance(value, str):
        value = json.loads(value)
    return [str(name) for name in value] if value else None


def load_backend(
    kind: str, folder: Path, threads: int | None = None, providers: Sequence[str] = ()
) -> Backend:
    if kind == "onnxruntime":
        return OnnxBackend(folder, threads, providers)
    if kind == "tf":
        return TFBackend(folder, threads)
    raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
