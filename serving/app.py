"""The ASGI application: TF Serving REST, KServe v2 (with Triton's extensions), an image
endpoint and a demo page for image classifiers.

The event loop only routes: bodies are parsed, images decoded and JSON converted to
arrays in a small pool of processes (:mod:`serving.parsing`), a few requests at a time;
answers are encoded on worker threads; each model version infers on its own lane
(:mod:`serving.batching`). So health probes answer at once whatever the other requests
carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from export.names import PROBABILITIES
from serving import encodings, kserve, parsing, tfserving
from serving.devices import execution_providers
from serving.errors import (
    ClientError,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from serving.guard import GuardMiddleware
from serving.images import PixelBudget
from serving.metrics import CLIENT_GONE, RequestMiddleware, ServerMetrics
from serving.parsing import parser_pool
from serving.repository import AVAILABLE, ModelRepository, ServedModel
from serving.settings import ServerSettings

log = logging.getLogger("cfconv.serve")
STATIC = Path(__file__).parent / "static"
INLINE_PARSE_BYTES = 1 << 20  # bodies up to this size are parsed on a thread
TOP_K = re.compile(r"[0-9]{1,4}")


def _numpy_scalar(value: object) -> object:
    if isinstance(value, np.generic):  # orjson takes numpy arrays, not numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(content: object) -> bytes:
    return orjson.dumps(content, default=_numpy_scalar, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(encode_json(content), status, headers=headers, media_type="application/json")


async def off_loop(request: Request, function: Callable, *args):
    """Run CPU-heavy ``function(*args)`` on the worker threads, not the event loop."""
    return await asyncio.get_running_loop().run_in_executor(request.app.state.work, function, *args)


async def answer(
    request: Request,
    body: bytes,
    headers: dict[str, str] | None = None,
    media_type: str = "application/json",
) -> Response:
    """An inference answer, compressed off the event loop when the client accepts it
    (:mod:`serving.encodings`)."""
    headers = {**(headers or {}), "Vary": "Accept-Encoding"}
    coding = encodings.answer_coding(request.headers.get("accept-encoding", ""))
    if coding is not None:
        body = await off_loop(request, encodings.compress, body, coding)
        headers["Content-Encoding"] = coding
    return Response(body, 200, headers=headers, media_type=media_type)


async def json_answer(request: Request, content: object) -> Response:
    """A JSON inference answer, encoded off the event loop (outputs can be large)."""
    return await answer(request, await off_loop(request, encode_json, content))


def declared_length(request: Request) -> int | None:
    """The body size a request declares: its ``Content-Length`` when that decides it (no
    ``Transfer-Encoding``, which would take precedence)."""
    declared = request.headers.get("content-length", "")
    if "transfer-encoding" in request.headers or not (declared.isascii() and declared.isdigit()):
        return None
    return int(declared)


@contextlib.asynccontextmanager
async def received_body(request: Request, limit: int | None = None):
    """The request body within ``limit`` (``--max-body-mb`` or less; 413 beyond) and the
    body deadline (408), counted in the server's :class:`BodyMemory` from its first byte
    until the ``async with`` block that uses it ends (its parse included)."""
    settings: ServerSettings = request.app.state.settings
    memory = BodyMemory.of(request.app)
    limit = min(limit or settings.max_body_bytes, settings.max_body_bytes)
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"a request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    try:
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    if size + len(chunk) > limit:
                        raise PayloadTooLarge(f"the request body exceeds the {limit}-byte limit")
                    memory.take(len(chunk))
                    size += len(chunk)
                    chunks.append(chunk)
        except TimeoutError as error:
            raise RequestTimeout(
                f"the request body did not arrive within {settings.body_timeout_s:g} s"
            ) from error
        body = b"".join(chunks)
        chunks.clear()
        yield body
    finally:
        memory.give(size)


class BodyMemory:
    """The bytes of request bodies held, from their first byte to the end of their parse,
    all requests together, within ``limit``: many clients that each send a large body
    (quickly, or most of it and then stall) cannot make the server hold
    ``max_connections`` bodies. Counts what arrived, not what a request declares, so a
    client that promises much and sends little takes little."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    @classmethod
    def of(cls, app: Starlette) -> BodyMemory:
        """The app's body memory, made on first use from its settings."""
        if not hasattr(app.state, "body_memory"):
            app.state.body_memory = cls(app.state.settings.max_body_memory_bytes)
        return app.state.body_memory

    def take(self, size: int) -> None:
        """Count ``size`` more bytes held, or 503 when they would pass the limit."""
        if self.held + size > self.limit:
            raise ServiceUnavailable("the server is receiving too many request bodies; retry")
        self.held += size

    def give(self, size: int) -> None:
        """``size`` bytes of a body are no longer held."""
        self.held -= size


async def intake(request: Request, parse: Callable, *args):
    """``parse(body, *args)`` off the event loop.

    The body is read first, within the body deadline (408 beyond it), holding nothing but
    its connection: a client that promises a large body and sends it slowly, or never,
    keeps no one else waiting. A small body (up to :data:`INLINE_PARSE_BYTES`) is parsed
    on a worker thread: its parse holds the GIL only briefly, and many small requests
    arriving together must all reach the batcher to share a call. A larger or compressed
    one (how large a compressed body is shows only as it is inflated, within the body
    limit) is parsed in a parser process (:mod:`serving.parsing`), a few at a time; it
    waits for its turn at most the body deadline (then 503). Bodies, from their first
    byte to the end of their parse, hold at most ``--max-body-memory-mb`` together (503
    beyond it).
    """
    async with received_body(request) as body:
        return await _parsed(request, body, parse, *args)


async def _parsed(request: Request, body: bytes, parse: Callable, *args):
    """``parse(body, *args)`` on a worker thread, or in a parser process (see ``intake``)."""
    state = request.app.state
    coding = encodings.request_coding(", ".join(request.headers.getlist("content-encoding")))
    if coding is None and len(body) <= INLINE_PARSE_BYTES:
        return await off_loop(request, parse, body, *args)
    if coding is not None:
        parse = functools.partial(parsing.inflated, parse, coding, state.settings.max_body_bytes)
    try:
        async with asyncio.timeout(state.settings.body_timeout_s):
            await state.intake.acquire()
    except TimeoutError as error:
        raise ServiceUnavailable("the server is busy parsing other large requests") from error
    try:
        parsers = state.parsers
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(parsers, parse, body, *args)
        except BrokenProcessPool as error:  # a parser died (out of memory): start afresh
            await replace_parsers(request.app, parsers)
            raise ServiceUnavailable("the request could not be parsed now; retry") from error
    finally:
        state.intake.release()


async def replace_parsers(app: Starlette, broken: ProcessPoolExecutor) -> None:
    """Replace a broken parser pool, once, however many requests saw it break."""
    async with app.state.parsers_lock:
        if app.state.parsers is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            app.state.parsers = await asyncio.to_thread(
                parser_pool, app.state.settings.work_threads
            )


def budget(request: Request) -> PixelBudget:
    settings: ServerSettings = request.app.state.settings
    return PixelBudget(settings.max_image_pixels, settings.max_request_pixels)


def repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def served_model(request: Request) -> ServedModel:
    params = request.path_params
    return repository(request).get(params["name"], params.get("version"))


# --- TensorFlow Serving REST ---------------------------------------------------------
async def tf_predict(request: Request) -> Response:
    model = served_model(request)
    inputs, row_format = await intake(
        request, parsing.tf_predict, model.backend.inputs, budget(request)
    )
    outputs = await model.predict(inputs)
    return await json_answer(request, tfserving.predict_response(outputs, row_format))


async def tf_status(request: Request) -> Response:
    states = repository(request).version_states(request.path_params["name"])
    version = request.path_params.get("version")
    if version is not None:
        states = {number: state for number, state in states.items() if str(number) == version}
        if not states:
            raise NotFound(f"model {request.path_params['name']!r} has no version {version[:32]!r}")
    return json_response(tfserving.status_response(states))


async def tf_metadata(request: Request) -> Response:
    model = served_model(request)
    return json_response(tfserving.metadata_response(model.name, model.version, model.backend))


# --- KServe v2 and Triton's extensions --------------------------------------------------
async def v2_live(request: Request) -> Response:
    return json_response({"live": True})


async def v2_ready(request: Request) -> Response:
    ready = request.app.state.ready and not repository(request).stuck()
    return json_response({"ready": ready}, 200 if ready else 503)


async def v2_server(request: Request) -> Response:
    return json_response(
        {
            "name": "cfconv-serve",
            "version": "0.1.0",
            "extensions": ["binary_tensor_data", "classification"],
        }
    )


async def v2_model(request: Request) -> Response:
    model = served_model(request)
    versions = sorted(repository(request).models[model.name])
    return json_response(kserve.model_metadata(model.name, versions, model.backend))


async def v2_model_ready(request: Request) -> Response:
    model = served_model(request)
    return json_response({"name": model.name, "ready": True})


async def v2_infer(request: Request) -> Response:
    model = served_model(request)
    length = request.headers.get(kserve.HEADER_LENGTH)
    backend = model.backend
    identifier, inputs, chosen = await intake(
        request, parsing.v2_infer, length, backend.inputs, backend.outputs
    )
    outputs = await model.predict(inputs)
    content, headers = await off_loop(
        request,
        kserve.infer_response,
        identifier,
        model.name,
        model.version,
        outputs,
        chosen,
        backend.output_labels,
    )
    media = "application/octet-stream" if headers else "application/json"
    return await answer(request, content, headers, media)


async def v2_config(request: Request) -> Response:
    model = served_model(request)
    settings: ServerSettings = request.app.state.settings
    return json_response(kserve.model_config(model.name, model.backend, settings.max_batch_size))


async def v2_statistics(request: Request) -> Response:
    repo = repository(request)
    if "name" in request.path_params:
        chosen = (
            [served_model(request)]
            if "version" in request.path_params
            else [model for model in repo.models.get(request.path_params["name"], {}).values()]
        )
        if not chosen:
            served_model(request)  # the clear 404
    else:
        chosen = [model for loaded in repo.models.values() for model in loaded.values()]
    return json_response(
        {
            "model_stats": [
                kserve.model_statistics(model.name, model.version, model.batcher.statistics)
                for model in chosen
            ]
        }
    )


async def v2_repository_index(request: Request) -> Response:
    async with received_body(request, INLINE_PARSE_BYTES):
        pass  # an optional {"ready": bool}, unused
    entries = [
        {
            "name": name,
            "version": str(version),
            "state": "READY" if state.state == AVAILABLE else "UNAVAILABLE",
            "reason": state.error,
        }
        for name, versions in sorted(repository(request).states.items())
        for version, state in sorted(versions.items())
    ]
    return json_response(entries)


# --- images and the demo page ----------------------------------------------------------
async def classify(request: Request) -> Response:
    """An image as a raw body or a multipart ``image`` field -> the top-k labels."""
    model = served_model(request)
    classifier = model.backend.image_classifier
    if classifier is None:
        raise NotFound(f"model {model.name!r} is not an image classifier; use its :predict")
    top_k = request.query_params.get("top_k", "5")
    if not TOP_K.fullmatch(top_k) or int(top_k) < 1:
        raise ClientError(f"top_k must be a positive integer, got {top_k[:16]!r}")
    input_name, size = classifier
    content_type = request.headers.get("content-type", "")
    image = await intake(request, parsing.image, content_type, size, budget(request))
    probabilities = (await model.predict({input_name: image}))[PROBABILITIES][0]
    order = np.argsort(-probabilities)[: int(top_k)]
    names = model.backend.class_names
    return await json_answer(
        request,
        {
            "model": model.name,
            "version": model.version,
            "predictions": [
                {"label": names[i], "class_index": int(i), "probability": float(probabilities[i])}
                for i in order
            ],
        },
    )


async def list_models(request: Request) -> Response:
    models = []
    for name, loaded in sorted(repository(request).models.items()):
        backend = loaded[max(loaded)].backend
        classifier = backend.image_classifier
        models.append(
            {
                "name": name,
                "versions": sorted(loaded),
                "inputs": [[info.name, info.shape, info.dtype] for info in backend.inputs],
                "outputs": [[info.name, info.shape, info.dtype] for info in backend.outputs],
                "image_classifier": classifier is not None,
                "input_size": list(classifier[1]) if classifier else None,
                "class_names": backend.class_names if classifier else None,
            }
        )
    return json_response({"models": models})


async def demo_page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def metrics(request: Request) -> Response:
    state = request.app.state
    state.metrics.models_loaded.set(sum(len(v) for v in state.repository.models.values()))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- errors ---------------------------------------------------------------------------
async def http_error(request: Request, error: HTTPError) -> Response:
    return json_response({"error": str(error)}, error.status, error.headers)


async def routing_error(request: Request, error: HTTPException) -> Response:
    """Starlette's 404/405, in the protocols' JSON error shape."""
    return json_response({"error": str(error.detail)}, error.status_code, error.headers)


async def client_gone(request: Request, error: ClientDisconnect) -> Response:
    return Response(status_code=CLIENT_GONE)  # nobody reads it; the log says so


def _routes() -> list[Route]:
    routes = [
        Route("/", demo_page),
        Route("/models", list_models),
        Route("/metrics", metrics),
        Route("/v2/health/live", v2_live),
        Route("/v2/health/ready", v2_ready),
        Route("/v2", v2_server),
        Route("/v2/models/stats", v2_statistics),
        Route("/v2/repository/index", v2_repository_index, methods=["POST"]),
    ]
    for base in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
        routes += [
            Route(base + ":predict", tf_predict, methods=["POST"]),
            Route(base + "/metadata", tf_metadata),
            Route(base, tf_status),
        ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(base + "/infer", v2_infer, methods=["POST"]),
            Route(base + "/ready", v2_model_ready),
            Route(base + "/config", v2_config),
            Route(base + "/stats", v2_statistics),
            Route(base, v2_model),
        ]
    for base in ("/v1/classify/{name}", "/v1/classify/{name}/versions/{version}"):
        routes.append(Route(base, classify, methods=["POST"]))
    return routes


def create_app(settings: ServerSettings, bind_host: str = "127.0.0.1") -> Starlette:
    """The server application; models load in its lifespan and are watched for changes.

    Raises:
        ValueError: execution providers that this onnxruntime does not have.
    """
    server_metrics = ServerMetrics()
    providers = (
        execution_providers(settings.device, settings.providers)
        if settings.backend == "onnxruntime"
        else ()
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        work = ThreadPoolExecutor(max_workers=settings.work_threads, thread_name_prefix="work")
        repo = ModelRepository(
            settings,
            providers,
            server_metrics.batch_size.observe,
            lambda name: server_metrics.load_failures.labels(name).inc(),
        )
        await repo.refresh()
        app.state.parsers = await asyncio.to_thread(parser_pool, settings.work_threads)
        app.state.repository, app.state.work, app.state.ready = repo, work, True
        app.state.intake = asyncio.Semaphore(2 * settings.work_threads)
        app.state.parsers_lock = asyncio.Lock()
        log.info("serving %s from %s on %s", sorted(repo.models), settings.model_repo, providers)
        watcher = asyncio.create_task(repo.watch())
        try:
            yield
        finally:
            app.state.ready = False
            watcher.cancel()
            await repo.close()
            work.shutdown(wait=False)
            await asyncio.to_thread(app.state.parsers.shutdown, True, cancel_futures=True)

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            HTTPError: http_error,
            HTTPException: routing_error,
            ClientDisconnect: client_gone,
        },
    )
    app.state.settings, app.state.metrics, app.state.ready = settings, server_metrics, False
    if settings.cors_origins:
        exposed = [kserve.HEADER_LENGTH, "x-request-id"]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "content-encoding", *exposed],
            expose_headers=exposed,
        )
    app.add_middleware(
        GuardMiddleware,
        hosts=settings.hosts_for(bind_host),
        origins=settings.cors_origins,
        token=settings.auth_token,
    )
    app.add_middleware(RequestMiddleware, metrics=server_metrics)
    return app
