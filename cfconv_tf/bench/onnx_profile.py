"""``cfconv bench profile``: where an exported CF model's onnxruntime time goes.

Exports the benchmark's frozen CF model (:func:`cfconv_tf.bench.infer.frozen_cf_model`)
in each profiled ONNX lowering, runs it under onnxruntime's profiler, and adds up each
node's median kernel time by *stage*: a MatMul of the factorized lowering by its stage
(``kernel``, ``rfft_w1``, ``dft_h2``, ... as
:func:`export.onnx_spectral.factorized_spectral_conv2d` names them, so every layer's
stage of one kind adds up), any other node (the native lowering's ``SpectralConv2D``
among them) by its op type.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from cfconv_tf.bench.infer import frozen_cf_model
from export.native import library_path
from export.onnx_export import build_onnx
from export.ort_session import onnx_session, session_options
from export.signature import signature_of

# The lowerings profiled: the default one, whose time splits into its MatMul stages, and
# the native one, whose time splits into its SpectralConv2D nodes and the rest.
PROFILED_LOWERINGS = ("factorized", "native")


def node_stages(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> stage: ``MatMul:<stage>`` or the op type.

    tf2onnx names nodes after their TensorFlow ops, ``<model>/<layer>/<stage>_stage``.
    """
    stages = {}
    for node in model.graph.node:
        stage = re.fullmatch(r"(\w+)_stage(_\d+)?", node.name.rsplit("/", 1)[-1])
        if node.op_type == "MatMul" and stage:
            stages[node.name] = f"MatMul:{stage.group(1)}"
        else:
            stages[node.name] = node.op_type
    return stages


def matmul_flops(model: onnx.ModelProto, batch: int) -> dict[str, int]:
    """Node name -> floating-point operations of each MatMul for a call on ``batch`` images
    (``2 * output elements * contraction length``, from ONNX shape inference). MatMuls
    whose shapes inference does not fully know (those after a custom op) are left out."""
    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    sized.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    graph = onnx.shape_inference.infer_shapes(sized).graph
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*graph.value_info, *graph.input, *graph.output]
    }
    shapes.update({tensor.name: list(tensor.dims) for tensor in graph.initializer})
    known = {name for name, shape in shapes.items() if shape and all(size > 0 for size in shape)}
    return {
        node.name: 2 * int(np.prod(shapes[node.output[0]])) * shapes[node.input[0]][-1]
        for node in graph.node
        if node.op_type == "MatMul" and {node.output[0], node.input[0]} <= known
    }


def profile_stages(model: onnx.ModelProto, images: np.ndarray, runs: int) -> dict[str, float]:
    """Milliseconds per stage: per node the median over ``runs`` profiled calls, summed.

    One warm-up call precedes the profiled ones. Nodes that onnxruntime fused or renamed
    appear under their profiler name prefixed by ``fused:``.
    """
    stages = node_stages(model)
    with tempfile.TemporaryDirectory(prefix="cfconv-profile-") as folder:
        options = session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = onnx_session(model.SerializeToString(), options=options)
        for _ in range(runs + 1):
            session.run(None, {"image": images})
        events = _node_events(Path(session.end_profiling()))
    events = events[len(events) // (runs + 1) :]  # every call logs the same nodes
    durations: dict[str, list[float]] = defaultdict(list)
    for event in events:
        durations[event["name"].removesuffix("_kernel_time")].append(event["dur"] / 1000)
    totals: dict[str, float] = defaultdict(float)
    for node, times in durations.items():
        totals[stages.get(node, f"fused:{node}")] += statistics.median(times)
    return dict(totals)


def _node_events(path: Path) -> list[dict]:
    return [
        event
        for event in json.loads(path.read_text())
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
    ]


def run_profile(
    size: int,
    batch_sizes=(1, 32),
    lowerings: tuple[str, ...] = PROFILED_LOWERINGS,
    runs: int = 5,
    conv_layers: int = 6,
    peak_gflops: float = 200.0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """One row per (lowering, batch, stage), largest first, with its share of the summed
    time and, for MatMul stages, the GFLOP a call executes in them and the rate they run
    at as a fraction of ``peak_gflops``. The native lowering is left out where its library
    is not built."""
    model = frozen_cf_model(size, 3, 2, conv_layers)
    signature = signature_of(model, ["0", "1"])
    rng = np.random.default_rng(0)
    rows = []
    for lowering in lowerings:
        if lowering == "native" and library_path() is None:
            continue
        onnx_model = build_onnx(model, signature, lowering)
        for batch in batch_sizes:
            progress(f"profile {lowering} batch {batch}")
            images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
            stages = profile_stages(onnx_model, images, runs)
            total = sum(stages.values())
            flops: dict[str, int] = defaultdict(int)
            names = node_stages(onnx_model)
            for node, count in matmul_flops(onnx_model, batch).items():
                flops[names[node]] += count
            for stage, ms in sorted(stages.items(), key=lambda item: -item[1]):
                row = {
                    "lowering": lowering,
                    "batch": batch,
                    "stage": stage,
                    "median_ms": ms,
                    "share": ms / total,
                }
                if stage in flops:
                    row["gflop"] = flops[stage] / 1e9
                    if ms > 0:
                        row["peak_fraction"] = flops[stage] / (ms / 1e3) / 1e9 / peak_gflops
                rows.append(row)
    return rows
