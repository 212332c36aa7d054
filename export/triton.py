"""A Triton-style model repository entry: ``<repo>/<name>/config.pbtxt`` + ``labels.txt``.

The versions themselves (``<repo>/<name>/<version>/model.onnx``) are written by the
ONNX exporter; our server reads the same layout.
"""

from __future__ import annotations

from pathlib import Path

from export.atomic import write_text_atomically

CONFIG_FILE, LABELS_FILE = "config.pbtxt", "labels.txt"


def triton_config(
    name: str, input_size: tuple[int, int, int], classes: int, max_batch_size: int = 64
) -> str:
    """The ``config.pbtxt`` text for an onnxruntime classifier with dynamic batching."""
    height, width, channels = input_size
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "image" data_type: TYPE_FP32 dims: [ {height}, {width}, {channels} ] }}
]
output [
  {{ name: "probabilities" data_type: TYPE_FP32 dims: [ {classes} ]
     label_filename: "{LABELS_FILE}" }},
  {{ name: "class_index" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
dynamic_batching {{ }}
"""


def write_repository_entry(
    model_dir: Path, name: str, input_size: tuple[int, int, int], class_names: list[str]
) -> None:
    """Write (or replace) the model-level files of a repository entry."""
    write_text_atomically(
        Path(model_dir) / CONFIG_FILE, triton_config(name, input_size, len(class_names))
    )
    write_text_atomically(Path(model_dir) / LABELS_FILE, "\n".join(class_names) + "\n")
