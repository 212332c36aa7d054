"""The server as a real process on 127.0.0.1: protocols, bad input, load, hot swaps."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from servers import MAX_BODY_MB, Server

from export.ort_session import onnx_session
from export.pipeline import export_model


@pytest.fixture(scope="module")
def repo(trained_runs, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository") / "models"
    export_model(trained_runs["cf"], "triton", root, "cf")
    export_model(trained_runs["spatial"], "triton", root, "spatial")
    return root


@pytest.fixture(scope="module")
def server(repo):
    running = Server(repo)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference(repo):
    """onnxruntime called directly on the served file."""
    session = onnx_session(repo / "cf" / "1" / "model.onnx")
    return lambda images: session.run(["probabilities"], {"image": images})[0]


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.integers(0, 256, (3, 28, 28, 1)).astype(np.float32)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0].astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_tf_serving_row_columnar_and_b64_equal_onnxruntime(server, reference, images):
    expected = reference(images)
    rows = httpx.post(
        f"{server.url}/v1/models/cf:predict", json={"instances": images.tolist()}
    ).json()["predictions"]
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-6)
    assert [row["class_index"] for row in rows] == expected.argmax(1).tolist()
    columnar = httpx.post(
        f"{server.url}/v1/models/cf/versions/1:predict", json={"inputs": {"image": images.tolist()}}
    ).json()["outputs"]
    np.testing.assert_allclose(columnar["probabilities"], expected, atol=1e-6)
    encoded = [{"b64": base64.b64encode(png(image)).decode()} for image in images]
    rows = httpx.post(f"{server.url}/v1/models/cf:predict", json={"instances": encoded}).json()[
        "predictions"
    ]
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-6)


def test_tf_serving_status_and_metadata(server):
    status = httpx.get(f"{server.url}/v1/models/cf").json()
    assert status["model_version_status"][0] == {
        "version": "1",
        "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""},
    }
    signature = httpx.get(f"{server.url}/v1/models/cf/metadata").json()["metadata"][
        "signature_def"
    ]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in signature["inputs"]["image"]["tensor_shape"]["dim"]]
    assert dims == [-1, 28, 28, 1] and set(signature["outputs"]) == {"probabilities", "class_index"}


def test_kserve_json_and_a_real_v2_client_with_binary_tensors(server, reference, images):
    import tritonclient.http as triton

    expected = reference(images)
    body = {
        "id": "42",
        "inputs": [
            {
                "name": "image",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ],
    }
    answer = httpx.post(f"{server.url}/v2/models/cf/infer", json=body).json()
    assert answer["id"] == "42" and answer["model_version"] == "1"
    outputs = {o["name"]: np.reshape(o["data"], o["shape"]) for o in answer["outputs"]}
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-6)

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("cf")
    assert client.get_model_metadata("cf")["inputs"][0]["shape"] == [-1, 28, 28, 1]
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=True)
    result = client.infer(
        "cf",
        [tensor],
        outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=True),
            triton.InferRequestedOutput("class_index", binary_data=False),
        ],
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("class_index"), expected.argmax(1))


def test_tritonclient_asks_for_the_top_classes_by_label(server, reference, images):
    """Triton's classification extension: K "score:index:label" entries per row, best first."""
    import tritonclient.http as triton

    expected = reference(images)
    names = httpx.get(f"{server.url}/models").json()["models"][0]["class_names"]
    assert "classification" in httpx.get(f"{server.url}/v2").json()["extensions"]
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    for binary in (True, False):
        result = client.infer(
            "cf",
            [tensor],
            outputs=[
                triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
                triton.InferRequestedOutput("class_index", binary_data=binary),
            ],
        )
        top = result.as_numpy("probabilities")
        assert top.shape == (3, 3) and result.get_output("probabilities")["datatype"] == "BYTES"
        for row, scores in zip(top, expected, strict=True):
            # tritonclient gives binary BYTES as bytes, JSON ones as str
            entries = [(e.decode() if binary else e).split(":") for e in row]
            values = [float(value) for value, _, _ in entries]
            chosen = [int(index) for _, index, _ in entries]
            assert [label for _, _, label in entries] == [names[i] for i in chosen]
            np.testing.assert_allclose(values, scores[chosen], atol=1e-5)
            assert values == sorted(values, reverse=True)
            assert min(values) >= np.delete(scores, chosen).max() - 1e-5
        np.testing.assert_array_equal(result.as_numpy("class_index"), expected.argmax(1))


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some clients send for ``Content-Encoding: deflate``."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compresses_requests_and_asks_for_compressed_answers(
    server, reference, images, algorithm
):
    import tritonclient.http as triton

    expected = reference(images)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("class_index", binary_data=False),
    ]
    for binary in (True, False):  # binary: Inference-Header-Content-Length counts inflated bytes
        tensor = triton.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images, binary_data=binary)
        result = client.infer(
            "cf",
            [tensor],
            outputs=outputs,
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("class_index"), expected.argmax(1))


def test_tf_serving_bodies_may_be_compressed_and_answers_are_when_accepted(
    server, reference, images
):
    expected = reference(images)
    body = json.dumps({"instances": images.tolist()}).encode()
    for encoding, content in (
        ("gzip", gzip.compress(body)),
        ("x-gzip", gzip.compress(body[:100]) + gzip.compress(body[100:])),  # two members
        ("deflate", zlib.compress(body)),  # zlib-wrapped, as HTTP says
        ("Deflate", raw_deflate(body)),  # raw, as some clients send
    ):
        response = httpx.post(
            f"{server.url}/v1/models/cf:predict",
            content=content,
            headers={"Content-Encoding": encoding, "Accept-Encoding": "gzip;q=0.5, deflate"},
        )
        assert response.status_code == 200, (encoding, response.text)
        assert response.headers["content-encoding"] == "deflate"  # the client's preference
        rows = response.json()["predictions"]
        np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-6)
    for accept, coding in (("br, deflate, gzip", "gzip"), ("gzip;q=0, identity", None)):
        answer = httpx.post(
            f"{server.url}/v1/models/cf:predict", content=body, headers={"Accept-Encoding": accept}
        )
        assert answer.headers.get("content-encoding") == coding
        assert len(answer.json()["predictions"]) == 3


def test_16_bit_images_are_scaled_to_8_bits_as_tensorflow_decodes_them(server, reference):
    import tensorflow as tf

    ramp = np.arange(28 * 28, dtype=np.uint32).reshape(28, 28, 1) * 83 % 65536
    encoded = tf.io.encode_png(tf.constant(ramp.astype(np.uint16))).numpy()
    pixels = tf.io.decode_png(encoded, channels=1, dtype=tf.uint8).numpy()  # the high byte
    expected = reference(pixels[None].astype(np.float32))[0]
    classified = httpx.post(f"{server.url}/v1/classify/cf?top_k=10", content=encoded).json()
    by_class = {p["class_index"]: p["probability"] for p in classified["predictions"]}
    np.testing.assert_allclose([by_class[i] for i in range(len(expected))], expected, atol=1e-6)
    rows = httpx.post(
        f"{server.url}/v1/models/cf:predict",
        json={"instances": [{"b64": base64.b64encode(encoded).decode()}]},
    ).json()["predictions"]
    np.testing.assert_allclose(rows[0]["probabilities"], expected, atol=1e-6)


def test_image_endpoint_raw_and_multipart_give_top_k(server, reference, images):
    expected = reference(images[:1])[0]
    for response in (
        httpx.post(
            f"{server.url}/v1/classify/cf?top_k=3",
            content=png(images[0]),
            headers={"Content-Type": "image/png"},
        ),
        httpx.post(
            f"{server.url}/v1/classify/cf/versions/1?top_k=3",
            files={"image": ("x.png", png(images[0]), "image/png")},
        ),
    ):
        predictions = response.json()["predictions"]
        assert [p["class_index"] for p in predictions] == np.argsort(-expected)[:3].tolist()
        np.testing.assert_allclose(
            [p["probability"] for p in predictions], np.sort(expected)[::-1][:3], atol=1e-6
        )
        assert (
            predictions[0]["label"]
            in json.loads(httpx.get(f"{server.url}/models").text)["models"][0]["class_names"]
        )


def truncated_png() -> bytes:
    return png(np.zeros((28, 28, 1)))[:50]


def encoded(body: bytes, coding: str) -> dict:
    """httpx options of a request whose body is sent with ``Content-Encoding: coding``."""
    return {"content": body, "headers": {"Content-Encoding": coding}}


BAD_REQUESTS = [
    ("post", "/v1/models/cf:predict", {"content": b"{oops"}, 400, "malformed JSON"),
    (
        "post",
        "/v1/models/cf:predict",
        {"json": {"instances": [[1, 2, 3]]}},
        400,
        "expected shape [-1, 28, 28, 1]",
    ),
    ("post", "/v1/models/cf:predict", {"json": {"instances": [[["a"]]]}}, 400, "expected numbers"),
    (
        "post",
        "/v1/models/cf:predict",
        {"json": {"instances": [{"b64": "%%%"}]}},
        400,
        "invalid base64",
    ),
    (
        "post",
        "/v1/models/cf:predict",
        {"json": {"instances": [{"b64": base64.b64encode(b"plain text").decode()}]}},
        400,
        "not a decodable",
    ),
    (
        "post",
        "/v1/models/cf:predict",
        {"json": {"instances": [], "inputs": []}},
        400,
        "exactly one of",
    ),
    ("post", "/v1/models/nope:predict", {"json": {"instances": []}}, 404, "model 'nope' not found"),
    ("post", "/v1/models/cf/versions/7:predict", {"json": {"instances": []}}, 404, "no version"),
    ("get", "/v1/models/cf/versions/abc", {}, 404, "no version"),
    (
        "post",
        "/v2/models/cf/infer",
        {
            "json": {
                "inputs": [{"name": "image", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]
            }
        },
        400,
        "expected shape",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}},
        400,
        "unsupported datatype",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        {"json": {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}},
        400,
        "the model takes the inputs ['image']",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        {"content": b'{"inputs": []}xxxx', "headers": {"Inference-Header-Content-Length": "999"}},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        {
            "content": json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 28, 28, 1],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 16},
                        }
                    ]
                }
            ).encode()
            + b"\x00" * 16,
            "headers": {"Inference-Header-Content-Length": "111"},
        },
        400,
        "",
    ),
    ("post", "/v1/classify/cf", {"content": b"GIF89a not really"}, 400, "not a decodable"),
    ("post", "/v1/classify/cf", {"content": truncated_png()}, 400, "truncated"),
    ("post", "/v1/classify/cf", {"content": b""}, 400, "empty request body"),
    ("post", "/v1/classify/cf?top_k=-1", {"content": b"x"}, 400, "top_k"),
    ("post", "/v1/classify/cf", {"content": b"\x00" * (MAX_BODY_MB * 2**20 + 1)}, 413, "exceeds"),
    (
        "post",
        "/v1/models/cf:predict",
        encoded(b"{}", "br"),
        415,
        "Content-Encoding 'br'",
    ),
    (
        "post",
        "/v1/models/cf:predict",
        encoded(b"{}", "gzip, gzip"),
        415,
        "Content-Encoding",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        encoded(b"{not gzip}", "gzip"),
        400,
        "corrupt gzip body",
    ),
    (
        "post",
        "/v1/models/cf:predict",
        encoded(gzip.compress(b'{"instances": []}')[:-6], "gzip"),
        400,
        "truncated",
    ),
    (
        "post",
        "/v1/models/cf:predict",
        encoded(zlib.compress(b"{}") + b"junk", "deflate"),
        400,
        "after the end",
    ),
    (
        "post",
        "/v2/models/cf/infer",
        encoded(gzip.compress(b" " * (MAX_BODY_MB * 2**20 + 1)), "gzip"),
        413,
        "decompressed",
    ),
    (
        "post",
        "/v1/classify/cf",
        encoded(zlib.compress(b"\x00" * (MAX_BODY_MB * 2**20 + 1)), "deflate"),
        413,
        "decompressed",
    ),
    ("post", "/v1/models/..%2F..%2Fetc:predict", {"json": {}}, 404, ""),
    ("post", "/v2/models/../../etc/passwd/infer", {"json": {}}, 404, ""),
]


@pytest.mark.parametrize("method,path,options,status,message", BAD_REQUESTS)
def test_bad_input_gets_a_clear_4xx_and_the_server_lives_on(
    server, method, path, options, status, message
):
    response = getattr(httpx, method)(server.url + path, **options)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["error"]
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


async def hammer(url: str, seconds: float, clients: int, body: dict) -> list[int]:
    """``clients`` concurrent loops posting ``body`` for ``seconds``; status codes."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    statuses.append((await client.post(url, json=body)).status_code)
                except httpx.TransportError:
                    statuses.append(-1)

        await asyncio.gather(*(loop() for _ in range(clients)))
    return statuses


def test_load_with_a_version_swap_loses_no_request(server, repo, trained_runs, images):
    body = {"instances": images[:1].tolist()}

    async def load_and_swap() -> list[int]:
        load = asyncio.create_task(hammer(f"{server.url}/v1/models/cf:predict", 4.0, 32, body))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(export_model, trained_runs["cf"], "triton", repo, "cf", 2)
        return await load

    statuses = asyncio.run(load_and_swap())
    assert len(statuses) > 100 and set(statuses) == {200}, sorted(set(statuses))
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/v2/models/cf").json()["versions"] != ["1", "2"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    answer = httpx.post(
        f"{server.url}/v2/models/cf/infer",
        json={
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 28, 28, 1],
                    "datatype": "FP32",
                    "data": images[0].ravel().tolist(),
                }
            ]
        },
    ).json()
    assert answer["model_version"] == "2"
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    batch_sum = float(metrics.split("cfconv_batch_size_sum ")[1].split()[0])
    batch_count = float(metrics.split("cfconv_batch_size_count ")[1].split()[0])
    assert batch_sum > batch_count  # concurrent requests were batched together
    assert 'cfconv_requests_total{protocol="tfserving",status="200"}' in metrics


def test_request_ids_are_echoed_or_made(server):
    response = httpx.get(f"{server.url}/v2", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(httpx.get(f"{server.url}/v2").headers["x-request-id"]) == 32
    assert "request_id=abc-123 GET /v2 200" in server.log.read_text()


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset fails)."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def keep_alive_load(url: str, clients: int, body: dict, outcomes: list) -> None:
    """``clients`` loops posting ``body`` on kept-alive connections until the server stops
    listening; each answer's status and ``Connection`` header, or the transport error's
    type, go to ``outcomes``."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def loop() -> None:
            while not outcomes or outcomes[-1] != "ConnectError":
                try:
                    answer = await client.post(url, json=body)
                    outcomes.append((answer.status_code, answer.headers.get("connection")))
                except httpx.TransportError as error:
                    outcomes.append(type(error).__name__)

        await asyncio.wait_for(asyncio.gather(*(loop() for _ in range(clients))), 60)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_drains_the_server_and_resets_no_connection(repo, images, stop):
    """In-flight requests are answered, later ones on open connections get 503 with
    ``Connection: close``, and no connection is dropped with a request on it: the only
    errors are refused connects once the server stopped listening."""
    server = Server(repo)
    url = f"{server.url}/v1/models/cf:predict"
    body = {"instances": images[:1].tolist()}
    request = json.dumps(body).encode()
    head = b"POST /v1/models/cf:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    kept.sendall(head % len(request) + request[:10])  # in flight at the signal

    outcomes: list = []

    async def requests_then_stop() -> None:
        load = asyncio.create_task(keep_alive_load(url, 16, body, outcomes))
        while len(outcomes) < 16:  # under way on every connection
            await asyncio.sleep(0.05)
        server.process.send_signal(stop)
        await asyncio.sleep(0.3)  # the drain has begun
        kept.sendall(request[10:] + head % len(request) + request)  # and the next request
        await load

    asyncio.run(requests_then_stop())
    answers = read_until_closed(kept)
    assert answers.startswith(b"HTTP/1.1 200") and answers.count(b"HTTP/1.1 ") == 2, answers
    late = answers[answers.rindex(b"HTTP/1.1 ") :]
    assert late.startswith(b"HTTP/1.1 503") and b"connection: close" in late.lower(), late
    server.assert_stopped_gracefully(stop)
    assert (200, None) in outcomes
    unexpected = [o for o in outcomes if o not in ((200, None), (503, "close"), "ConnectError")]
    assert not unexpected, unexpected


def test_workers_do_not_outlive_a_killed_server(repo):
    """A supervisor that SIGKILLs the server's PID leaves no parser process or resource
    tracker behind."""
    server = Server(repo)
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert len(children) >= 2  # the parser processes (and the resource tracker)
    server.process.kill()
    server.process.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphans: {alive}"


def test_unknown_repository_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cfconv_tf.cli", "serve", "--model-repo", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_demo_page_classifies_a_chosen_image_in_headless_chromium(
    server, reference, images, tmp_path
):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
        Select(driver.find_element(By.ID, "model")).select_by_value("cf")
        image_path = tmp_path / "shirt.png"
        image_path.write_bytes(png(images[0]))
        driver.find_element(By.ID, "file").send_keys(str(image_path))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
        lines = [item.text for item in driver.find_elements(By.CSS_SELECTOR, "#results li")]
        driver.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        driver.quit()
    labels = httpx.get(f"{server.url}/models").json()["models"][0]["class_names"]
    expected = reference(images[:1])[0]
    best = int(expected.argmax())
    assert lines[0] == f"{labels[best]}: {100 * expected[best]:.1f} %"
