"""``cfconv bench onnx``: exported ONNX models timed side by side in one process.

For comparing exports of one model (lowerings, opsets, the exporter before and after a
change): every file gets the same random inputs, read from its own input signature, and
the files take turns call by call, so the machine's noise falls on all of them alike.
Each row also gives the relative error of the file's outputs against the first file's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from cfconv_tf.bench.timing import median, time_interleaved
from export.ort_session import onnx_session, tensor_infos
from export.parity import Arrays, random_inputs, relative_error
from export.self_check import load_onnx


def _largest_error(outputs: Arrays, reference: Arrays) -> float | None:
    """Relative error over the outputs both files have (``None``: they share none)."""
    shared = sorted(set(outputs) & set(reference))
    if not shared:
        return None
    return relative_error(
        {name: outputs[name] for name in shared}, {name: reference[name] for name in shared}
    )


def run_onnx_files(
    files: dict[str, Path],
    batch_sizes=(1, 32),
    repeats: int = 7,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """One row per (file, batch): median time, ratio and relative error to the first.

    Raises:
        ValueError: the files take different inputs, or inputs that cannot be made up.
    """
    missing = [str(path) for path in files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"no ONNX file at {', '.join(missing)}")
    runners = {label: load_onnx(path).run for label, path in files.items()}
    signatures = {
        label: tensor_infos(onnx_session(path).get_inputs()) for label, path in files.items()
    }
    first = next(iter(files))
    if any(signature != signatures[first] for signature in signatures.values()):
        raise ValueError(f"the files take different inputs: {signatures}")
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        progress(f"onnx files, batch {batch}")
        inputs = random_inputs(signatures[first], batch, rng)
        outputs = {label: run(inputs) for label, run in runners.items()}  # also a warm-up
        durations = time_interleaved(
            {label: partial(run, inputs) for label, run in runners.items()}, repeats
        )
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
                    "relative_error_to_first": _largest_error(outputs[label], outputs[first]),
                }
            )
    return rows
