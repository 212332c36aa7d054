"""A Triton-style model repository entry: ``<repo>/<name>/config.pbtxt`` (+ ``labels.txt``).

The versions themselves (``<repo>/<name>/<version>/model.onnx``) are written by the
ONNX exporter; our server reads the same layout. The config describes the same tensors
as the ONNX graph: the model's inputs and outputs without the batch axis.
"""

from __future__ import annotations

from pathlib import Path

from export.atomic import write_text_atomically
from export.names import LABELS_FILE, PROBABILITIES, TRITON_CONFIG_FILE
from export.signature import Signature, TensorInfo

TRITON_TYPES = {
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}


def _tensor(info: TensorInfo, extra: str = "") -> str:
    """One ``input``/``output`` entry; a scalar per batch item is ``[1]`` reshaped away."""
    dims = [str(-1 if size is None else int(size)) for size in info.shape[1:]]
    reshape = "" if dims else " reshape: { shape: [ ] }"
    shape = ", ".join(dims) or "1"
    kind = TRITON_TYPES[info.dtype]
    return f'  {{ name: "{info.name}" data_type: {kind} dims: [ {shape} ]{reshape}{extra} }}'


def triton_config(name: str, signature: Signature, max_batch_size: int = 64) -> str:
    """The ``config.pbtxt`` text for an onnxruntime model with dynamic batching."""
    labels = f' label_filename: "{LABELS_FILE}"' if signature.class_names else ""
    outputs = [
        _tensor(info, labels if info.name == PROBABILITIES else "") for info in signature.outputs
    ]
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n" + ",\n".join(_tensor(info) for info in signature.inputs) + "\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
        "dynamic_batching { }\n"
    )


def write_repository_entry(model_dir: Path, name: str, signature: Signature) -> None:
    """Write (or replace) the model-level files of a repository entry."""
    write_text_atomically(Path(model_dir) / TRITON_CONFIG_FILE, triton_config(name, signature))
    if signature.class_names:
        write_text_atomically(
            Path(model_dir) / LABELS_FILE, "\n".join(signature.class_names) + "\n"
        )
