"""Starting local server processes (the serving benchmark, tests): free ports and
readiness. Standard library only, so a test that needs a port loads nothing else."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 nothing listens on now (all are held
    at once while they are picked, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``url`` answers 200; fails if ``server`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the server process {server.args!r} exited with code {server.returncode} "
                f"before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)  # also after a 2xx that is not 200: no busy loop
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")
