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
from serving.errors import ClientError
from serving.images import image_size
from serving.tensors import KSERVE_NAMES

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

    def check_servable(self, folder: Path) -> None:
        """Refuse (at load) a model the server cannot batch or encode.

        Raises:
            ValueError: a tensor without a free batch axis, or of a type the protocols
                do not carry.
        """
        for info in (*self.inputs, *self.outputs):
            if info.dtype not in KSERVE_NAMES:
                raise ValueError(
                    f"{folder}: tensor {info.name!r} has type {info.dtype}, not served"
                )
            if not info.shape or info.shape[0] is not None:
                raise ValueError(
                    f"{folder}: tensor {info.name!r} of shape {list(info.shape)} has no free "
                    f"batch axis; the server batches requests along the first axis"
                )

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
        self.class_names = _class_names(props.get(CLASS_NAMES_KEY))
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
    """Load a model version and check that the server can serve it."""
    if kind == "onnxruntime":
        backend = OnnxBackend(folder, threads, providers)
    elif kind == "tf":
        backend = TFBackend(folder)
    else:
        raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
    backend.check_servable(Path(folder))
    return backend
