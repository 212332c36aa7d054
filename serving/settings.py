"""The server's settings, with their defaults, in one place (the CLI reads them from here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DEVICES = ("auto", "cpu", "cuda")  # onnxruntime devices a server can ask for


def _setting(default: Any, description: str) -> Any:
    """A settings field with its description (``cfconv serve`` shows it as the help)."""
    return dataclasses.field(default=default, metadata={"help": description})


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything ``create_app`` and ``serve`` need; all but ``work_threads`` are options of
    ``cfconv serve``, whose help is each field's description."""

    model_repo: Path
    backend: str = _setting(
        "onnxruntime", "runtime: onnxruntime reads model.onnx, tf reads saved_model.pb"
    )
    device: str = _setting(
        "auto", "onnxruntime device: auto uses CUDA when onnxruntime-gpu and a GPU are present"
    )
    providers: tuple[str, ...] = _setting(
        (), "onnxruntime execution provider, in order of preference (overrides --device)"
    )
    threads: int | None = _setting(None, "onnxruntime intra-op threads (none: all cores)")
    max_batch_size: int = _setting(32, "images per inference call; larger requests are split")
    max_delay_ms: float = _setting(0.0, "how long a batch waits for more requests")
    max_queue_images: int = _setting(
        512, "images waiting per model version; beyond it requests get 503 + Retry-After"
    )
    max_body_bytes: int = _setting(32 * 2**20, "largest request body (413 beyond it)")
    max_body_memory_bytes: int = _setting(
        512 * 2**20,
        "request-body bytes held until parsed, all requests together (at least the largest "
        "body); a request that would pass it gets 503 + Retry-After",
    )
    max_image_pixels: int = _setting(
        16_000_000, "pixels per encoded image (Pillow refuses more than ~89M whatever this says)"
    )
    max_request_pixels: int = _setting(64_000_000, "pixels of all encoded images in one request")
    poll_seconds: float = _setting(2.0, "how often the repository is scanned for new versions")
    header_timeout_s: float = _setting(
        10.0,
        "seconds for a client to send a request's headers (from connecting or the last response)",
    )
    body_timeout_s: float = _setting(30.0, "seconds for a client to send a request's body")
    write_timeout_s: float = _setting(
        60.0,
        "seconds for a client to take an answer once the server has to wait for it to read "
        "(beyond it the connection is closed)",
    )
    keep_alive_s: float = _setting(5.0, "seconds an idle connection stays open")
    max_connections: int = _setting(256, "concurrent connections and requests; beyond it 503")
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        "accepted Host header (repeat; * for any); default: the loopback names when bound to "
        "loopback, else any",
    )
    cors_origins: tuple[str, ...] = _setting(
        (), "an origin allowed cross-origin requests (repeat); default none"
    )
    auth_token: str | None = _setting(
        None, "a token every request must send as 'Authorization: Bearer <token>'"
    )
    work_threads: int = _setting(2, "threads decoding and encoding, off the event loop")

    def __post_init__(self) -> None:
        if self.max_body_memory_bytes < self.max_body_bytes:
            raise ValueError(
                f"the body memory ({self.max_body_memory_bytes} bytes) must hold at least "
                f"the largest body ({self.max_body_bytes} bytes)"
            )

    def hosts_for(self, bind_host: str) -> tuple[str, ...]:
        """The Host allow-list for a server bound to ``bind_host`` (``("*",)``: any)."""
        if self.allowed_hosts:
            return self.allowed_hosts
        return LOOPBACK_HOSTS if bind_host in LOOPBACK_HOSTS else ("*",)


DEFAULTS = ServerSettings(model_repo=Path("."))
