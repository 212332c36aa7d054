"""Turning request bodies into model inputs, in worker processes.

Parsing a large JSON body (and converting its numbers) holds Python's GIL for as long as
the parser runs, which in a thread of the server's own process would stall its event
loop, health probes included. So bodies are parsed in a small pool of processes:
each function here takes the body and the model's input signature (plain, picklable
values) and returns arrays, or raises the client error that says what was wrong.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from export.tensor_info import TensorInfo
from serving import kserve, tfserving
from serving.encodings import inflate
from serving.errors import ClientError
from serving.images import PixelBudget, decode_image
from serving.tensors import parse_json

Arrays = dict[str, np.ndarray]
PARENT_POLL_S = 0.5  # how often a parser process checks that the server still runs


def inflated(parse: Callable, coding: str, limit: int, body: bytes, *args):
    """``parse(body, *args)`` of a compressed body, inflated first (at most ``limit``
    bytes)."""
    return parse(inflate(body, coding, limit), *args)


def tf_predict(
    body: bytes, inputs: tuple[TensorInfo, ...], budget: PixelBudget
) -> tuple[Arrays, bool]:
    """A TF Serving predict body -> ``(inputs, row_format)``."""
    return tfserving.parse_predict(parse_json(body), inputs, budget)


def v2_infer(
    body: bytes,
    header_length: str | None,
    inputs: tuple[TensorInfo, ...],
    outputs: tuple[TensorInfo, ...],
) -> tuple[str | None, Arrays, list[kserve.RequestedOutput]]:
    """A KServe v2 body -> ``(request id, inputs, outputs to send and how)``."""
    request, binary = kserve.split_body(body, header_length)
    chosen = kserve.requested_outputs(request, outputs)
    return kserve.request_id(request), kserve.parse_infer(request, binary, inputs), chosen


def image(
    body: bytes, content_type: str, size: tuple[int, int, int], budget: PixelBudget
) -> np.ndarray:
    """A raw image body or a multipart upload's ``image`` field -> pixels ``[1, H, W, C]``."""
    data = _multipart_image(body, content_type) if content_type.startswith("multipart/") else body
    if not data:
        raise ClientError("empty request body: send an image")
    return decode_image(data, size, budget)[None]


def _multipart_image(body: bytes, content_type: str) -> bytes:
    async def replay():
        yield body

    async def parse() -> bytes:
        try:
            form = await MultiPartParser(Headers({"content-type": content_type}), replay()).parse()
        except MultiPartException as error:
            raise ClientError(f"malformed multipart upload: {error.message}") from error
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ClientError('a multipart upload needs a file field named "image"')
        return await upload.read()

    return asyncio.run(parse())


def exit_with(parent: int) -> None:
    """Run in each parser process: exit as soon as the server process ``parent`` is gone.

    A server stopped by a signal shuts its pool down, but one killed outright (SIGKILL,
    the out-of-memory killer) cannot, and its parsers (and with them the multiprocessing
    resource tracker, which lives until the last of them exits) would live on as orphans
    under a supervisor that watches the server's PID only. A thread polling the parent's
    PID works wherever the parser runs, unlike Linux's parent-death signal, which fires
    when the *thread* that started the process ends.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


def parser_pool(processes: int) -> ProcessPoolExecutor:
    """Worker processes for the functions above, started now (not on the first request),
    each ending with the server (:func:`exit_with`).

    Spawned, not forked: the server's process has threads (inference lanes, the event
    loop) that a fork would copy in an arbitrary state.
    """
    pool = ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=exit_with,
        initargs=(os.getpid(),),
    )
    for future in [pool.submit(parse_json, b"0") for _ in range(processes)]:
        future.result()
    return pool
