"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn closes a connection that sits idle between requests (``timeout_keep_alive``),
but waits forever for the headers of a request: a client that connects and sends
nothing, or trickles its headers a byte at a time, holds a connection as long as it
likes. Here every connection must deliver each request's complete headers within
``header_timeout`` seconds of connecting or of the previous response, or it is closed.
(The body has its own deadline, kept by the application while it reads.)
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` that closes connections slow to send request headers."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

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

    def on_response_complete(self) -> None:
        # armed first: uvicorn may start a pipelined request right away, which the
        # deadline must see as started
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with this deadline."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
