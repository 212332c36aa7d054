"""Runtimes that compute a classifier's probabilities, and how far apart they are.

Each runner maps ``[N, H, W, C]`` float32 pixels to ``[N, classes]`` probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import tensorflow as tf

from export.savedmodel import INPUT_NAME, class_probabilities

Runner = Callable[[np.ndarray], np.ndarray]
TOLERANCE = 1e-4


def keras_runner(model: keras.Model) -> Runner:
    """A Keras model in inference mode (``training=False``: no sampling, no writes),
    compiled once with ``tf.function`` as a deployed Keras model would be."""
    height, width, channels = (int(size) for size in model.inputs[0].shape[1:])
    spec = tf.TensorSpec([None, height, width, channels], tf.float32)
    compiled = tf.function(
        lambda images: class_probabilities(model, images), input_signature=[spec]
    )
    return lambda images: compiled(tf.constant(images)).numpy()


def savedmodel_runner(folder: str | Path) -> Runner:
    """The ``serving_default`` signature of a SavedModel, called by its input name."""
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return lambda images: signature(**{INPUT_NAME: tf.constant(images)})["probabilities"].numpy()


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session (``threads`` intra-op threads, default: all cores)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: str | Path) -> Runner:
    session = onnx_session(path)
    return lambda images: session.run(["probabilities"], {INPUT_NAME: images})[0]


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """``max |candidate - reference| / max |reference|``."""
    scale = max(float(np.abs(reference).max()), np.finfo(np.float32).tiny)
    return float(np.abs(candidate - reference).max()) / scale


def compare(
    reference: Runner, candidates: dict[str, Runner], images: np.ndarray
) -> dict[str, float]:
    """Relative error of each candidate against the reference on the same images."""
    expected = reference(images)
    return {name: relative_error(run(images), expected) for name, run in candidates.items()}
