"""A named tensor's shape and dtype, as exports and the server describe inputs and outputs.

Imports nothing heavy: the onnxruntime server uses it without TensorFlow.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One named tensor; ``shape`` has ``None`` for the batch (and any other free) axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
