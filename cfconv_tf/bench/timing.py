"""Wall-clock timing with warm-up, and the machine's float32 matmul peak."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def time_calls(
    call: Callable[[], object], repeats: int, warmup: int = 1, budget_seconds: float = 60.0
) -> list[float]:
    """Seconds per call for ``repeats`` calls after ``warmup`` calls.

    Stops early (keeping at least one timed call) once ``budget_seconds`` have been
    spent on timed calls, so a very slow model does not hold the benchmark hostage.
    """
    for _ in range(warmup):
        call()
    durations: list[float] = []
    while len(durations) < repeats:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
        if sum(durations) > budget_seconds:
            break
    return durations


def time_interleaved(
    calls: dict[Key, Callable[[], object]],
    repeats: int,
    budget_seconds: float = 60.0,
    pause_seconds: float = 0.2,
) -> dict[Key, list[float]]:
    """Seconds per call for each of ``calls``, timed in turn: ``repeats`` rounds of one
    call each (the calls are warmed up by the caller).

    On a shared machine whose speed drifts over minutes, a slow spell then slows every
    call alike instead of whichever was being timed, so the ratios between calls hold.
    A call that has spent ``budget_seconds`` leaves the later rounds (keeping at least
    one timed call). ``pause_seconds`` (untimed) precede each call: a runtime's worker
    threads spin for a while after its call, and would otherwise take the cores from the
    next runtime's call.
    """
    durations: dict[Key, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            if sum(durations[key]) > budget_seconds:
                continue
            time.sleep(pause_seconds)
            start = time.perf_counter()
            call()
            durations[key].append(time.perf_counter() - start)
    return durations


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_matmul_gflops(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 3) -> float:
    """The machine's float32 floor: the best big-matmul rate TF or onnxruntime reach.

    The best median GFLOP/s over square matmuls of ``sizes`` on all cores in each
    library (the rates differ by size and library by up to 1.5x on this machine).
    """
    import numpy as np
    import tensorflow as tf

    best = 0.0
    for size in sizes:
        a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
        tf_a = tf.constant(a)
        tf_matmul = tf.function(lambda tf_a=tf_a: tf.linalg.matmul(tf_a, tf_a))
        session = _matmul_session(["a", "a"], {"a": [size, size]}, [size, size])
        for call in (lambda f=tf_matmul: f().numpy(), lambda s=session, a=a: s.run(None, {"a": a})):
            best = max(best, 2.0 * size**3 / median(time_calls(call, repeats, warmup=1)) / 1e9)
    return best


def weight_stream_gbs(megabytes: int = 256, channels: int = 32, repeats: int = 5) -> float:
    """GB/s at which onnxruntime's MatMul reads a weight tensor far larger than the caches.

    At batch 1 a frozen CF layer reads each spectral-kernel entry once, in a batched
    matrix-vector product ``[F, 1, C] @ [F, C, C]``; this times exactly that product over
    a ``megabytes`` kernel, so ``weight bytes / this rate`` is the least time any batch-1
    inference of a model needs (the weights cannot be read faster than this).
    """
    import numpy as np

    frequencies = megabytes * 2**20 // (4 * channels * channels)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((frequencies, channels, channels)).astype(np.float32)
    session = _matmul_session(
        ["x", "kernel"], {"x": [frequencies, 1, channels]}, [frequencies, 1, channels], kernel
    )
    x = rng.standard_normal((frequencies, 1, channels)).astype(np.float32)
    seconds = median(time_calls(lambda: session.run(None, {"x": x}), repeats, warmup=1))
    return kernel.nbytes / seconds / 1e9


def _matmul_session(
    operands: list[str], inputs: dict[str, list[int]], output: list[int], weight=None
):
    """An onnxruntime session of one float32 MatMul ``operands[0] @ operands[1]`` -> ``y``.

    ``inputs`` are the graph inputs' shapes; ``weight``, if given, is the second operand
    as a constant initializer (read from memory on every call, like a model's weights).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", operands, ["y"])],
        "matmul",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in inputs.items()
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output)],
        [] if weight is None else [numpy_helper.from_array(weight, operands[1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
