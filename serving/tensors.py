"""Request values -> typed numpy arrays for a model's inputs, checked before they are used.

JSON numbers are checked against the target type (no silent truncation of ``0.5`` into an
integer, no wrap-around of ``300`` into ``uint8``, no ``inf`` from a float16 overflow, no
``true`` read as 1); shapes are checked with Python integers before anything is
allocated, so a shape whose element count overflows is a 400, not a crash.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import orjson

from export.tensor_info import TensorInfo
from serving.errors import ClientError

# KServe v2 / Triton datatype names -> numpy dtype names (BYTES is not served)
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
KSERVE_NAMES = {numpy: kserve for kserve, numpy in DATATYPES.items()}
MAX_RANK = 16
MAX_ELEMENTS = 2**40  # of a shape with its zero sizes counted as one: numpy's own bound


def parse_json(body: bytes) -> object:
    """A request body as JSON, or a clear error."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ClientError(f"malformed JSON: {error}") from error


def datatype(name: object) -> np.dtype:
    """The numpy dtype of a KServe datatype name, or a clear error."""
    if not isinstance(name, str) or name not in DATATYPES:
        raise ClientError(
            f"unsupported datatype {str(name)[:32]!r}; use one of {sorted(DATATYPES)}"
        )
    return np.dtype(DATATYPES[name])


def check_shape(shape: object, what: str) -> tuple[int, ...]:
    """A request's shape: a list of at most ``MAX_RANK`` integers >= 0."""
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(size) is int and size >= 0 for size in shape)
    ):
        raise ClientError(
            f"{what}: shape must be a list of at most {MAX_RANK} non-negative integers, "
            f"got {str(shape)[:64]}"
        )
    if math.prod(max(size, 1) for size in shape) > MAX_ELEMENTS:
        raise ClientError(f"{what}: shape {str(shape)[:64]} is too large")
    return tuple(shape)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _leaves(values: list, depth: int) -> Iterable:
    """The values of nested lists ``depth`` deep (rectangular, as numpy read them)."""
    for _ in range(depth - 1):
        values = chain.from_iterable(values)
    return values


def _booleans(what: str, target: np.dtype) -> ClientError:
    return ClientError(
        f"{what}: expected {KSERVE_NAMES[target.name]} values, got booleans "
        f"(true and false are values of BOOL inputs only)"
    )


def to_array(values: object, dtype: np.dtype, what: str) -> np.ndarray:
    """Nested JSON lists of numbers -> an array of ``dtype``, refusing what does not fit.

    Integers must be JSON integers within the type's range; floats must be finite in
    the target type; booleans only for a ``bool`` target, and nothing else there (numpy
    reads ``[true, 0.5]`` as ``[1.0, 0.5]``, so numbers are searched for booleans).
    """
    try:
        raw = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise ClientError(f"{what}: not a rectangular array of numbers") from error
    target = np.dtype(dtype)
    if (
        target.kind != "b"
        and raw.ndim
        and raw.dtype.kind in "iuf"
        and bool in map(type, _leaves(values, raw.ndim))
    ):
        raise _booleans(what, target)
    return convert(raw, target, what)


def convert(raw: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """An array of any numeric type -> ``dtype``, refusing values that do not fit."""
    target = np.dtype(dtype)
    kind = raw.dtype.kind
    if raw.size == 0:  # nothing to check (an empty JSON list reads as float64)
        return raw.astype(target)
    if target.kind == "b":
        if kind != "b":
            raise ClientError(f"{what}: expected BOOL values (true or false)")
        if raw.view(np.uint8).max() > 1:  # binary data: one byte per value
            raise ClientError(f"{what}: BOOL values must be bytes 0 or 1")
        return raw
    if kind == "b":
        raise _booleans(what, target)
    if kind not in "iuf":
        raise ClientError(
            f"{what}: expected numbers of type {KSERVE_NAMES[target.name]}"
            + (" (a value is out of range)" if kind == "O" else "")
        )
    if target.kind in "iu":
        if kind == "f":
            raise ClientError(f"{what}: {KSERVE_NAMES[target.name]} values must be integers")
        limits = np.iinfo(target)
        if int(raw.min()) < limits.min or int(raw.max()) > limits.max:
            raise ClientError(
                f"{what}: values must lie in [{limits.min}, {limits.max}] for "
                f"{KSERVE_NAMES[target.name]}"
            )
        return raw.astype(target)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = raw.astype(target)
    if not np.isfinite(converted).all():
        raise ClientError(f"{what}: values must be finite numbers within {target.name}'s range")
    return converted


def fit_to(array: np.ndarray, info: TensorInfo, what: str) -> np.ndarray:
    """Check ``array`` against a model input (rank, fixed sizes, a batch of >= 1) and give it
    the input's dtype."""
    expected = [-1 if size is None else size for size in info.shape]
    if array.ndim != len(info.shape) or any(
        size is not None and size != got
        for size, got in zip(info.shape[1:], array.shape[1:], strict=True)
    ):
        raise ClientError(f"{what}: expected shape {expected}, got {list(array.shape)}")
    if array.shape[0] < 1:
        raise ClientError(f"{what}: the batch is empty")
    if 0 in array.shape[1:]:
        raise ClientError(f"{what}: shape {list(array.shape)} has an empty axis")
    return convert(array, np.dtype(info.dtype), what)


def same_batch(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` (a model's inputs), checked to hold one batch size."""
    batches = {len(array) for array in arrays.values()}
    if len(batches) != 1:
        raise ClientError(f"the inputs have different batch sizes: {sorted(batches)}")
    return arrays
