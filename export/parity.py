"""Runtimes that compute an exported model's outputs, and how far apart they are.

Each runner maps the model's inputs by name (numpy arrays) to its outputs by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

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


FREE_SIZE = 8  # the size probes give an axis the model leaves free


def random_inputs(
    inputs: Sequence[TensorInfo], batch: int, rng: np.random.Generator, pixels: bool = True
) -> Arrays:
    """Inputs to probe a model with.

    Images (rank 4): pixels in [0, 255] (``pixels``) or in [0, 1], as float or integer
    values; other float inputs N(0, 1); other integer and boolean inputs 0 or 1 (valid
    indices for any embedding or lookup). Free axes get :data:`FREE_SIZE`.
    """
    arrays = {}
    for info in inputs:
        shape = (batch, *(size or FREE_SIZE for size in info.shape[1:]))
        image, integer = len(shape) == 4, "float" not in info.dtype  # bfloat16: no numpy dtype
        if image and integer:
            values = rng.integers(0, 256 if pixels else 2, shape)
        elif image:
            values = rng.uniform(0, 255 if pixels else 1, shape)
        elif integer:
            values = rng.integers(0, 2, shape)
        else:
            values = rng.standard_normal(shape)
        arrays[info.name] = values.astype(info.dtype)
    return arrays


def relative_error(candidate: Arrays, reference: Arrays) -> float:
    """The largest ``max |candidate - reference| / max |reference|`` over the float outputs;
    ``inf`` where a candidate's values are not finite and the reference's are.

    Integer outputs (``class_index``) are derived from float ones and not compared
    (an argmax may flip between runtimes on a near tie); their shapes are.

    Raises:
        ValueError: the candidate lacks an output of the reference, or has another shape.
    """
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ValueError(f"outputs {missing} are missing (has {sorted(candidate)})")
    errors = [0.0]
    for name, expected in reference.items():
        got = np.asarray(candidate[name])
        if got.shape != expected.shape:
            raise ValueError(f"output {name!r} has shape {got.shape}, expected {expected.shape}")
        if not np.issubdtype(expected.dtype, np.floating):
            continue
        expected, got = expected.astype(np.float64), got.astype(np.float64)
        if not np.array_equal(np.isfinite(got), np.isfinite(expected)):
            return float("inf")
        finite = np.isfinite(expected)
        scale = max(float(np.abs(expected[finite]).max(initial=0.0)), np.finfo(np.float32).tiny)
        difference = np.abs(got[finite] - expected[finite]).max(initial=0.0)
        errors.append(float(difference) / scale)
    return max(errors)


# the probes an export is checked on: (batch, pixels in [0, 255] or else in [0, 1])
PROBES = ((1, True), (3, False))


@dataclass(frozen=True)
class ReferenceOutputs:
    """What a Keras model computes on each of :data:`PROBES`, computed once, so that
    every candidate checked against the model (a frozen model, each written export) is
    run on the same inputs without running the model again."""

    signature: Signature
    tolerance: float
    probes: tuple[tuple[Arrays, Arrays], ...]  # (inputs, the model's outputs) per probe

    def check(self, candidate: Runner, what: str) -> float:
        """Check that ``candidate`` computes what the model does; returns the largest
        relative error over the probes.

        Raises:
            ValueError: the candidate fails on the inputs, lacks an output, or is
                farther than the tolerance; the message names ``what``.
        """
        worst = max(
            _errors(expected, {what: candidate}, inputs)[what] for inputs, expected in self.probes
        )
        if not worst <= self.tolerance:
            raise ValueError(
                f"{what} does not compute what the Keras model does: relative error "
                f"{worst:.2e}, above the bound {self.tolerance:.0e}"
            )
        return worst


def reference_outputs(reference: keras.Model, signature: Signature) -> ReferenceOutputs:
    """``reference`` (in inference mode) run on each of :data:`PROBES`
    (:func:`random_inputs`, the same every time), held to :func:`tolerance_for` it.

    Raises:
        ValueError: the model fails on the inputs.
    """
    run = keras_runner(reference, signature)
    probes = []
    for batch, pixels in PROBES:
        inputs = random_inputs(signature.inputs, batch, np.random.default_rng(batch), pixels)
        probes.append((inputs, _expected(run, inputs)))
    return ReferenceOutputs(signature, tolerance_for(reference), tuple(probes))


def check_parity(
    reference: keras.Model, signature: Signature, candidate: Runner, what: str
) -> float:
    """Check that ``candidate`` computes what ``reference`` (in inference mode) does, on
    each of :data:`PROBES`; returns the largest relative error.

    Raises:
        ValueError: the reference or the candidate fails on the inputs, the candidate
            lacks an output, or is farther than :func:`tolerance_for` the reference; the
            message names ``what``.
    """
    return reference_outputs(reference, signature).check(candidate, what)


def compare(reference: Runner, candidates: dict[str, Runner], inputs: Arrays) -> dict[str, float]:
    """Relative error of each candidate against the reference on the same inputs.

    Raises:
        ValueError: the reference or a candidate (named) fails on the inputs, or a
            candidate lacks an output.
    """
    return _errors(_expected(reference, inputs), candidates, inputs)


def _expected(reference: Runner, inputs: Arrays) -> Arrays:
    """The reference's outputs, or a ``ValueError`` saying that the Keras model fails."""
    try:
        return reference(inputs)
    except Exception as error:  # TensorFlow's errors come in many types
        raise ValueError(
            f"the Keras model fails on the comparison inputs: {type(error).__name__}: {error}"
        ) from error


def _errors(expected: Arrays, candidates: dict[str, Runner], inputs: Arrays) -> dict[str, float]:
    """Relative error of each candidate's outputs on ``inputs`` against ``expected``.

    Raises:
        ValueError: a candidate (named) fails on the inputs, or lacks an output.
    """
    errors = {}
    for name, run in candidates.items():
        try:
            errors[name] = relative_error(run(inputs), expected)
        except Exception as error:  # any runtime's failure: one clear message
            raise ValueError(
                f"{name} fails on the comparison inputs: {type(error).__name__}: {error}"
            ) from error
    return errors
