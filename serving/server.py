"""``serve``: the application under uvicorn, with connection limits and graceful shutdown."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn

from serving.app import create_app
from serving.protocol import protocol_with
from serving.settings import ServerSettings


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on SIGHUP as on SIGINT and SIGTERM: a supervisor's
    hang-up (a closed terminal, a reload) must not drop the requests in flight. Like the
    others, SIGHUP is raised again once the server has stopped, so the exit status says
    what ended it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():  # signals reach only the main thread
                yield
            return
        previous = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)
        if signal.SIGHUP in self._captured_signals:
            signal.raise_signal(signal.SIGHUP)


def serve(
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8500,
    log_level: str = "info",
    shutdown_timeout: float = 30.0,
) -> None:
    """Serve until SIGINT, SIGTERM or SIGHUP; in-flight requests are answered before the
    process exits (:mod:`serving.protocol` says how connections drain).

    Connections must send each request's headers within ``header_timeout_s`` and its body
    within ``body_timeout_s``, and take their answers within ``write_timeout_s`` once the
    server waits for them; idle ones close after ``keep_alive_s``, and beyond
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
        http=protocol_with(
            settings.header_timeout_s, settings.body_timeout_s, settings.write_timeout_s
        ),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=shutdown_timeout,
    )
    DrainingServer(config).run()
