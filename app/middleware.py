"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer the SSE streams).

- SecurityHeaders: nosniff, a referrer policy and a strict CSP on every response.
- OriginGuard: a browser on an origin that no site allows cannot call the chat API, even with
  a request that needs no preflight. (Which site a request is for is only known once its body
  is read: the endpoint then holds the origin to that site's own list, see app/endpoints.py.)
  Each refused origin is logged as a warning (RefusedOrigins), at most once per
  REFUSED_ORIGIN_LOG_S, so the owner sees why the widget "couldn't reach support".
- SiteCORS: CORS with the origins every site allows, read from the site directory, so a site
  created or changed while the app runs needs no restart.
- RequestLimit: works out the client's address once, and applies the per-IP limit that covers
  every endpoint except health checks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
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


def staff_path(path: str) -> bool:
    """The back office past its sign-in: an agent's inbox re-reads on every change of the
    site, far above the shoppers' per-IP rate, and everything there but the sign-in (which has
    its own limits, per IP and per account) needs a staff session first."""
    return path.startswith("/admin/") and path != "/admin/login"


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


def origin_allowed(origin: str, host: str | None, scheme: str, allowed: Collection[str]) -> bool:
    if origin in allowed or "*" in allowed:
        return True
    # The widget on our own pages is always allowed: same origin means same scheme and host
    # (an https page on another server that happens to share the host name is not ours).
    parts = urlsplit(origin)
    return parts.scheme.lower() == scheme and parts.netloc == host


# Where OriginGuard leaves the scheme the browser used (scope["state"]), for the endpoints'
# per-site check: it alone knows the trusted proxies whose X-Forwarded-Proto counts.
SCHEME_STATE = "browser_scheme"


def browser_scheme(scope: Scope) -> str:
    """The scheme the browser used, as OriginGuard read it (behind a trusted proxy too)."""
    return scope.get("state", {}).get(SCHEME_STATE) or str(scope.get("scheme", "http")).lower()


def refused_origin(scope: Scope, allowed: Collection[str]) -> str | None:
    """The request's Origin when a browser page outside `allowed` sent it, else None (a
    request with no Origin, such as curl's, is not a browser page's and is let through)."""
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    if not origin_allowed(origin, _header(scope, b"host"), browser_scheme(scope), allowed):
        return origin
    return None


class RefusedOrigins:
    """The warnings about refused origins: one line per origin and list per
    REFUSED_ORIGIN_LOG_S, from the guard (no site allows the origin) and from the endpoints
    (the site the request names does not)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (origin, the list it is missing from) -> when it was last logged
        self._logged: dict[tuple[str, str], float] = {}

    def note(self, origin: str, allowed: Collection[str], where: str) -> None:
        """Log that `origin` was refused; `where` names the list it is missing from."""
        origin = origin[:ORIGIN_LOG_CHARS]
        now = self._clock()
        last = self._logged.get((origin, where))
        if last is not None and now - last < REFUSED_ORIGIN_LOG_S:
            return
        if len(self._logged) >= REFUSED_ORIGINS_KEPT:
            cutoff = now - REFUSED_ORIGIN_LOG_S
            self._logged = {o: t for o, t in self._logged.items() if t >= cutoff}
            if len(self._logged) >= REFUSED_ORIGINS_KEPT:
                return  # a flood of made-up origins: what was logged already says enough
        self._logged[(origin, where)] = now
        listed = ", ".join(sorted(allowed)) or "(empty)"
        log.warning("refused a browser request from origin %r: it is not in %s (%s); if the"
                    " widget runs on that site, add the origin there", origin, where, listed)


def request_scheme(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The scheme the browser used: X-Forwarded-Proto from our own proxy, else the socket's."""
    if is_trusted_peer(scope, trusted_proxies):
        forwarded = _header(scope, b"x-forwarded-proto")
        if forwarded:
            # A chain of proxies appends; the client-facing one is the left-most.
            return forwarded.split(",")[0].strip().lower()
    return str(scope.get("scheme", "http")).lower()


def check_origin(scope: Scope, allowed: Collection[str], refusals: RefusedOrigins | None = None,
                 where: str = "ALLOWED_ORIGINS") -> None:
    """Raise OriginNotAllowed for a browser page outside `allowed`, logging it."""
    origin = refused_origin(scope, allowed)
    if origin is not None:
        if refusals is not None:
            refusals.note(origin, allowed, where)
        raise OriginNotAllowed()


# Where the guard's origins come from: ALLOWED_ORIGINS (the default site's) and `sites update`.
EVERY_SITE = "ALLOWED_ORIGINS or any site's origins (python -m app sites update KEY --origin ...)"


class OriginGuard:
    """Refuses a browser page on an origin that no site allows. `allowed_origins` is the list
    itself, or a function read on every request (the site directory's origins)."""

    def __init__(self, app: ASGIApp,
                 allowed_origins: Collection[str] | Callable[[], Collection[str]],
                 clock: Callable[[], float] = time.monotonic,
                 refusals: RefusedOrigins | None = None,
                 trusted_proxies: Sequence[Network] = ()) -> None:
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)
        if callable(allowed_origins):
            self.allowed_origins = allowed_origins
            self._where = EVERY_SITE
        else:
            fixed = frozenset(origin.rstrip("/") for origin in allowed_origins)
            self.allowed_origins = lambda: fixed
            self._where = "ALLOWED_ORIGINS"
        self.refusals = refusals if refusals is not None else RefusedOrigins(clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/chat/"):
            scope.setdefault("state", {})[SCHEME_STATE] = request_scheme(scope,
                                                                          self.trusted_proxies)
            try:
                check_origin(scope, self.allowed_origins(), self.refusals, self._where)
            except OriginNotAllowed as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)


class SiteCORS(CORSMiddleware):
    """Starlette's CORS, with the allowed origins asked for on every request."""

    def __init__(self, app: ASGIApp, allowed_origins: Callable[[], Collection[str]],
                 allow_methods: Sequence[str], allow_headers: Sequence[str],
                 expose_headers: Sequence[str], max_age: int) -> None:
        # No origin here: "*" would make Starlette answer every origin without asking.
        super().__init__(app, allow_origins=(), allow_methods=allow_methods,
                         allow_headers=allow_headers, expose_headers=expose_headers,
                         max_age=max_age)
        self.allowed_origins = allowed_origins

    def is_allowed_origin(self, origin: str) -> bool:
        allowed = self.allowed_origins()
        return origin in allowed or "*" in allowed


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
        if scope["path"] not in UNLIMITED_PATHS and scope["method"] != "OPTIONS" \
                and not staff_path(scope["path"]):
            try:
                await self.limits.check_request(limit_key(address))
            except AppError as error:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)
