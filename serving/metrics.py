"""Prometheus metrics and request IDs, as a pure ASGI middleware (cheap per request)."""

from __future__ import annotations

import logging
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("cfconv.serve")

PROTOCOLS = (("/v1/models", "tfserving"), ("/v2", "kserve"), ("/v1/classify", "image"))


def protocol_of(path: str) -> str:
    return next((name for prefix, name in PROTOCOLS if path.startswith(prefix)), "other")


class ServerMetrics:
    """The server's metrics, in their own registry (so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cfconv_requests",
            "HTTP requests by protocol and status",
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
            "images per inference call",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.models_loaded = Gauge(
            "cfconv_model_versions_loaded", "loaded model versions", registry=self.registry
        )


class RequestMiddleware:
    """Give every request an ID (``X-Request-ID``, kept if the client sent one), count
    it, time it and log one line for it."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            protocol = protocol_of(scope["path"])
            self.metrics.requests.labels(protocol, str(status)).inc()
            self.metrics.latency.labels(protocol).observe(elapsed)
            log.info(
                "request_id=%s %s %s %d %.1fms",
                request_id,
                scope["method"],
                scope["path"],
                status,
                elapsed * 1e3,
            )
