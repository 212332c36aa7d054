"""Benchmark results as JSON, a markdown table and PNG plots."""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime
    import tensorflow as tf

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip())
    return {
        "cpu": cpu,
        "nproc": cores,
        "tensorflow": tf.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


TRAIN_COLUMNS = [
    "model",
    "samples",
    "batch",
    "input_size",
    "median_ms",
    "ratio_to_3x3",
    "peak_rss_mb",
    "memory_ratio_to_3x3",
    "status",
]
INFER_COLUMNS = [
    "model",
    "runtime",
    "batch",
    "median_ms",
    "images_per_s",
    "ratio_to_3x3",
    "flops_per_image",
    "achieved_gflops",
    "peak_fraction",
    "weight_mb",
    "weight_floor_ms",
    "status",
]


PROFILE_COLUMNS = ["lowering", "batch", "stage", "median_ms", "share", "gflop", "peak_fraction"]

ONNX_COLUMNS = [
    "model",
    "batch",
    "median_ms",
    "images_per_s",
    "ratio_to_first",
    "relative_error_to_first",
    "file",
]

LAYER_COLUMNS = ["stage", "input_size", "batch", "channels", "median_ms", "ratio_to_3x3"]

SERVE_COLUMNS = [
    "runtime",
    "payload",
    "mode",
    "clients",
    "rate",
    "requests_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "fraction_of_onnxruntime",
    "errors",
]


def _bar_plot(rows: list[dict], label: Callable, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if row.get("status") == "ok"]
    figure, axis = plt.subplots(figsize=(9, 0.35 * len(measured) + 1.5))
    axis.barh([label(row) for row in measured], [row["median_ms"] for row in measured])
    axis.set_xscale("log")
    axis.set_xlabel("median ms (log scale)")
    axis.set_title(title)
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(results: dict, out: Path, command: str) -> None:
    """Write ``results.json``, ``results.md`` and ``*.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": command, **results}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    sections = [
        f"Command: `{command}`",
        f"Date: {results['date']}",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
    ]
    if "peak_gflops" in results:
        sections.append(f"Measured float32 matmul peak: {results['peak_gflops']:.1f} GFLOP/s")
    if "weight_stream_gbs" in results:
        sections.append(
            f"Measured weight streaming rate (onnxruntime MatMul over a kernel larger than "
            f"the caches): {results['weight_stream_gbs']:.1f} GB/s"
        )
    if "layer" in results:
        sections += [
            "## One layer's training step, stage by stage",
            markdown_table(results["layer"], LAYER_COLUMNS),
        ]
        _bar_plot(
            [{**row, "status": "ok"} for row in results["layer"]],
            lambda r: r["stage"],
            "one layer, stage by stage",
            out / "layer.png",
        )
    if "train" in results:
        sections += ["## Training step", markdown_table(results["train"], TRAIN_COLUMNS)]
        _bar_plot(results["train"], lambda r: r["model"], "training step", out / "train.png")
    if "infer" in results:
        sections += ["## Inference", markdown_table(results["infer"], INFER_COLUMNS)]
        for batch in sorted({row["batch"] for row in results["infer"]}):
            _bar_plot(
                [r for r in results["infer"] if r["batch"] == batch],
                lambda r: f"{r['model']} / {r['runtime']}",
                f"inference, batch {batch}",
                out / f"infer_batch{batch}.png",
            )
    if "profile" in results:
        sections += [
            "## Where the exported CF model's onnxruntime time goes",
            markdown_table(results["profile"], PROFILE_COLUMNS),
        ]
    if "onnx" in results:
        sections += [
            "## ONNX files side by side (the first file is the reference)",
            markdown_table(results["onnx"], ONNX_COLUMNS),
        ]
    if "serve" in results:
        sections += [
            "## Serving (one image per request)",
            markdown_table(results["serve"], SERVE_COLUMNS),
        ]
        serve_rows = [
            {**row, "status": "ok", "median_ms": row["p50_ms"]} for row in results["serve"]
        ]
        _bar_plot(
            serve_rows,
            lambda r: (
                f"{r['runtime']} {r['payload']} "
                + (f"at {r['rate']:.0f}/s" if r["rate"] else f"x{r['clients']}")
            ),
            "serving p50 latency",
            out / "serve.png",
        )
    (out / "results.md").write_text("\n\n".join(sections) + "\n")
