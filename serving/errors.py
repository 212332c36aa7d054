"""Answers the server gives instead of a result: a status, a message, maybe headers.

Every one is sent as ``{"error": "<message>"}`` (the error shape of TF Serving's REST API
and of KServe v2); none is a 500. Messages say what was wrong with the request and carry
no memory addresses or server paths.
"""

from __future__ import annotations

import orjson


class HTTPError(Exception):
    """A request the server answers with ``status`` and ``message`` (and ``headers``)."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class ClientError(HTTPError):
    """The request cannot be served as sent (400 unless a subclass says otherwise)."""


class NotFound(ClientError):
    status = 404


class RequestTimeout(ClientError):
    status = 408


class PayloadTooLarge(ClientError):
    status = 413


class UnsupportedMediaType(ClientError):
    status = 415


class ServiceUnavailable(HTTPError):
    """The server cannot take the request now (queue full, version unloaded): retry."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


async def send_json_error(send, status: int, message: str, headers: list | None = None) -> None:
    """Answer ``status`` with ``{"error": message}`` through the ASGI ``send`` (for code
    below the routing layer, which has no exception handlers)."""
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
