"""Client errors the server answers with a 4xx status and a message, never a 500."""

from __future__ import annotations


class ClientError(Exception):
    """A request the server cannot serve as sent; ``status`` is the HTTP status."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(ClientError):
    status = 404


class PayloadTooLarge(ClientError):
    status = 413
