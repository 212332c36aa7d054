"""``cfconv bench serve``: ``cfconv serve`` under load next to onnxruntime in a plain loop.

The frozen CF model is exported to a temporary repository and served by a real
``cfconv serve`` process on 127.0.0.1, which is sent KServe v2 requests of one image
each, as JSON and as binary tensors, two ways:

- closed loop: ``wrk`` (a C load generator, one thread, so it takes as little CPU from
  the server as possible) from N concurrent connections, each sending its next request
  when the last is answered;
- open loop: requests due at a fixed rate (:mod:`cfconv_tf.bench.load`), their latency
  counted from when they were due, so a stall's effect on the requests behind it shows
  (a closed loop hides it by sending less). By default the rates are half of and 90 %
  of the best closed-loop throughput of that payload.

Each row has the throughput and the latency percentiles p50/p90/p99. The baseline is
onnxruntime called in a loop in this process on the same cores with the same batch
size; the server's throughput is reported as a fraction of it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cfconv_tf.bench.load import latency_percentiles, open_loop
from cfconv_tf.bench.processes import free_port, wait_ready
from cfconv_tf.bench.timing import time_calls
from cfconv_tf.config import load_model_config
from cfconv_tf.models import build_model
from export.freeze import freeze_model
from export.onnx_export import export_onnx
from export.ort_session import onnx_session

LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
DEFAULT_RATE_FRACTIONS = (0.5, 0.9)  # of the best closed-loop throughput


def _payloads(image: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """KServe v2 request bodies for one image: JSON tensor and binary tensor."""
    tensor = {"name": "image", "shape": list(image.shape), "datatype": "FP32"}
    json_body = json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}]}).encode()
    blob = image.astype(np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return {
        "json": (json_body, {"Content-Type": "application/json"}),
        "binary": (
            header + blob,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        ),
    }


def _wrk_script(folder: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    (folder / f"{name}.body").write_bytes(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{folder / (name + ".body")}", "rb")',
        "wrk.body = f:read('*all')",
        "f:close()",
    ]
    lines += [f'wrk.headers["{key}"] = "{value}"' for key, value in headers.items()]
    script = folder / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p90/p99 latency (ms) and error count from ``wrk --latency``."""

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return float(value) * LATENCY_UNITS[unit]

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def run_serve(
    size: int,
    conv_layers: int = 6,
    clients: tuple[int, ...] = (1, 8, 32),
    seconds: float = 10.0,
    rates: tuple[float, ...] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """The onnxruntime-loop baseline, then per payload one closed-loop row per client
    count and one open-loop row per rate (requests/s; by default
    :data:`DEFAULT_RATE_FRACTIONS` of the payload's best closed-loop throughput)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("bench serve needs wrk: apt-get install -y wrk")
    config = load_model_config("paper_cnn").replace(conv_layers=conv_layers)
    # random weights, only timed: export_onnx checks its file against this frozen model
    model = freeze_model(build_model(config, "cf", (size, size, 3), 2, seed=0), check=False)
    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="cfconv-bench-serve-") as tmp:
        path = export_onnx(model, Path(tmp) / "repo" / "cf" / "1", class_names=["0", "1"])

        progress("onnxruntime loop")
        session = onnx_session(path)
        runs = time_calls(
            lambda: session.run(None, {"image": image}),
            repeats=10**6,
            warmup=3,
            budget_seconds=seconds,
        )
        baseline = {
            "runtime": "onnxruntime loop",
            "payload": "-",
            "mode": "-",
            "clients": 1,
            "rate": None,
            "requests_per_s": len(runs) / sum(runs),
            **latency_percentiles(runs),
            "errors": 0,
        }
        rows = [baseline]

        port = free_port()
        log = (Path(tmp) / "serve.log").open("w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cfconv_tf.cli",
                "serve",
                "--model-repo",
                str(Path(tmp) / "repo"),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        route = "/v2/models/cf/infer"
        url = f"http://127.0.0.1:{port}{route}"
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", server)
            for payload, (body, headers) in _payloads(image).items():
                script = _wrk_script(Path(tmp), payload, body, headers)
                closed = []
                for count in clients:
                    progress(f"serve {payload} x{count}")
                    closed.append(_closed_loop(wrk, script, url, count, seconds))
                    _drain(url, body, headers)
                best = max(row["requests_per_s"] for row in closed)
                opened = []
                for rate in rates or [fraction * best for fraction in DEFAULT_RATE_FRACTIONS]:
                    progress(f"serve {payload} at {rate:.1f}/s")
                    result = asyncio.run(
                        open_loop("127.0.0.1", port, route, body, headers, rate, seconds)
                    )
                    opened.append({"mode": "open", "clients": "-", "rate": rate, **result})
                    _drain(url, body, headers)
                for row in closed + opened:
                    rows.append(
                        {
                            "runtime": "cfconv serve",
                            "payload": payload,
                            **row,
                            "fraction_of_onnxruntime": row["requests_per_s"]
                            / baseline["requests_per_s"],
                        }
                    )
        finally:
            server.terminate()
            server.wait(timeout=60)
    return rows


def _closed_loop(wrk: str, script: Path, url: str, clients: int, seconds: float) -> dict:
    """One ``wrk`` run from ``clients`` connections: its row's mode and measures."""
    done = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{clients}",
            f"-d{seconds:g}s",
            "--latency",
            # wrk's default 2 s socket timeout counts slow answers (32 clients queue
            # for seconds at 150x150) as errors.
            "--timeout",
            "120s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"mode": "closed", "clients": clients, "rate": None, **parse_wrk(done.stdout)}


def _drain(url: str, body: bytes, headers: dict[str, str]) -> None:
    """Wait until the requests wrk left queued are answered (one more joins the queue
    last and is answered after them), so the next row starts on an idle server."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
