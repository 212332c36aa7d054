"""The micro-batcher and the body reader on their own, without a server process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.app import INLINE_PARSE_BYTES, received_body
from serving.batching import MicroBatcher
from serving.errors import PayloadTooLarge
from serving.settings import ServerSettings


def doubled_after(release: threading.Event, batch_sizes: list[int]):
    """A model that doubles its input once ``release`` is set, noting each call's size."""

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        release.wait(5)
        batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    return predict


def test_a_cancelled_request_does_not_let_an_unfitting_one_into_the_batch():
    """Queue: [ready item, cancelled item, item of another shape and too many items].
    Dropping the cancelled one must not skip the checks on the one behind it."""

    async def scenario() -> tuple[list[int], dict, dict]:
        release, sizes = threading.Event(), []
        batcher = MicroBatcher(doubled_after(release, sizes), "test", max_batch_size=4)
        busy = asyncio.create_task(batcher.submit({"x": np.ones((1, 2))}))
        await asyncio.sleep(0.05)  # the lane is computing `busy`, the rest queue up
        ready = asyncio.create_task(batcher.submit({"x": np.ones((1, 2))}))
        cancelled = asyncio.create_task(batcher.submit({"x": np.ones((1, 2))}))
        other = asyncio.create_task(batcher.submit({"x": np.ones((4, 3))}))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        results = await asyncio.gather(busy, ready, other)
        await batcher.close()
        return sizes, results[1], results[2]

    sizes, ready, other = asyncio.run(scenario())
    np.testing.assert_array_equal(ready["y"], np.full((1, 2), 2.0))
    np.testing.assert_array_equal(other["y"], np.full((4, 3), 2.0))
    assert max(sizes) <= 4, sizes


def test_a_request_larger_than_the_byte_bound_runs_when_nothing_else_waits():
    """The byte bound keeps many requests from piling up; one request alone, whatever its
    decoded size, must not be told to retry forever."""

    async def scenario() -> dict:
        release = threading.Event()
        release.set()
        batcher = MicroBatcher(doubled_after(release, []), "test", max_queue_bytes=64)
        result = await batcher.submit({"x": np.ones((4, 8))})  # 256 bytes
        await batcher.close()
        return result

    np.testing.assert_array_equal(asyncio.run(scenario())["y"], np.full((4, 8), 2.0))


def test_a_body_limit_below_the_inline_size_is_enforced():
    """``--max-body-mb`` under the inline-parse size still refuses a larger body."""
    limit = INLINE_PARSE_BYTES // 4

    async def echo_size(request: Request) -> Response:
        try:
            async with received_body(request, INLINE_PARSE_BYTES) as body:
                return Response(str(len(body)))
        except PayloadTooLarge as error:
            return Response(str(error), status_code=413)

    app = Starlette(routes=[Route("/", echo_size, methods=["POST"])])
    app.state.settings = ServerSettings(model_repo=Path("."), max_body_bytes=limit)

    async def post(size: int) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/", content=b"x" * size)

    assert asyncio.run(post(limit)).text == str(limit)
    refused = asyncio.run(post(limit + 1))
    assert refused.status_code == 413, refused.text
