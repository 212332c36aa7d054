"""``cfconv bench all --quick``: the files, the rows, and ratios taken from the medians."""

from __future__ import annotations

import asyncio
import json
import statistics

import pytest

from cfconv_tf.bench.flops import spectral_flops
from cfconv_tf.bench.infer import frozen_cf_model, model_names, select_models
from cfconv_tf.bench.timing import time_interleaved
from cfconv_tf.bench.train import configurations, select_rows
from cfconv_tf.bench.train_worker import benchmark_config
from cfconv_tf.cli import main
from cfconv_tf.config import load_model_config
from export.native import library_path
from export.onnx_export import spectral_layers


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "all", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_bench_writes_json_markdown_and_plots(quick_results):
    out, results = quick_results
    files = ("results.md", "layer.png", "train.png", "infer_batch1.png", "infer_batch4.png")
    for name in (*files, "serve.png"):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "results.md").read_text()
    assert "## Training step" in markdown and "## Inference" in markdown
    assert results["machine"]["nproc"] >= 1 and results["peak_gflops"] > 0
    assert results["command"].startswith("cfconv bench")


def test_every_training_row_is_measured_and_compared_to_the_3x3_cnn(quick_results):
    rows = quick_results[1]["train"]
    assert [row["model"] for row in rows] == [
        "spatial 3x3",
        "cf 2^12",
        "cf 2^15",
        "cf 2^18",
        "cf 2^18, recomputed generators",
        "cf naive (all entries)",
        "cf 2^12, factorized generator",
        "cf 2^18, factorized generator",
        "cf naive (all entries), factorized generator",
        "cf transforms only, whole batch (floor)",
        "cf transforms only, per image (floor)",
        "cf spectral convolutions only (floor)",
    ]
    baseline = rows[0]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["peak_rss_mb"] > 0
        assert row["median_ms"] == pytest.approx(statistics.median(row["runs_ms"]))
        assert row["ratio_to_3x3"] == pytest.approx(row["median_ms"] / baseline["median_ms"])


def test_every_inference_row_has_a_median_and_a_ratio_to_its_runtimes_3x3(quick_results):
    rows = quick_results[1]["infer"]
    runtimes = {(row["model"], row["runtime"]) for row in rows}
    assert {
        ("cf", "onnxruntime factorized"),
        ("cf", "onnxruntime matmul"),
        ("cf", "onnxruntime dft"),
        ("cf", "onnxruntime native"),
        ("cf", "onnxruntime native, float16 kernels"),
        ("cf", "onnxruntime native, int8 kernels"),
        ("cf", "savedmodel"),
        ("cf", "keras"),
        ("spatial 3x3", "onnxruntime"),
        ("spatial 15x15", "keras"),
    } <= runtimes
    for row in rows:
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["flops_per_image"] > 0
        base = next(
            r
            for r in rows
            if r["model"] == "spatial 3x3"
            and r["batch"] == row["batch"]
            and r["runtime"].split()[0] == row["runtime"].split()[0]
        )
        assert row["ratio_to_3x3"] == pytest.approx(row["median_ms"] / base["median_ms"])
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["median_ms"] * 1e3)
    file_mb = {row["runtime"]: row["weight_mb"] for row in rows if row["model"] == "cf"}
    # the float16 file holds half the kernel bytes, the int8 file a quarter and its scales
    # (plus the same small head)
    assert file_mb["onnxruntime native, float16 kernels"] < 0.6 * file_mb["onnxruntime native"]
    assert file_mb["onnxruntime native, int8 kernels"] < 0.4 * file_mb["onnxruntime native"]


def test_profile_rows_name_every_stage_of_each_lowering(quick_results):
    rows = quick_results[1]["profile"]
    lowerings = {"factorized", "native"} if library_path() else {"factorized"}
    assert {(row["lowering"], row["batch"]) for row in rows} == {
        (lowering, batch) for lowering in lowerings for batch in (1, 4)
    }
    matmul_stages = {"rfft_w1", "dft_w2", "dft_h1", "dft_h2", "kernel"}
    matmul_stages |= {"idft_h2", "idft_h1", "idft_w2", "irfft_w1"}
    expected = {
        "factorized": {f"MatMul:{stage}" for stage in matmul_stages},
        "native": {"SpectralConv2D"},
    }
    for lowering in lowerings:
        for batch in (1, 4):
            stages = {
                row["stage"]: row
                for row in rows
                if row["batch"] == batch and row["lowering"] == lowering
            }
            assert expected[lowering] <= set(stages)
            assert sum(row["share"] for row in stages.values()) == pytest.approx(1.0)
            assert all(row["median_ms"] >= 0 for row in stages.values())
    # the factorized stages' GFLOP are the plan's count for the quick model's layers
    model = frozen_cf_model(15, 3, 2, conv_layers=2)
    shapes = [(layer.input.shape, layer.filters) for layer in spectral_layers(model)]
    for batch in (1, 4):
        planned = sum(
            spectral_flops(height, width, cin, cout, "dft-factorized")
            for (_, height, width, cin), cout in shapes
        )
        counted = sum(
            row["gflop"]
            for row in rows
            if row["lowering"] == "factorized"
            and row["batch"] == batch
            and row["stage"].startswith("MatMul:")
        )
        assert counted == pytest.approx(batch * planned / 1e9)
    markdown = (quick_results[0] / "results.md").read_text()
    assert "onnxruntime time goes" in markdown


def test_interleaved_timing_takes_the_calls_in_turn_and_drops_those_over_budget():
    order = []
    calls = {key: (lambda key=key: order.append(key)) for key in ("a", "b", "c")}
    durations = time_interleaved(calls, repeats=3, pause_seconds=0.0)
    assert order == ["a", "b", "c"] * 3
    assert [len(runs) for runs in durations.values()] == [3, 3, 3]
    assert all(run >= 0 for runs in durations.values() for run in runs)
    order.clear()
    # a zero budget is spent by the first timed call: each call is timed once
    durations = time_interleaved(calls, repeats=3, budget_seconds=0.0, pause_seconds=0.0)
    assert order == ["a", "b", "c"]
    assert [len(runs) for runs in durations.values()] == [1, 1, 1]


def test_layer_stages_cover_every_stage_with_ratios_from_medians(quick_results):
    rows = quick_results[1]["layer"]
    stages = [row["stage"] for row in rows]
    assert stages[0] == "conv2d 3x3 fwd+bwd"
    # 15x15 -> Wf = 8; 32 channels: 15 * 8 * 32 * 32 entries, half of them for 0.5.
    for count in (16, 15 * 8 * 32 * 32 // 2):
        assert f"sparse update fwd+bwd, {count} samples" in stages
        for gradient in ("full", "sampled"):
            assert f"cf layer fwd+bwd, {count} samples, {gradient} kernel gradient" in stages
    assert {"rfft2d", "irfft2d", "spectral conv fwd", "spectral conv fwd+bwd"} <= set(stages)
    for row in rows:
        assert row["median_ms"] == pytest.approx(statistics.median(row["runs_ms"]))
        assert row["median_ms"] > 0
        assert row["ratio_to_3x3"] == pytest.approx(row["median_ms"] / rows[0]["median_ms"])


def test_serving_rows_measure_the_server_next_to_onnxruntime(quick_results):
    rows = quick_results[1]["serve"]
    baseline = rows[0]
    assert baseline["runtime"] == "onnxruntime loop" and baseline["requests_per_s"] > 0
    served = rows[1:]
    closed = [row for row in served if row["mode"] == "closed"]
    assert [(row["payload"], row["clients"]) for row in closed] == [
        ("json", 1),
        ("json", 4),
        ("binary", 1),
        ("binary", 4),
    ]
    for payload in ("json", "binary"):  # open loop at half and 90 % of the best closed loop
        best = max(row["requests_per_s"] for row in closed if row["payload"] == payload)
        rates = [
            row["rate"] for row in served if row["mode"] == "open" and row["payload"] == payload
        ]
        assert rates == pytest.approx([0.5 * best, 0.9 * best])
    for row in rows:
        assert row["errors"] == 0 and row["requests_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    for row in served:
        assert row["fraction_of_onnxruntime"] == pytest.approx(
            row["requests_per_s"] / baseline["requests_per_s"]
        )


def test_wrk_output_is_parsed_with_units():
    from cfconv_tf.bench.serve import parse_wrk

    output = """  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.00ms
     99%    1.50s
  4000 requests in 2.00s, 1.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   2000.50
"""
    assert parse_wrk(output) == {
        "requests_per_s": 2000.5,
        "p50_ms": 0.812,
        "p90_ms": 2.0,
        "p99_ms": 1500.0,
        "errors": 6,
    }


def test_open_loop_load_keeps_its_rate_and_reports_ordered_percentiles():
    """Against a local server whose every fifth answer is slow: the requests are all sent
    and answered, the percentiles are ordered, and a 503 that closes its connection is
    counted as an error without losing the requests behind it."""
    from cfconv_tf.bench.load import open_loop

    async def run() -> tuple[dict, dict]:
        answered = 0

        async def handle(reader, writer) -> None:
            nonlocal answered
            try:
                while head := await reader.readuntil(b"\r\n\r\n"):
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    answered += 1
                    count = answered
                    if count % 5 == 0:
                        await asyncio.sleep(0.02)
                    status, close = (503, True) if count == 7 else (200, False)
                    writer.write(
                        b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n%s\r\nok"
                        % (status, b"Connection: close\r\n" if close else b"")
                    )
                    await writer.drain()
                    if close:
                        break
            except asyncio.IncompleteReadError:
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            slow = await open_loop("127.0.0.1", port, "/x", b"{}", {}, rate=100, seconds=0.5)
            fast = await open_loop("127.0.0.1", port, "/x", b"{}", {}, rate=200, seconds=0.2)
        return slow, fast

    slow, fast = asyncio.run(run())
    assert slow["errors"] == 1 and fast["errors"] == 0
    for result in (slow, fast):
        assert set(result) == {"requests_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"}
        assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
        assert result["requests_per_s"] > 0


def test_spectral_flop_counts_follow_their_formulas():
    # 150x150, 32->32: the mixing is 8 * 150 * 76 * 32 * 32 FLOPs (47M multiply-adds).
    fft = spectral_flops(150, 150, 32, 32, "fft")
    assert 8 * 150 * 76 * 32 * 32 < fft < 8 * 150 * 76 * 32 * 32 * 1.6
    dense = spectral_flops(150, 150, 32, 32, "dft-matmul")
    assert dense > fft  # O(N^2) transforms
    assert fft < spectral_flops(150, 150, 32, 32, "dft-factorized") < dense / 3
    with pytest.raises(ValueError, match="unknown spectral implementation"):
        spectral_flops(8, 8, 1, 1, "winograd")


def test_benchmark_rows_build_the_configurations_they_name():
    rows = {row["name"]: row for row in configurations(150)}
    factorized = benchmark_config(rows["cf 2^18, factorized generator"])
    named = load_model_config("fashion_cnn_factorized")
    assert (factorized.generator, factorized.hidden_units, factorized.samples) == (
        "factorized",
        named.hidden_units,
        2**18,
    )
    assert factorized.input_size == load_model_config("paper_cnn").input_size
    plain = benchmark_config(rows["cf 2^18"])
    assert (plain.generator, plain.recompute_generators) == ("coordinate_mlp", False)
    assert benchmark_config(rows["cf 2^18, recomputed generators"]).recompute_generators
    floors = [rows[f"cf transforms only, {name} (floor)"] for name in ("whole batch", "per image")]
    assert [(row["variant"], row["chunk"]) for row in floors] == [
        ("transforms", None),
        ("transforms", 1),
    ]
    assert select_rows(list(rows.values()), ["cf 2^12", "spatial 3x3"]) == [
        rows["spatial 3x3"],
        rows["cf 2^12"],
    ]


def test_inference_rows_select_models_in_the_suites_order():
    assert model_names(15) == ["cf", "spatial 3x3", "spatial 15x15"]
    assert select_models(150, ["spatial 3x3", "cf"]) == ["cf", "spatial 3x3"]
    assert select_models(64, None) == ["cf", "spatial 3x3", "spatial 31x31", "spatial 64x64"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "train", "--rows", "cf 2^13"], "unknown training benchmark rows ['cf 2^13']"),
        (
            ["bench", "infer", "--rows", "cf;spatial 7x7"],
            "unknown inference benchmark rows ['spatial 7x7']; known: ['cf', 'spatial 3x3', "
            "'spatial 31x31', 'spatial 150x150']",
        ),
        (["bench", "profile", "--rows", "cf"], "--rows selects rows of the train and infer"),
        (["bench", "onnx"], "the onnx suite times the files given with --onnx"),
    ],
)
def test_bad_benchmark_rows_are_refused_before_measuring(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "bench")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_onnx_files_are_timed_side_by_side_against_the_first(tiny_config, tmp_path):
    from conftest import trained_tiny_model

    from export.onnx_export import export_onnx

    model = trained_tiny_model(tiny_config, "cf", (9, 8, 1), 3)
    files = {low: export_onnx(model, tmp_path / low, low) for low in ("factorized", "matmul")}
    argv = ["bench", "onnx", "--quick", "--out", str(tmp_path / "bench")]
    argv += [arg for low, path in files.items() for arg in ("--onnx", f"{low}={path}")]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench" / "results.json").read_text())["onnx"]
    assert [(row["model"], row["batch"]) for row in rows] == [
        ("factorized", 1),
        ("matmul", 1),
        ("factorized", 4),
        ("matmul", 4),
    ]
    for row in rows:
        assert row["median_ms"] == pytest.approx(statistics.median(row["runs_ms"]))
        assert row["relative_error_to_first"] <= 1e-4  # two lowerings, one function
    assert rows[0]["ratio_to_first"] == 1.0 and rows[0]["relative_error_to_first"] == 0.0
    assert "## ONNX files side by side" in (tmp_path / "bench" / "results.md").read_text()
