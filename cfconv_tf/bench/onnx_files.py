"""``cfconv bench onnx``: exported ONNX models timed side by side in one process.

For comparing exports of one model (lowerings, opsets, the exporter before and after a
change): every file gets the same random inputs, read from its own input signature, and
the files take turns call by call, so the machine's noise falls on all of them alike.
Each row also says how far the file's outputs are from the first file's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cfconv_tf.bench.timing import median, time_calls
from export.ort_session import onnx_session

NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def _signature(session: ort.InferenceSession) -> list[tuple[str, tuple, str]]:
    return [(value.name, tuple(value.shape[1:]), value.type) for value in session.get_inputs()]


def _inputs(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict:
    """Random inputs: pixels in [0, 255] for images ``[N, H, W, C]``, N(0, 1) otherwise."""
    arrays = {}
    for value in session.get_inputs():
        if value.type not in NUMPY_TYPES or not all(isinstance(s, int) for s in value.shape[1:]):
            raise ValueError(f"input {value.name!r} ({value.type} {value.shape}) is not timed here")
        shape = (batch, *value.shape[1:])
        data = rng.uniform(0, 255, shape) if len(shape) == 4 else rng.standard_normal(shape)
        arrays[value.name] = data.astype(NUMPY_TYPES[value.type])
    return arrays


def _outputs(session: ort.InferenceSession, inputs: dict) -> dict[str, np.ndarray]:
    names = [value.name for value in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _largest_difference(outputs: dict, reference: dict) -> float | None:
    """Largest absolute difference over the outputs both files have (None: none shared)."""
    shared = sorted(set(outputs) & set(reference))
    if not shared:
        return None
    return max(
        float(np.abs(outputs[name].astype(np.float64) - reference[name]).max(initial=0.0))
        for name in shared
    )


def run_onnx_files(
    files: dict[str, Path],
    batch_sizes=(1, 32),
    repeats: int = 7,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """One row per (file, batch): median time, ratio and output difference to the first.

    Raises:
        ValueError: the files take different inputs, or inputs that cannot be made up.
    """
    missing = [str(path) for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"no ONNX file at {', '.join(missing)}")
    sessions = {label: onnx_session(path) for label, path in files.items()}
    signatures = {label: _signature(session) for label, session in sessions.items()}
    first = next(iter(sessions))
    if any(signature != signatures[first] for signature in signatures.values()):
        raise ValueError(f"the files take different inputs: {signatures}")
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        progress(f"onnx files, batch {batch}")
        inputs = _inputs(sessions[first], batch, rng)
        outputs = {label: _outputs(session, inputs) for label, session in sessions.items()}
        durations: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(repeats):
            for label, session in sessions.items():
                call = lambda s=session, x=inputs: s.run(None, x)  # noqa: E731
                durations[label].extend(time_calls(call, repeats=1, warmup=0))
        baseline = median(durations[first])
        for label, runs in durations.items():
            seconds = median(runs)
            rows.append(
                {
                    "model": label,
                    "file": str(files[label]),
                    "batch": batch,
                    "status": "ok",
                    "runs_ms": [run * 1e3 for run in runs],
                    "median_ms": seconds * 1e3,
                    "images_per_s": batch / seconds,
                    "ratio_to_first": seconds / baseline,
                    "max_difference_to_first": _largest_difference(outputs[label], outputs[first]),
                }
            )
    return rows
