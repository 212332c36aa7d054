"""Triton's classification extension: an output answered as its top classes.

A requested output with ``"parameters": {"classification": K}`` is answered, instead of
its scores, as a BYTES tensor ``[N, K]`` whose entries read ``"<score>:<index>:<label>"``,
highest score first (``":<label>"`` is left out when the output has no class names).
Only a vector of numeric scores per row (an output ``[N, classes]``) can be classified;
asking for more classes than it has gives all of them, as Triton does.
"""

from __future__ import annotations

import numpy as np

from export.tensor_info import TensorInfo
from serving.errors import ClientError

PARAMETER = "classification"


def class_count(value: object, info: TensorInfo) -> int:
    """The number of classes a request asks of output ``info``, checked before inference."""
    if type(value) is not int or value < 1:
        raise ClientError(
            f"output {info.name!r}: classification must be a positive integer count of "
            f"classes, got {str(value)[:32]}"
        )
    numeric = info.dtype != "bool" and np.dtype(info.dtype).kind in "iuf"
    if len(info.shape) != 2 or info.shape[1] is None or not numeric:
        shape = ["N", *info.shape[1:]]
        raise ClientError(
            f"output {info.name!r} cannot be classified: classification needs a vector of "
            f"numeric scores per row ([N, classes]), it is {info.dtype} {shape}"
        )
    return value


def top_classes(scores: np.ndarray, count: int, labels: list[str] | None) -> np.ndarray:
    """``[N, classes]`` scores -> ``[N, min(count, classes)]`` entries (text), best first
    (ties keep the lower index first)."""
    descending = ~scores if scores.dtype.kind in "iu" else -scores  # ~ cannot overflow
    order = np.argsort(descending, axis=1, kind="stable")[:, :count]
    text = "{:f}:{}" if scores.dtype.kind == "f" else "{}:{}"
    entries = np.empty(order.shape, dtype=object)
    for (row, column), index in np.ndenumerate(order):
        entry = text.format(scores[row, index], index)
        entries[row, column] = entry if labels is None else f"{entry}:{labels[index]}"
    return entries
