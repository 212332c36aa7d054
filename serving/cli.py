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
from typing import Any

from serving.backends import BACKENDS
from serving.settings import DEFAULTS, DEVICES, ServerSettings

SETTING_FIELDS = {field.name: field for field in dataclasses.fields(ServerSettings)}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An option's positive number (also for `cfconv bench`'s rates)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _setting_option(
    parser: argparse.ArgumentParser, flag: str, setting: str, **options: Any
) -> None:
    """``flag`` for the field ``setting`` of :class:`ServerSettings`: its default and its
    description as help (a repeatable option starts from an empty list)."""
    default = [] if options.get("action") == "append" else getattr(DEFAULTS, setting)
    help_text = SETTING_FIELDS[setting].metadata["help"]
    parser.add_argument(flag, dest=setting, default=default, help=help_text, **options)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve``; defaults and help come from :class:`ServerSettings`."""
    parser.add_argument("--model-repo", required=True, help="<repo>/<name>/<version>/ folders")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8500, help="port to bind")
    _setting_option(parser, "--backend", "backend", choices=BACKENDS)
    _setting_option(parser, "--device", "device", choices=DEVICES)
    _setting_option(parser, "--provider", "providers", action="append")
    _setting_option(parser, "--threads", "threads", type=_positive_int)
    _setting_option(parser, "--max-batch-size", "max_batch_size", type=_positive_int)
    _setting_option(parser, "--max-delay-ms", "max_delay_ms", type=float)
    _setting_option(parser, "--max-queue-images", "max_queue_images", type=_positive_int)
    _mib_option(parser, "--max-body-mb", "max_body_bytes")
    _mib_option(parser, "--max-body-memory-mb", "max_body_memory_bytes")
    _setting_option(parser, "--max-image-pixels", "max_image_pixels", type=_positive_int)
    _setting_option(parser, "--max-request-pixels", "max_request_pixels", type=_positive_int)
    _setting_option(parser, "--poll-seconds", "poll_seconds", type=positive_float)
    _setting_option(parser, "--header-timeout", "header_timeout_s", type=positive_float)
    _setting_option(parser, "--body-timeout", "body_timeout_s", type=positive_float)
    _setting_option(parser, "--write-timeout", "write_timeout_s", type=positive_float)
    _setting_option(parser, "--keep-alive", "keep_alive_s", type=positive_float)
    _setting_option(parser, "--max-connections", "max_connections", type=_positive_int)
    _setting_option(parser, "--allowed-host", "allowed_hosts", action="append")
    _setting_option(parser, "--cors-origin", "cors_origins", action="append")
    parser.add_argument(
        "--auth-token-file",
        help="file holding " + SETTING_FIELDS["auth_token"].metadata["help"],
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server log level",
    )


def _mib_option(parser: argparse.ArgumentParser, flag: str, field: str) -> None:
    """An option in MiB for a setting held in bytes."""
    parser.add_argument(
        flag,
        type=positive_float,
        default=getattr(DEFAULTS, field) / 2**20,
        help="in MiB: " + SETTING_FIELDS[field].metadata["help"],
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
    "max_body_memory_bytes": lambda args: int(args.max_body_memory_mb * 2**20),
    "auth_token": lambda args: _auth_token(args.auth_token_file),
}


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The settings the parsed options ask for (reads the token file); an option's
    ``dest`` is its setting's name, repeated options become tuples."""
    values = {}
    for field in SETTING_FIELDS.values():
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
