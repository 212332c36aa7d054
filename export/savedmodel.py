"""TensorFlow SavedModel export with a ``serving_default`` signature for TF Serving.

The signature is the model's own (:mod:`export.signature`): its inputs and outputs by
name, plus ``probabilities`` and ``class_index`` for a classifier. The graph keeps
TF's ``RFFT2D``/``IRFFT2D`` ops. Model metadata goes to ``assets.extra/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

from export.names import METADATA_FILE, SIGNATURE_NAME
from export.signature import Signature, serving_function


def write_savedmodel(
    model: keras.Model, signature: Signature, folder: Path, metadata: dict
) -> None:
    """Write ``model`` as a SavedModel into ``folder`` (a version folder)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE_NAME, serving_function(model, signature), input_signature=signature.input_specs
    )
    archive.write_out(str(folder), verbose=False)
    extra = Path(folder) / METADATA_FILE
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text(json.dumps(metadata, indent=2) + "\n")
