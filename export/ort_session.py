"""onnxruntime sessions as the exporters, benchmarks and server open them (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session (``threads`` intra-op threads, default: all cores)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
