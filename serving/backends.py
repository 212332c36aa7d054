"""Inference backends over exported models: onnxruntime (default) and TF SavedModel.

Both serve image classifiers as exported by ``cfconv export``: one input ``[N, H, W, C]``
of float32 pixels (its name read from the model) and the outputs ``probabilities``
``[N, classes]`` float32 and ``class_index`` ``[N]`` int64, with the class names the
exporter stored with the model. Anything else is refused at load with a message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.names import (
    CLASS_INDEX,
    CLASS_NAMES_KEY,
    METADATA_FILE,
    ONNX_FILE,
    PROBABILITIES,
    SAVEDMODEL_FILE,
)

BACKENDS = ("onnxruntime", "tf")
MODEL_FILES = {"onnxruntime": ONNX_FILE, "tf": SAVEDMODEL_FILE}
OUTPUTS = (PROBABILITIES, CLASS_INDEX)


def _image_classifier(
    folder: Path, inputs: dict[str, list], outputs: set[str], class_names: list | None
) -> tuple[str, tuple[int, int, int]]:
    """``(input name, (H, W, C))`` of an exported image classifier, or a clear error."""
    if len(inputs) != 1 or not set(OUTPUTS) <= outputs or not class_names:
        raise ValueError(
            f"{folder}: the server serves image classifiers (one input [N, H, W, C], outputs "
            f"{list(OUTPUTS)} and class names); this model has inputs {sorted(inputs)} and "
            f"outputs {sorted(outputs)}"
        )
    ((name, shape),) = inputs.items()
    if len(shape) != 4 or not all(isinstance(size, int) and size > 0 for size in shape[1:]):
        raise ValueError(f"{folder}: input {name!r} has shape {shape}, not [N, H, W, C]")
    return name, tuple(int(size) for size in shape[1:])


class OnnxBackend:
    """An onnxruntime CPU session with its intra-op threads set for this machine."""

    platform = "onnxruntime_onnx"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        from export.ort_session import onnx_session

        self.session = onnx_session(Path(folder) / ONNX_FILE, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.class_names = list(json.loads(props.get(CLASS_NAMES_KEY, "null")) or [])
        self.input_name, self.input_size = _image_classifier(
            Path(folder),
            {value.name: value.shape for value in self.session.get_inputs()},
            {value.name for value in self.session.get_outputs()},
            self.class_names,
        )

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        probabilities, class_index = self.session.run(list(OUTPUTS), {self.input_name: images})
        return {PROBABILITIES: probabilities, CLASS_INDEX: class_index}


class TFBackend:
    """The ``serving_default`` signature of a SavedModel."""

    platform = "tensorflow_savedmodel"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        metadata = json.loads((Path(folder) / METADATA_FILE).read_text())
        self.class_names = list(metadata.get(CLASS_NAMES_KEY) or [])
        inputs = {
            name: spec.shape.as_list()
            for name, spec in self.signature.structured_input_signature[1].items()
        }
        self.input_name, self.input_size = _image_classifier(
            Path(folder), inputs, set(self.signature.structured_outputs), self.class_names
        )

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.signature(**{self.input_name: self._tf.constant(images)})
        return {name: outputs[name].numpy() for name in OUTPUTS}


def load_backend(kind: str, folder: Path, threads: int | None = None):
    if kind == "onnxruntime":
        return OnnxBackend(folder, threads)
    if kind == "tf":
        return TFBackend(folder, threads)
    raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
