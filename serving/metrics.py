"""Prometheus metrics, request IDs and the one log line per request (a pure ASGI middleware).

Request IDs a client sends are kept if they are short and plain (letters, digits and
``._:-``), else replaced by a fresh one; the log line escapes every control and non-ASCII
character of the path, so no request can forge or garble a log line. A request whose
client went away is logged and counted as status 499, not as an error; an exception the
application did not turn into an answer is a 500 with the request's ID, logged with its
traceback.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.errors import send_json_error

log = logging.getLogger("cfconv.serve")

PROTOCOLS = (("/v1/models", "tfserving"), ("/v2", "kserve"), ("/v1/classify", "image"))
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
CLIENT_GONE = 499  # nginx's status for "the client closed the connection"


def protocol_of(path: str) -> str:
    return next((name for prefix, name in PROTOCOLS if path.startswith(prefix)), "other")


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control and non-ASCII characters escaped (``\\r``, ``\\x1b``, ``\\u2028``)."""
    return text[:limit].encode("unicode_escape").decode("ascii")


class ServerMetrics:
    """The server's metrics, in their own registry (so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cfconv_requests",
            "HTTP requests by protocol and status (499: the client went away)",
            ["protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cfconv_request_seconds",
            "request latency by protocol",
            ["protocol"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "cfconv_batch_size",
            "items per inference call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.models_loaded = Gauge(
            "cfconv_model_versions_loaded", "loaded model versions", registry=self.registry
        )
        self.load_failures = Counter(
            "cfconv_model_load_failures",
            "failed attempts to load a model version",
            ["model"],
            registry=self.registry,
        )


class RequestMiddleware:
    """Give every request an ID (``X-Request-ID``, kept if the client sent a plain one),
    count it, time it and log one line for it."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = sent.decode("ascii") if REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), CLIENT_GONE

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("ascii")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug, not the client's doing: a 500 with this request's ID
            log.exception("request_id=%s internal error", request_id)
            if status == CLIENT_GONE:  # nothing was sent yet
                await send_json_error(
                    send_with_id, 500, f"internal error (request id {request_id})"
                )
        finally:
            elapsed = time.perf_counter() - start
            protocol = protocol_of(scope["path"])
            self.metrics.requests.labels(protocol, str(status)).inc()
            self.metrics.latency.labels(protocol).observe(elapsed)
            log.info(
                "request_id=%s %s %s %d %.1fms%s",
                request_id,
                printable(scope["method"], 16),
                printable(scope["path"]),
                status,
                elapsed * 1e3,
                " (client disconnected)" if status == CLIENT_GONE else "",
            )
