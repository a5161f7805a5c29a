"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer the SSE streams).

- SecurityHeaders: nosniff, a referrer policy and a strict CSP on every response.
- OriginGuard: a browser on an origin outside ALLOWED_ORIGINS cannot call the chat API, even
  with a request that needs no preflight. Each refused origin is logged as a warning, at most
  once per REFUSED_ORIGIN_LOG_S, so the owner sees why the widget "couldn't reach support".
- RequestLimit: works out the client's address once, and applies the per-IP limit that covers
  every endpoint except health checks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .clientip import Network, client_ip, is_trusted_peer, limit_key
from .errors import AppError, error_body
from .ratelimit import RateLimits

log = logging.getLogger(__name__)

# The demo page loads only our own script and talks only to us; styles are inline in the
# widget's shadow root.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Not counted by the per-IP limit: health checks, and what every page view of the store loads
# (the widget script, the demo page and its icon, the API description): shoppers behind one NAT browsing
# the store must not be refused the widget itself.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/widget.js",
                             "/openapi.json", "/favicon.svg", "/favicon.ico"})


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                content_type = next((v for k, v in headers if k == b"content-type"), b"")
                csp = PAGE_CSP if content_type.startswith(b"text/html") else API_CSP
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"strict-origin-when-cross-origin"),
                            (b"content-security-policy", csp.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def send_error(send: Send, error: AppError) -> None:
    body = json.dumps(error_body(error.code, error.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class OriginNotAllowed(AppError):
    """A browser page on an origin the store did not allow called the chat API."""

    status = 403
    code = "origin_not_allowed"
    message = "This site is not allowed to use the chat."


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


# A page on a refused origin sends a request per question: one line per origin per few minutes.
REFUSED_ORIGIN_LOG_S = 300.0
# Origins remembered for that; any client can send any Origin, so the memory is bounded.
REFUSED_ORIGINS_KEPT = 1000
# An Origin header is the client's text: what goes into the log is cut to this.
ORIGIN_LOG_CHARS = 200


class OriginGuard:
    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str],
                 trusted_proxies: Sequence[Network] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed_origins)
        self.trusted_proxies = tuple(trusted_proxies)
        self._clock = clock
        # origin -> when it was last logged
        self._logged: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/chat/"):
            origin = _header(scope, b"origin")
            if origin is not None and not self._allowed(
                    origin, _header(scope, b"host"), request_scheme(scope, self.trusted_proxies)):
                self._log_refusal(origin)
                await send_error(send, OriginNotAllowed())
                return
        await self.app(scope, receive, send)

    def _log_refusal(self, origin: str) -> None:
        origin = origin[:ORIGIN_LOG_CHARS]
        now = self._clock()
        last = self._logged.get(origin)
        if last is not None and now - last < REFUSED_ORIGIN_LOG_S:
            return
        if len(self._logged) >= REFUSED_ORIGINS_KEPT:
            cutoff = now - REFUSED_ORIGIN_LOG_S
            self._logged = {o: t for o, t in self._logged.items() if t >= cutoff}
            if len(self._logged) >= REFUSED_ORIGINS_KEPT:
                return  # a flood of made-up origins: what was logged already says enough
        self._logged[origin] = now
        allowed = ", ".join(sorted(self.allowed)) or "(empty)"
        log.warning("refused a browser request from origin %r: it is not in ALLOWED_ORIGINS"
                    " (%s); if the widget runs on that site, add the origin there", origin,
                    allowed)

    def _allowed(self, origin: str, host: str | None, scheme: str) -> bool:
        if origin in self.allowed or "*" in self.allowed:
            return True
        # The widget on our own pages is always allowed: same origin means same scheme and host
        # (an https page on another server that happens to share the host name is not ours).
        parts = urlsplit(origin)
        return parts.scheme.lower() == scheme and parts.netloc == host


def request_scheme(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The scheme the browser used: X-Forwarded-Proto from our own proxy, else the socket's."""
    if is_trusted_peer(scope, trusted_proxies):
        forwarded = _header(scope, b"x-forwarded-proto")
        if forwarded:
            # A chain of proxies appends; the client-facing one is the left-most.
            return forwarded.split(",")[0].strip().lower()
    return str(scope.get("scheme", "http")).lower()


class RequestLimit:
    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[Network],
                 limits: RateLimits) -> None:
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = client_ip(scope, self.trusted_proxies)
        scope.setdefault("state", {})["client_ip"] = address
        if scope["path"] not in UNLIMITED_PATHS and scope["method"] != "OPTIONS":
            try:
                await self.limits.check_request(limit_key(address))
            except AppError as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)
