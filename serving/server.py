"""``serve``: the application under uvicorn, with connection limits and graceful shutdown."""

from __future__ import annotations

import logging

import uvicorn

from serving.app import create_app
from serving.protocol import with_header_timeout
from serving.settings import ServerSettings


def serve(
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8500,
    log_level: str = "info",
    shutdown_timeout: float = 30.0,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits.

    Connections must send each request's headers within ``header_timeout_s`` and its body
    within ``body_timeout_s``, idle ones close after ``keep_alive_s``, and beyond
    ``max_connections`` concurrent connections or requests uvicorn answers 503.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not settings.model_repo.is_dir():
        raise FileNotFoundError(f"model repository {settings.model_repo} does not exist")
    config = uvicorn.Config(
        create_app(settings, host),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=with_header_timeout(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=shutdown_timeout,
    )
    uvicorn.Server(config).run()
