"""``python -m serving`` (and ``cfconv serve``): the server's command line.

Imports neither TensorFlow nor Keras, so a deployment image needs only onnxruntime, the
server's own dependencies and the models.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.backends import BACKENDS
from serving.settings import DEFAULTS, DEVICES, ServerSettings


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve``; defaults come from :class:`ServerSettings`."""
    d = DEFAULTS
    parser.add_argument("--model-repo", required=True, help="<repo>/<name>/<version>/ folders")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8500, help="port to bind")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=d.backend,
        help="runtime: onnxruntime reads model.onnx, tf reads saved_model.pb",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=d.device,
        help="onnxruntime device: auto uses CUDA when onnxruntime-gpu and a GPU are present",
    )
    parser.add_argument(
        "--provider",
        dest="providers",
        action="append",
        default=[],
        help="onnxruntime execution provider, in order of preference (overrides --device)",
    )
    parser.add_argument("--threads", type=_positive_int, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=d.max_batch_size,
        help="images per inference call; larger requests are split",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=d.max_delay_ms,
        help="how long a batch waits for more requests",
    )
    parser.add_argument(
        "--max-queue-images",
        type=_positive_int,
        default=d.max_queue_images,
        help="images waiting per model version; beyond it requests get 503 + Retry-After",
    )
    parser.add_argument(
        "--max-body-mb",
        type=_positive_float,
        default=d.max_body_bytes / 2**20,
        help="larger bodies get 413",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=d.max_image_pixels,
        help="pixels per encoded image",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=_positive_int,
        default=d.max_request_pixels,
        help="pixels of all encoded images in one request",
    )
    parser.add_argument(
        "--poll-seconds",
        type=_positive_float,
        default=d.poll_seconds,
        help="how often the repository is scanned for new versions",
    )
    parser.add_argument(
        "--header-timeout",
        dest="header_timeout_s",
        type=_positive_float,
        default=d.header_timeout_s,
        help="seconds for a client to send a request's headers",
    )
    parser.add_argument(
        "--body-timeout",
        dest="body_timeout_s",
        type=_positive_float,
        default=d.body_timeout_s,
        help="seconds for a client to send a request's body",
    )
    parser.add_argument(
        "--keep-alive",
        dest="keep_alive_s",
        type=_positive_float,
        default=d.keep_alive_s,
        help="seconds an idle connection stays open",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=d.max_connections,
        help="concurrent connections and requests; beyond it 503",
    )
    parser.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        default=[],
        help="accepted Host header (repeat; * for any); default: the loopback names when "
        "bound to loopback, else any",
    )
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        default=[],
        help="an origin allowed cross-origin requests (repeat); default none",
    )
    parser.add_argument(
        "--auth-token-file",
        help="file holding a token every request must send as 'Authorization: Bearer <token>'",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server log level",
    )


def _auth_token(path: str | None) -> str | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no auth token file at {file}")
    token = file.read_text().strip()
    if not token or any(ord(character) < 33 or ord(character) > 126 for character in token):
        raise ValueError(f"{file} must hold one token of printable ASCII characters")
    return token


_CONVERTED = {  # settings whose option holds something else than the setting itself
    "model_repo": lambda args: Path(args.model_repo),
    "max_body_bytes": lambda args: int(args.max_body_mb * 2**20),
    "auth_token": lambda args: _auth_token(args.auth_token_file),
}


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The settings the parsed options ask for (reads the token file); an option's
    ``dest`` is its setting's name, repeated options become tuples."""
    values = {}
    for field in dataclasses.fields(ServerSettings):
        if field.name in _CONVERTED:
            values[field.name] = _CONVERTED[field.name](args)
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return ServerSettings(**values)


def run(args: argparse.Namespace) -> None:
    """Serve with the parsed options until SIGINT/SIGTERM."""
    from serving.server import serve

    serve(settings_from(args), host=args.host, port=args.port, log_level=args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve a model repository over TF Serving REST and KServe v2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
    return 0
