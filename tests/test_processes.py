"""Starting local server processes: distinct free ports, and readiness that fails fast."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from cfconv_tf.bench.processes import free_port, free_ports, wait_ready


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_wait_ready_reports_a_server_that_exits_with_its_code():
    server = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    url = f"http://127.0.0.1:{free_port()}/ready"
    with pytest.raises(RuntimeError, match=re.escape(f"exited with code 3 before {url}")):
        wait_ready(url, server, timeout=60)


def test_wait_ready_times_out_on_a_server_that_never_answers():
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError, match="did not answer 200 within 1 s"):
            wait_ready(f"http://127.0.0.1:{free_port()}/ready", server, timeout=1)
    finally:
        server.kill()
        server.wait()
