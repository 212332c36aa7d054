"""A real server process for the tests: ``python -m serving`` (what ``cfconv serve``
runs, without loading the library first) on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from cfconv_tf.bench.processes import free_port, wait_ready

MAX_BODY_MB = 1
WITHOUT_FILE_CAPABILITIES = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


class Server:
    """The server in a subprocess; stops it with SIGTERM.

    ``superuser_files=False``: when the tests run as root, the server runs without the
    capabilities that let root read and search any file (through ``setpriv``), so file
    permissions hold for it as for a deployment's unprivileged user.
    """

    def __init__(self, repo: Path, *extra: str, superuser_files: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = repo.parent / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [
                *([] if superuser_files or os.geteuid() else WITHOUT_FILE_CAPABILITIES),
                sys.executable,
                "-m",
                "serving",
                "--model-repo",
                str(repo),
                "--port",
                str(self.port),
                "--max-body-mb",
                str(MAX_BODY_MB),
                "--poll-seconds",
                "0.5",
                *extra,
            ],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(self.url + "/v2/health/ready", self.process)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(self.log.read_text()) from error

    def stop(self) -> None:
        """SIGTERM; the server and every process it started (its parsers) must be gone."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        self.assert_stopped_gracefully()
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"processes outlived the server: {alive}"

    def assert_stopped_gracefully(self, stop: int = signal.SIGTERM) -> None:
        """The server drains in-flight requests, runs the lifespan shutdown, then raises
        the signal ``stop`` again so the exit status says what ended the process."""
        assert self.process.wait(timeout=60) in (0, -stop)
        assert "Application shutdown complete" in self.log.read_text()
