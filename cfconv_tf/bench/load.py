"""Open-loop load: requests sent at a fixed rate whatever the server's pace.

A closed-loop generator (``wrk``: N clients, each sending its next request when the
last is answered) slows down with the server, so a stall delays the requests that would
have been sent meanwhile and their waiting is never measured (coordinated omission).
Here request ``i`` is due at ``start + i / rate``; it is sent then on an idle kept-alive
connection (a new one when none is idle, up to ``max_connections``, else it waits for
one), and its latency runs from the time it was due to its answer, so every wait a
stall causes is counted. Standard library only (asyncio streams, HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

PERCENTILES = (50, 90, 99)


def latency_percentiles(latencies_s: list[float]) -> dict[str, float]:
    """``p50_ms``, ``p90_ms``, ``p99_ms`` of latencies in seconds (NaN with none)."""
    values = np.percentile(latencies_s, PERCENTILES) * 1e3 if latencies_s else [np.nan] * 3
    return {f"p{p}_ms": float(value) for p, value in zip(PERCENTILES, values, strict=True)}


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _exchange(connection: Connection, request: bytes) -> tuple[int, bool]:
    """Send ``request`` and read its answer (with a ``Content-Length``): the status, and
    whether the connection stays open."""
    reader, writer = connection
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers.get("connection", "").lower() != "close"


async def open_loop(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    rate: float,
    seconds: float,
    max_connections: int = 64,
) -> dict[str, float]:
    """POST ``body`` to ``path`` at ``rate`` requests/s for ``seconds``: completed
    requests/s, latency percentiles (from the due time) and errors (a status other
    than 200, or a failed exchange)."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    request = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    request += body
    idle: asyncio.Queue = asyncio.Queue()
    opened, latencies, errors = 0, [], 0

    async def one(due: float) -> None:
        nonlocal opened, errors
        if idle.empty() and opened < max_connections:
            opened += 1
            connection = None
        else:
            connection = await idle.get()  # None: a slot whose connection was closed
        try:
            connection = connection or await asyncio.open_connection(host, port)
            status, keep_alive = await _exchange(connection, request)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status, keep_alive = 0, False
        if status == 200:  # a refusal (503) is quick and would flatter both numbers
            latencies.append(time.perf_counter() - due)
        errors += status != 200
        if not keep_alive and connection is not None:
            connection[1].close()
        idle.put_nowait(connection if keep_alive else None)

    count = max(1, round(rate * seconds))
    start = time.perf_counter()
    tasks = []
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not idle.empty():
        if (connection := idle.get_nowait()) is not None:
            connection[1].close()
    return {
        "requests_per_s": len(latencies) / elapsed,
        **latency_percentiles(latencies),
        "errors": errors,
    }
