"""onnxruntime sessions as the exporters, benchmarks and server open them (no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from export.tensor_info import TensorInfo

CPU = "CPUExecutionProvider"
# onnxruntime's tensor type names -> numpy dtype names
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def onnx_session(
    path: str | Path, threads: int | None = None, providers: Sequence[str] = (CPU,)
) -> ort.InferenceSession:
    """An onnxruntime session on ``providers`` (``threads`` intra-op threads, default: all)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=list(providers))


def tensor_infos(values) -> tuple[TensorInfo, ...]:
    """A session's ``get_inputs()`` or ``get_outputs()`` as :class:`TensorInfo` (named axes
    and unknown sizes become ``None``).

    Raises:
        ValueError: a tensor type numpy cannot hold (strings, sequences, maps).
    """
    infos = []
    for value in values:
        if value.type not in ORT_TYPES:
            raise ValueError(f"tensor {value.name!r} has type {value.type}, which is not served")
        shape = tuple(size if isinstance(size, int) and size >= 0 else None for size in value.shape)
        infos.append(TensorInfo(value.name, shape, ORT_TYPES[value.type]))
    return tuple(infos)
