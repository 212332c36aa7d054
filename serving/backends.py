"""Inference backends over exported models: onnxruntime (default) and TF SavedModel.

Both take ``image`` float32 ``[N, H, W, C]`` pixels and return ``probabilities``
``[N, classes]`` float32 and ``class_index`` ``[N]`` int64, and read the class names
and input size the exporter stored with the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.onnx_model import ONNX_FILE
from export.savedmodel import INPUT_NAME, METADATA_FILE

BACKENDS = ("onnxruntime", "tf")
MODEL_FILES = {"onnxruntime": ONNX_FILE, "tf": "saved_model.pb"}


class OnnxBackend:
    """An onnxruntime CPU session with its intra-op threads set for this machine."""

    platform = "onnxruntime_onnx"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        from export.parity import onnx_session

        self.session = onnx_session(Path(folder) / ONNX_FILE, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.class_names = list(json.loads(props["class_names"]))
        self.input_size = tuple(json.loads(props["input_size"]))

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        probabilities, class_index = self.session.run(
            ["probabilities", "class_index"], {INPUT_NAME: images}
        )
        return {"probabilities": probabilities, "class_index": class_index}


class TFBackend:
    """The ``serving_default`` signature of a SavedModel."""

    platform = "tensorflow_savedmodel"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        self._tf = tf
        self.signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
        metadata = json.loads((Path(folder) / METADATA_FILE).read_text())
        self.class_names = list(metadata["class_names"])
        self.input_size = tuple(metadata["input_size"])

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.signature(**{INPUT_NAME: self._tf.constant(images)})
        return {name: value.numpy() for name, value in outputs.items()}


def load_backend(kind: str, folder: Path, threads: int | None = None):
    if kind == "onnxruntime":
        return OnnxBackend(folder, threads)
    if kind == "tf":
        return TFBackend(folder, threads)
    raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
