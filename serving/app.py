"""The ASGI application: TF Serving REST, KServe v2, an image endpoint and a demo page."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from serving import kserve, tfserving
from serving.errors import ClientError, PayloadTooLarge
from serving.inputs import decode_image
from serving.metrics import RequestMiddleware, ServerMetrics
from serving.repository import ModelRepository

log = logging.getLogger("cfconv.serve")
STATIC = Path(__file__).parent / "static"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    model_repo: Path
    backend: str = "onnxruntime"
    max_batch_size: int = 32
    max_delay_ms: float = 0.0
    max_body_bytes: int = 32 * 2**20
    poll_seconds: float = 2.0
    threads: int | None = None  # onnxruntime intra-op threads (default: all cores)


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status,
        headers=headers,
        media_type="application/json",
    )


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) anything over the configured limit."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> object:
    try:
        return orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as error:
        raise ClientError(f"malformed JSON: {error}") from error


def repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def served_model(request: Request):
    params = request.path_params
    return repository(request).get(params["name"], params.get("version"))


# --- TensorFlow Serving REST ---------------------------------------------------------
async def tf_predict(request: Request) -> Response:
    model = served_model(request)
    images, row_format = tfserving.parse_predict(await read_json(request), model)
    outputs = await model.predict(images)
    return json_response(tfserving.predict_response(outputs, row_format))


async def tf_status(request: Request) -> Response:
    model = served_model(request)
    loaded = repository(request).models[model.name]
    versions = [model.version] if "version" in request.path_params else sorted(loaded)
    return json_response(tfserving.status_response(versions))


async def tf_metadata(request: Request) -> Response:
    return json_response(tfserving.metadata_response(served_model(request)))


# --- KServe v2 -------------------------------------------------------------------------
async def v2_live(request: Request) -> Response:
    return json_response({"live": True})


async def v2_ready(request: Request) -> Response:
    ready = request.app.state.ready
    return json_response({"ready": ready}, 200 if ready else 503)


async def v2_server(request: Request) -> Response:
    return json_response(
        {"name": "cfconv-serve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    )


async def v2_model(request: Request) -> Response:
    model = served_model(request)
    versions = sorted(repository(request).models[model.name])
    return json_response(kserve.model_metadata(model, versions))


async def v2_model_ready(request: Request) -> Response:
    model = served_model(request)
    return json_response({"name": model.name, "ready": True})


async def v2_infer(request: Request) -> Response:
    model = served_model(request)
    body = await read_body(request)
    infer, binary = kserve.split_body(body, request.headers.get(kserve.HEADER_LENGTH))
    outputs = await model.predict(kserve.parse_infer(infer, binary, model))
    content, headers = kserve.infer_response(infer, model, outputs)
    media = "application/octet-stream" if headers else "application/json"
    return Response(content, 200, headers=headers, media_type=media)


# --- images and the demo page ----------------------------------------------------------
async def classify(request: Request) -> Response:
    """An image as a raw body or a multipart ``image`` field -> top-k labels."""
    model = served_model(request)
    top_k = request.query_params.get("top_k", "5")
    if not top_k.isdigit() or int(top_k) < 1:
        raise ClientError(f"top_k must be a positive integer, got {top_k[:16]!r}")
    body = await read_body(request)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):

        async def replay():
            yield body

        try:
            form = await MultiPartParser(request.headers, replay()).parse()
        except MultiPartException as error:
            raise ClientError(f"malformed multipart upload: {error.message}") from error
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ClientError('multipart upload needs a file field named "image"')
        data = await upload.read()
    else:
        data = body
    if not data:
        raise ClientError("empty request body: send an image")
    image = decode_image(data, model.input_size)[None]
    probabilities = (await model.predict(image))["probabilities"][0]
    order = np.argsort(-probabilities)[: int(top_k)]
    return json_response(
        {
            "model": model.name,
            "version": model.version,
            "predictions": [
                {
                    "label": model.class_names[i],
                    "class_index": int(i),
                    "probability": float(probabilities[i]),
                }
                for i in order
            ],
        }
    )


async def list_models(request: Request) -> Response:
    return json_response(
        {
            "models": [
                {
                    "name": name,
                    "versions": sorted(loaded),
                    "input_size": list(loaded[max(loaded)].input_size),
                    "class_names": loaded[max(loaded)].class_names,
                }
                for name, loaded in sorted(repository(request).models.items())
            ]
        }
    )


async def demo_page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def metrics(request: Request) -> Response:
    state = request.app.state
    state.metrics.models_loaded.set(sum(len(v) for v in state.repository.models.values()))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def client_error(request: Request, error: ClientError) -> Response:
    return json_response({"error": str(error)}, error.status)


async def server_error(request: Request, error: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("request_id=%s internal error", request_id)
    return json_response({"error": f"internal error (request id {request_id})"}, 500)


def _routes() -> list[Route]:
    model = "/v1/models/{name}"
    version = model + "/versions/{version}"
    v2_model_path = "/v2/models/{name}"
    v2_version = v2_model_path + "/versions/{version}"
    routes = [
        Route("/", demo_page),
        Route("/models", list_models),
        Route("/metrics", metrics),
        Route("/v2/health/live", v2_live),
        Route("/v2/health/ready", v2_ready),
        Route("/v2", v2_server),
    ]
    for base in (model, version):
        routes += [
            Route(base + ":predict", tf_predict, methods=["POST"]),
            Route(base + "/metadata", tf_metadata),
            Route(base, tf_status),
        ]
    for base in (v2_model_path, v2_version):
        routes += [
            Route(base + "/infer", v2_infer, methods=["POST"]),
            Route(base + "/ready", v2_model_ready),
            Route(base, v2_model),
        ]
    for base in ("/v1/classify/{name}", "/v1/classify/{name}/versions/{version}"):
        routes.append(Route(base, classify, methods=["POST"]))
    return routes


def create_app(settings: ServerSettings) -> Starlette:
    """The server application; models load in its lifespan and are watched for changes."""
    server_metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        repo = ModelRepository(
            settings.model_repo,
            settings.backend,
            executor,
            settings.threads,
            settings.max_batch_size,
            settings.max_delay_ms / 1e3,
            server_metrics.batch_size.observe,
        )
        await repo.refresh()
        app.state.repository, app.state.ready = repo, True
        log.info("serving %s from %s", sorted(repo.models), settings.model_repo)
        watcher = asyncio.create_task(repo.watch(settings.poll_seconds))
        try:
            yield
        finally:
            app.state.ready = False
            watcher.cancel()
            await repo.close()
            executor.shutdown(wait=True)

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={ClientError: client_error, Exception: server_error},
    )
    app.state.settings, app.state.metrics, app.state.ready = settings, server_metrics, False
    app.add_middleware(RequestMiddleware, metrics=server_metrics)
    return app
