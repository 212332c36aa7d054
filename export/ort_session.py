"""onnxruntime sessions as the exporters, benchmarks and server open them (no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from export.names import NATIVE_DOMAIN, NATIVE_OP, NATIVE_OPSET
from export.native import MISSING, library_path
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


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options with ``threads`` intra-op threads (default: all) and the native
    lowering's custom op registered where its library is built."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    native = library_path()
    if native is not None:
        options.register_custom_ops_library(str(native))
    return options


def onnx_session(
    model: str | Path | bytes,
    threads: int | None = None,
    providers: Sequence[str] = (CPU,),
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session of ``model`` (a file, or a serialized model) on ``providers``,
    with ``options`` (default: :func:`session_options` of ``threads``).

    Raises:
        ValueError: the model uses the native lowering and its library is not built here,
            or the file was written for another version of the native op.
    """
    options = options or session_options(threads)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own exception types
        what = "the model" if isinstance(model, bytes) else str(model)
        if library_path() is None and NATIVE_DOMAIN in str(error):
            raise ValueError(f"{what} uses the native lowering, but {MISSING}") from error
        if f"{NATIVE_DOMAIN}:{NATIVE_OP}(" in str(error):  # the op, not at the file's version
            raise ValueError(
                f"{what} was exported for another version of the native op than this "
                f"installation's ({NATIVE_DOMAIN} opset {NATIVE_OPSET}, which reads the kernel "
                "as [W/2+1, H, Cin, Cout]): export it again with `cfconv export --lowering "
                "native`"
            ) from error
        raise


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
