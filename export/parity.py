"""Runtimes that compute an exported model's outputs, and how far apart they are.

Each runner maps the model's inputs by name (numpy arrays) to its outputs by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from export.names import SIGNATURE_NAME
from export.ort_session import onnx_session
from export.signature import Signature, serving_function
from export.tensor_info import TensorInfo

Arrays = dict[str, np.ndarray]
Runner = Callable[[Arrays], Arrays]
TOLERANCE = 1e-4
# one unit in the last place of a half-precision compute dtype: two runtimes that round
# the same float16 graph at different points agree to about this, not to TOLERANCE
HALF_PRECISION_EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def tolerance_for(model: keras.Model) -> float:
    """The parity bound for exports of ``model``: ``TOLERANCE`` when every layer computes
    in float32, else the machine epsilon of its lowest-precision compute dtype."""
    computes = {
        layer.dtype_policy.compute_dtype
        for layer in model._flatten_layers()
        if getattr(layer, "dtype_policy", None) is not None
    }
    return max([TOLERANCE, *(HALF_PRECISION_EPSILON.get(dtype, 0.0) for dtype in computes)])


def keras_runner(model: keras.Model, signature: Signature) -> Runner:
    """A Keras model in inference mode (``training=False``: no sampling, no writes),
    compiled once with ``tf.function`` as a deployed Keras model would be."""
    compiled = tf.function(
        serving_function(model, signature), input_signature=signature.input_specs
    )
    names = [info.name for info in signature.inputs]

    def run(inputs: Arrays) -> Arrays:
        outputs = compiled(*(tf.constant(inputs[name]) for name in names))
        return {name: value.numpy() for name, value in outputs.items()}

    return run


def savedmodel_runner(folder: str | Path) -> Runner:
    """The ``serving_default`` signature of a SavedModel, called by its input names."""
    signature = tf.saved_model.load(str(folder)).signatures[SIGNATURE_NAME]

    def run(inputs: Arrays) -> Arrays:
        outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}

    return run


def onnx_runner(path: str | Path) -> Runner:
    session = onnx_session(path)
    names = [output.name for output in session.get_outputs()]
    return lambda inputs: dict(zip(names, session.run(names, inputs), strict=True))


def random_inputs(inputs: Sequence[TensorInfo], batch: int, rng: np.random.Generator) -> Arrays:
    """Inputs to probe a model with: pixels in [0, 255] for float images, N(0, 1) for
    other float inputs, 0 or 1 for integer and boolean inputs (valid indices for any
    embedding or lookup)."""
    arrays = {}
    for info in inputs:
        shape = (batch, *(size or 1 for size in info.shape[1:]))
        if "float" not in info.dtype:  # ints and bools (bfloat16 is no numpy dtype)
            values = rng.integers(0, 2, shape)
        elif len(shape) == 4:
            values = rng.uniform(0, 255, shape)
        else:
            values = rng.standard_normal(shape)
        arrays[info.name] = values.astype(info.dtype)
    return arrays


def relative_error(candidate: Arrays, reference: Arrays) -> float:
    """The largest ``max |candidate - reference| / max |reference|`` over the float outputs.

    Integer outputs (``class_index``) are derived from float ones and not compared.

    Raises:
        ValueError: the candidate lacks an output of the reference.
    """
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ValueError(f"outputs {missing} are missing (has {sorted(candidate)})")
    errors = [0.0]
    for name, expected in reference.items():
        if not np.issubdtype(expected.dtype, np.floating):
            continue
        expected = expected.astype(np.float64)
        scale = max(float(np.abs(expected).max(initial=0.0)), np.finfo(np.float32).tiny)
        difference = np.abs(candidate[name].astype(np.float64) - expected).max(initial=0.0)
        errors.append(float(difference) / scale)
    return max(errors)


def sample_inputs(signature: Signature, batch: int) -> Arrays:
    """The inputs an export is checked on: :func:`random_inputs`, the same every time."""
    return random_inputs(signature.inputs, batch, np.random.default_rng(batch))


def check_parity(
    reference: keras.Model,
    signature: Signature,
    candidate: Runner,
    what: str,
    batches: Sequence[int] = (1, 3),
) -> float:
    """Check that ``candidate`` computes what ``reference`` (in inference mode) does.

    Both run on :func:`sample_inputs` at each batch size. Returns the largest relative
    error.

    Raises:
        ValueError: the candidate fails on the inputs, lacks an output, or is farther
            than :func:`tolerance_for` the reference; the message starts with ``what``.
    """
    tolerance = tolerance_for(reference)
    expected = keras_runner(reference, signature)
    worst = 0.0
    for batch in batches:
        arrays = sample_inputs(signature, batch)
        try:
            worst = max(worst, relative_error(candidate(arrays), expected(arrays)))
        except Exception as error:  # any runtime's failure: one clear message
            raise ValueError(
                f"{what} does not run on the model's sample inputs (batch {batch}): "
                f"{type(error).__name__}: {error}"
            ) from error
    if not worst <= tolerance:  # NaN fails too
        raise ValueError(
            f"{what} does not compute what the Keras model does: relative error "
            f"{worst:.2e}, above the bound {tolerance:.0e}"
        )
    return worst


def compare(reference: Runner, candidates: dict[str, Runner], inputs: Arrays) -> dict[str, float]:
    """Relative error of each candidate against the reference on the same inputs.

    Raises:
        ValueError: a candidate fails on the inputs or lacks an output (named).
    """
    expected = reference(inputs)
    errors = {}
    for name, run in candidates.items():
        try:
            errors[name] = relative_error(run(inputs), expected)
        except Exception as error:  # any runtime's failure: one clear message
            raise ValueError(f"{name} fails on the comparison inputs: {error}") from error
    return errors
