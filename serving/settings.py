"""The server's settings, with their defaults, in one place (the CLI reads them from here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DEVICES = ("auto", "cpu", "cuda")  # onnxruntime devices a server can ask for


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything ``create_app`` and ``serve`` need; all but ``work_threads`` are options of
    ``cfconv serve``."""

    model_repo: Path
    backend: str = "onnxruntime"
    device: str = "auto"  # one of DEVICES
    providers: tuple[str, ...] = ()  # onnxruntime execution providers, overriding device
    threads: int | None = None  # onnxruntime intra-op threads (default: all cores)
    max_batch_size: int = 32  # images per inference call; larger requests are split
    max_delay_ms: float = 0.0  # how long a batch waits for company
    max_queue_images: int = 512  # per model version; beyond it requests get 503
    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = 16_000_000  # per decoded image (Pillow refuses 89M and up)
    max_request_pixels: int = 64_000_000  # per request, all images together
    poll_seconds: float = 2.0
    header_timeout_s: float = 10.0  # from connection (or last response) to complete headers
    body_timeout_s: float = 30.0  # to receive the whole body
    keep_alive_s: float = 5.0  # an idle connection is closed after this
    max_connections: int = 256  # beyond it new requests get 503
    allowed_hosts: tuple[str, ...] = ()  # Host header values; () = loopback names if bound there
    cors_origins: tuple[str, ...] = ()  # origins allowed cross-origin requests (none)
    auth_token: str | None = None  # required as "Authorization: Bearer <token>" if set
    work_threads: int = 2  # decoding and encoding, off the event loop

    def hosts_for(self, bind_host: str) -> tuple[str, ...]:
        """The Host allow-list for a server bound to ``bind_host`` (``("*",)``: any)."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK_HOSTS if bind_host in LOOPBACK_HOSTS else ("*",)


DEFAULTS = ServerSettings(model_repo=Path("."))
