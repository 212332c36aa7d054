"""``cfconv bench train``: time per training step, 3x3 CNN vs CF-Conv at several counts.

At the paper's shape (150x150x3, 6 layers x 32, batch 32) by default: the spatial 3x3
CNN; CF-Conv with 2^12, 2^15, 2^18 sampled positions per layer and step; and the
paper's "naive" CF-Conv that regenerates every kernel entry every step; with the
paper's coordinate MLPs, and (rows "..., factorized generator") with the generators of
``models/fashion_cnn_factorized.yaml``; and the floor under every CF-Conv row: the
transforms of a CF-Conv step alone (rows "cf transforms only, ...") and its spectral
convolutions alone (transforms and mixing, row "cf spectral convolutions only"; see
:mod:`cfconv_tf.bench.transform_floor`). Smaller inputs (``--quick``) keep the paper's
counts as fractions of the kernel at 150x150.
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
# the named configuration whose generator settings the factorized rows use
FACTORIZED_CONFIG = "fashion_cnn_factorized"


def configurations(size: int) -> list[dict]:
    """The benchmark rows for an input of ``size``: name, variant, samples, and the
    config changes (``config``) or the named configuration whose generator settings
    the row uses (``generator_of``)."""

    def samples(count: int) -> int | float:
        return count if size == 150 else count / PAPER_ENTRIES

    rows = [{"name": "spatial 3x3", "variant": "spatial", "samples": None}]
    for count in PAPER_COUNTS:
        exponent = count.bit_length() - 1
        rows.append({"name": f"cf 2^{exponent}", "variant": "cf", "samples": samples(count)})
    rows.append(
        {
            "name": "cf 2^18, recomputed generators",
            "variant": "cf",
            "samples": samples(2**18),
            "config": {"recompute_generators": True},
        }
    )
    rows.append({"name": "cf naive (all entries)", "variant": "cf", "samples": 1.0})
    factorized_rows = (
        ("cf 2^12", samples(2**12)),
        ("cf 2^18", samples(2**18)),
        ("cf naive (all entries)", 1.0),
    )
    for name, count in factorized_rows:
        rows.append(
            {
                "name": f"{name}, factorized generator",
                "variant": "cf",
                "samples": count,
                "generator_of": FACTORIZED_CONFIG,
            }
        )
    for name, chunk in (("whole batch", None), ("per image", 1)):
        rows.append(
            {
                "name": f"cf transforms only, {name} (floor)",
                "variant": "transforms",
                "samples": None,
                "chunk": chunk,
            }
        )
    rows.append(
        {
            "name": "cf spectral convolutions only (floor)",
            "variant": "transforms",
            "samples": None,
            "mixing": True,
        }
    )
    return rows


def select_rows(rows: list[dict], names: list[str] | None) -> list[dict]:
    """The rows named in ``names`` (all when ``None``), in the suite's order.

    Raises:
        ValueError: a name that is no row; the message lists the rows.
    """
    if names is None:
        return rows
    known = [row["name"] for row in rows]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown training benchmark rows {unknown}; known: {known}")
    return [row for row in rows if row["name"] in names]


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
    row_names: list[str] | None = None,
) -> list[dict]:
    """Measure each configuration (those in ``row_names``, default all) in its own
    subprocess; one row each. Ratios are to the 3x3 row when it is among them."""
    rows = []
    for config in select_rows(configurations(size), row_names):
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
