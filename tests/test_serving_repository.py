"""The model repository as a deployment's server sees it: without the superuser's file
access (when the tests run as root, the server runs without the capabilities that
bypass file permissions), with
unreadable, odd and vanishing entries. One bad entry never stops the scan of the others,
each is reported in its version's state without the server's paths, readiness says
whether the server can see what it should serve, and each problem is logged once."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from servers import Server
from test_serving_reliability import tensor, write_onnx


def identity(folder: Path) -> None:
    from onnx import helper

    write_onnx(folder, [helper.make_node("Identity", ["x"], ["y"])], [tensor("x", "FLOAT", 3)],
               [tensor("y", "FLOAT", 3)])  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """``m`` (versions 1 and 2) and ``other`` (1)."""
    root = tmp_path_factory.mktemp("permissions") / "models"
    for name, version in (("m", 1), ("m", 2), ("other", 1)):
        identity(root / name / str(version))
    yield root
    for folder, _, _ in os.walk(root):  # so pytest can remove them
        os.chmod(folder, 0o755)


@pytest.fixture(scope="module")
def server(repo):
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("the tests run as root and setpriv is missing: no way to drop file access")
    running = Server(repo, "--poll-seconds", "0.2", superuser_files=False)
    yield running
    running.stop()


def eventually(condition: Callable[[], object], seconds: float = 10) -> object:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.1)
    return result


def states(server: Server, name: str) -> dict[int, tuple[str, str]]:
    answer = httpx.get(f"{server.url}/v1/models/{name}").json()["model_version_status"]
    return {int(v["version"]): (v["state"], v["status"]["error_message"]) for v in answer}


def logged(server: Server, text: str) -> int:
    return sum(text in line for line in server.log.read_text().splitlines())


def quiet_polls() -> None:
    time.sleep(1.0)  # five polls: long enough for a repeated log line to show


def test_an_unreadable_version_stops_only_itself(server, repo):
    identity(repo / "m" / "3")
    (repo / "m" / "3").chmod(0)
    identity(repo / "m" / "4")
    shutil.rmtree(repo / "m" / "1")
    expected = {1: "END", 2: "AVAILABLE", 3: "END", 4: "AVAILABLE"}
    seen = eventually(
        lambda: (s := states(server, "m")) and {v: x[0] for v, x in s.items()} == expected and s
    )
    assert "Permission denied" in seen[3][1] and str(repo) not in seen[3][1], seen
    assert seen[1][1] == ""
    assert httpx.get(f"{server.url}/v2/models/m/versions/4/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/m/versions/1/ready").status_code == 404
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    entry = next(e for e in index if e["name"] == "m" and e["version"] == "3")
    assert entry["state"] == "UNAVAILABLE" and "Permission denied" in entry["reason"]
    quiet_polls()
    assert logged(server, "m version 3") == 1
    (repo / "m" / "3").chmod(0o755)
    eventually(lambda: states(server, "m")[3][0] == "AVAILABLE")


def test_an_unreadable_model_folder_is_reported_once_and_readiness_says_so(server, repo):
    (repo / "other").chmod(0)
    try:
        eventually(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 503)
        assert httpx.get(f"{server.url}/v2/models/m/ready").status_code == 200
        quiet_polls()
        assert logged(server, "cannot scan model other") == 1
    finally:
        (repo / "other").chmod(0o755)
    eventually(lambda: httpx.get(f"{server.url}/v2/health/ready").status_code == 200)


def test_odd_entries_are_reported_or_ignored_and_vanishing_versions_end(server, repo):
    model = repo / "m"
    (model / "5").symlink_to(model / "missing")
    (model / "6").write_text("a file where a version folder belongs")
    os.mkfifo(model / "8")
    for odd in (b"\xff\xfe", b"9\xff"):  # names that are not UTF-8, in each kind of folder
        os.mkdir(os.fsencode(model) + b"/" + odd)
    os.mkdir(os.fsencode(repo) + b"/\xff")
    (model / "2" / os.fsdecode(b"\xff.bin")).write_bytes(b"")
    for name in ("99999999999999999999", "007", "0"):
        (model / name).mkdir()
    for _ in range(5):  # a version deleted while it loads, however the timing falls
        identity(model / "9")
        time.sleep(0.1)
        shutil.rmtree(model / "9")
    expected = {5: "END", 6: "END", 8: "END"}
    seen = eventually(lambda: (s := states(server, "m")) and all(
        v in s and s[v][0] == state for v, state in expected.items()) and s)  # fmt: skip
    assert "link to nothing" in seen[5][1] and "not a folder" in seen[6][1] + seen[8][1]
    quiet_polls()
    final = states(server, "m")
    assert final.get(9, ("END", ""))[0] == "END" and final[2][0] == "AVAILABLE"
    everything = httpx.get(f"{server.url}/v1/models/m").text
    everything += httpx.post(f"{server.url}/v2/repository/index").text
    assert str(repo) not in everything
    for line in ("m version 5", "m version 6", "'99999999999999999999' in model m", "'007'"):
        assert logged(server, line) == 1, line
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
