"""``cfconv bench train``: time per training step, 3x3 CNN vs CF-Conv at several counts.

At the paper's shape (150x150x3, 6 layers x 32, batch 32) by default: the spatial 3x3
CNN; CF-Conv with 2^12, 2^15, 2^18 sampled positions per layer and step; and the
paper's "naive" CF-Conv that regenerates every kernel entry every step. Smaller
inputs (``--quick``) keep the paper's counts as fractions of the kernel at 150x150.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable

from cfconv_tf.bench.timing import median

PAPER_ENTRIES = 150 * 76 * 32 * 32  # kernel entries of a 32->32 layer at 150x150
PAPER_COUNTS = (2**12, 2**15, 2**18)


def configurations(size: int) -> list[dict]:
    """The benchmark rows: name, variant and samples for an input of ``size``."""
    rows = [{"name": "spatial 3x3", "variant": "spatial", "samples": None}]
    for count in PAPER_COUNTS:
        exponent = count.bit_length() - 1
        samples = count if size == 150 else count / PAPER_ENTRIES
        rows.append({"name": f"cf 2^{exponent}", "variant": "cf", "samples": samples})
    rows.append(
        {
            "name": "cf 2^18, recomputed generators",
            "variant": "cf",
            "samples": rows[-1]["samples"],
            "recompute_generators": True,
        }
    )
    rows.append({"name": "cf naive (all entries)", "variant": "cf", "samples": 1.0})
    return rows


def _limit_memory(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def run_train(
    size: int = 150,
    batch: int = 32,
    repeats: int = 5,
    warmup: int = 2,
    conv_layers: int = 6,
    memory_limit_gb: float = 20.0,
    time_limit_s: float = 1800.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """Measure each configuration in its own subprocess; one row each."""
    rows = []
    for config in configurations(size):
        progress(f"train {config['name']}")
        spec = {
            **config,
            "size": size,
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "conv_layers": conv_layers,
        }
        row = {
            "model": config["name"],
            "conv_layers": conv_layers,
            "samples": config["samples"],
            "batch": batch,
            "input_size": size,
        }
        try:
            done = subprocess.run(
                [sys.executable, "-m", "cfconv_tf.bench.train_worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=time_limit_s,
                preexec_fn=_limit_memory(int(memory_limit_gb * 2**30)),
                check=False,
            )
        except subprocess.TimeoutExpired:
            rows.append({**row, "status": f"time limit ({time_limit_s:.0f} s) exceeded"})
            continue
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            oom = any(
                word in done.stderr
                for word in ("MemoryError", "bad_alloc", "OOM", "Resource exhausted")
            )
            status = (
                f"out of memory (limit {memory_limit_gb:g} GB)"
                if oom or done.returncode < 0
                else f"failed: {tail[:200]}"
            )
            rows.append({**row, "status": status})
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {
                **row,
                "status": "ok",
                "runs_ms": [s * 1e3 for s in result["step_seconds"]],
                "median_ms": median(result["step_seconds"]) * 1e3,
                "peak_rss_mb": result["peak_rss_mb"],
            }
        )
    baseline = next((r for r in rows if r["model"] == "spatial 3x3" and r["status"] == "ok"), None)
    for row in rows:
        if baseline and row["status"] == "ok":
            row["ratio_to_3x3"] = row["median_ms"] / baseline["median_ms"]
            row["memory_ratio_to_3x3"] = row["peak_rss_mb"] / baseline["peak_rss_mb"]
    return rows
