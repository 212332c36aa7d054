"""``cfconv serve``: run the application under uvicorn with graceful shutdown."""

from __future__ import annotations

import logging

import uvicorn

from serving.app import ServerSettings, create_app


def serve(
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8500,
    log_level: str = "info",
    shutdown_timeout: float = 30.0,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish before the process exits."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not settings.model_repo.is_dir():
        raise FileNotFoundError(f"model repository {settings.model_repo} does not exist")
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=shutdown_timeout,
    )
    uvicorn.Server(config).run()
