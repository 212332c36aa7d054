"""Who may talk to the server: the Host allow-list, cross-origin requests, a bearer token.

- ``Host``: only the names the server is meant to be reached by (by default the loopback
  names when it is bound to loopback), so a web page cannot reach it through a DNS name
  rebound to 127.0.0.1. The health probes answer whatever the Host (an orchestrator
  probes by address).
- ``Origin``: a browser's cross-origin request is refused unless its origin was allowed
  (``--cors-origin``; CORS headers then come from Starlette's ``CORSMiddleware``), so a
  page on another site cannot post to the server, not even a "simple" ``text/plain``
  request that skips the browser's preflight.
- ``Authorization``: with ``--auth-token-file`` every request but the health probes and
  an allowed origin's CORS preflight (browsers send those without credentials) must send
  ``Bearer <token>``.

Refusals are JSON ``{"error": ...}`` like every other answer.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from serving.errors import send_json_error

HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")


def _host_name(host: str) -> str:
    """``host[:port]`` -> the lower-case host name (IPv6 keeps its brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _netloc(url: str) -> str | None:
    """The lower-case ``host:port`` of an origin URL (``None`` if it is not one)."""
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return None


class GuardMiddleware:
    """A pure ASGI middleware applying the three checks of the module docstring."""

    def __init__(
        self, app, hosts: tuple[str, ...], origins: tuple[str, ...], token: str | None
    ) -> None:
        self.app = app
        self.any_host = "*" in hosts
        self.hosts = {_host_name(host) for host in hosts}
        self.origins = set(origins)
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name: value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get(b"host", "")
        probe = scope["path"] in HEALTH_PATHS  # probes name the pod, and reveal nothing
        if not probe and not self.any_host and _host_name(host) not in self.hosts:
            await send_json_error(send, 400, f"this server does not answer to Host {host[:64]!r}")
            return
        origin = headers.get(b"origin")
        if origin is not None and origin not in self.origins and _netloc(origin) != host.lower():
            await send_json_error(send, 403, "cross-origin requests are not allowed")  # same-origin
            return  # requests carry an Origin too
        preflight = scope["method"] == "OPTIONS" and origin in self.origins  # no credentials
        if self.token is not None and not probe and not preflight:
            scheme, _, token = headers.get(b"authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.token.encode()
            ):
                await send_json_error(
                    send,
                    401,
                    "this server needs 'Authorization: Bearer <token>'",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        await self.app(scope, receive, send)
