"""Written exports loaded by their runtimes and checked against the Keras model.

An export reports success only after this: the file is loaded by the runtime that will
serve it (onnxruntime for ONNX, ``tf.saved_model.load`` for a SavedModel, Keras for a
frozen ``.keras``), its inputs are compared with the model's signature, and it is run
on the model's sample inputs against the Keras model's outputs on them
(:class:`export.parity.ReferenceOutputs`, computed once for all the exports of a
model). ``cfconv verify`` loads exports the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from export.names import METADATA_FILE, SIGNATURE_NAME
from export.ort_session import onnx_session, tensor_infos
from export.parity import ReferenceOutputs, Runner, keras_runner
from export.signature import input_infos, signature_of
from export.tensor_info import TensorInfo


@dataclasses.dataclass(frozen=True)
class LoadedExport:
    """An export as its runtime loaded it: what it is, what it takes, how to run it."""

    what: str
    inputs: tuple[TensorInfo, ...]
    run: Runner
    metadata: dict = dataclasses.field(default_factory=dict)  # how it was exported


def load_onnx(path: str | Path) -> LoadedExport:
    """An ONNX file in onnxruntime, or a ``ValueError`` saying why it cannot load."""
    what = f"the ONNX file {path}"
    try:
        session = onnx_session(path)
        inputs = tensor_infos(session.get_inputs())
    except Exception as error:  # onnxruntime's refusals come in several types
        raise ValueError(f"onnxruntime cannot load {what}: {error}") from error
    names = [output.name for output in session.get_outputs()]

    def run(arrays):
        return dict(zip(names, session.run(names, arrays), strict=True))

    return LoadedExport(what, inputs, run, dict(session.get_modelmeta().custom_metadata_map))


def load_savedmodel(folder: str | Path) -> LoadedExport:
    """A SavedModel's serving signature, or a ``ValueError`` saying why it cannot load."""
    what = f"the SavedModel {folder}"
    try:
        serve = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]
    except Exception as error:  # missing folder, corrupt protobuf, no such signature
        raise ValueError(f"TensorFlow cannot load {what}: {error}") from error
    inputs = tuple(
        TensorInfo(name, tuple(spec.shape), spec.dtype.name)
        for name, spec in serve.structured_input_signature[1].items()
    )

    def run(arrays):
        outputs = serve(**{name: tf.constant(value) for name, value in arrays.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    metadata_file = Path(folder) / METADATA_FILE
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    return LoadedExport(what, inputs, run, metadata)


def load_keras(path: str | Path) -> LoadedExport:
    """A frozen ``.keras`` model, loaded back."""
    what = f"the saved model {path}"
    try:
        loaded = keras.saving.load_model(path)
    except Exception as error:  # deserialization errors of any kind
        raise ValueError(f"Keras cannot load {what} back: {error}") from error
    return LoadedExport(what, input_infos(loaded), keras_runner(loaded, signature_of(loaded)))


def described(infos: Sequence[TensorInfo]) -> list[str]:
    """``name [shape] dtype`` of each input, sorted: how messages show inputs."""
    return sorted(f"{info.name} {list(info.shape)} {info.dtype}" for info in infos)


def same_inputs(found: Sequence[TensorInfo], expected: Sequence[TensorInfo]) -> bool:
    """Whether two input lists name the same tensors with the same shapes and dtypes."""
    return described(found) == described(expected)


def check_export(export: LoadedExport, reference: ReferenceOutputs) -> float:
    """Check that ``export`` takes the reference's inputs and computes what the reference
    model does; returns its relative error.

    Raises:
        ValueError: other inputs, a failure to run, or an error above the bound.
    """
    expected = reference.signature.inputs
    if not same_inputs(export.inputs, expected):
        raise ValueError(
            f"{export.what} takes the inputs {described(export.inputs)}, but the model "
            f"takes {described(expected)}"
        )
    return reference.check(export.run, export.what)
