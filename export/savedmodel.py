"""TensorFlow SavedModel export with a ``serving_default`` signature for TF Serving.

Signature: input ``image`` float32 ``[N, H, W, C]`` (pixels in [0, 255]); outputs
``probabilities`` float32 ``[N, classes]`` and ``class_index`` int64 ``[N]``. The graph
keeps TF's ``RFFT2D``/``IRFFT2D`` ops. Model metadata goes to ``assets.extra/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

INPUT_NAME = "image"
METADATA_FILE = "assets.extra/cfconv.json"


def class_probabilities(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """The model's output as ``[N, classes]`` (a sigmoid head becomes ``[1-p, p]``)."""
    probabilities = model(images, training=False)
    if probabilities.shape[-1] == 1:
        probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
    return probabilities


def write_savedmodel(model: keras.Model, folder: Path, metadata: dict) -> None:
    """Write a frozen classifier as a SavedModel into ``folder`` (a version folder)."""
    height, width, channels = (int(size) for size in model.inputs[0].shape[1:])
    spec = tf.TensorSpec([None, height, width, channels], tf.float32, name=INPUT_NAME)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = class_probabilities(model, image)
        return {
            "probabilities": probabilities,
            "class_index": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    archive.write_out(str(folder), verbose=False)
    extra = Path(folder) / METADATA_FILE
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text(json.dumps(metadata, indent=2) + "\n")
