"""uvicorn's HTTP/1.1 protocol with deadlines for slow peers and a drain that resets no one.

uvicorn closes a connection that sits idle between requests (``timeout_keep_alive``), but
on its own it waits forever for the headers of a request and for a client to read its
answers. Here every connection must

- deliver each request's complete headers within ``header_timeout`` seconds of
  connecting or of the previous response (the body has its own deadline, kept by the
  application while it reads);
- take its answers: once the server has to wait for the client to read (the transport's
  buffer is full), the client has ``write_timeout`` seconds to take everything written so
  far, or the connection is dropped. This bounds both a client that pipelines requests
  and never reads and one that reads a trickle; its task and its connection slot are
  freed, and a shutdown does not wait for it.

On shutdown uvicorn closes idle connections at once and the others after their answer,
which resets a connection whose next request is already on its way or in the server's
buffers. Here a draining connection answers its request in flight as usual; a request
that arrives afterwards gets 503 with ``Connection: close`` (its body read first, so the
close resets nothing), and a connection that stays idle for :data:`DRAIN_LINGER_S` is
closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.errors import send_json_error

log = logging.getLogger("cfconv.serve")
DRAIN_LINGER_S = 0.5  # an idle connection's last chance to send what is on its way


class DeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` with the deadlines and the drain of the module docstring."""

    header_timeout = 10.0
    body_timeout = 30.0
    write_timeout = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._draining = False
        self._arm()

    # --- the header deadline ---------------------------------------------------------
    def _arm(self) -> None:
        """Start waiting for the next request's headers."""
        self._cancel()
        self._waiting_since_cycle = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _cancel(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.cycle is self._waiting_since_cycle:  # no new request started in time
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_since_cycle:  # a request's headers are complete
            self._cancel()
            self._caught_up()

    # --- the write deadline ------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._caught_up()

    def _caught_up(self) -> None:
        """Stop the write deadline if the client has taken everything written."""
        if self._write_deadline is not None and not self.transport.get_write_buffer_size():
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_expired(self) -> None:
        self._write_deadline = None
        if self.transport.get_write_buffer_size():
            log.warning(
                "closed a connection whose client did not take its answer within %g s",
                self.write_timeout,
            )
            # a reset, not a close: after a close the kernel would still feed what its
            # buffers hold (megabytes) to the client at the client's pace
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    # --- the drain ---------------------------------------------------------------------
    def on_response_complete(self) -> None:
        # armed first: uvicorn may start a pipelined request right away, which the
        # deadline must see as started
        if not self.transport.is_closing():
            self._arm()
        self._caught_up()
        super().on_response_complete()
        if self._draining:
            self._close_when_idle()

    def shutdown(self) -> None:
        """Drain: later requests on this connection are refused, idle connections close."""
        self._draining = True
        self.app = self._refuse
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        """Close the connection after :data:`DRAIN_LINGER_S` if no request is in progress
        then (a request that arrives meanwhile is answered first)."""
        cycle = self.cycle

        def close() -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(DRAIN_LINGER_S, close)

    async def _refuse(self, scope, receive, send) -> None:
        """The application while draining: 503, after reading the request's body."""
        try:
            async with asyncio.timeout(self.body_timeout):
                while (await receive()).get("more_body"):
                    pass
        except TimeoutError:
            pass
        await send_json_error(
            send,
            503,
            "the server is shutting down; retry",
            [(b"connection", b"close"), (b"retry-after", b"1")],
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
        super().connection_lost(exc)


def protocol_with(
    header_timeout: float, body_timeout: float, write_timeout: float
) -> type[DeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with these deadlines."""
    return type(
        "Deadlines",
        (DeadlineProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "write_timeout": write_timeout,
        },
    )
