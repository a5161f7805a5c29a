"""The access middleware: a request id for every request, and its log line and metrics.

A pure ASGI middleware rather than Starlette's BaseHTTPMiddleware, which runs the response
through a memory stream and a task group of its own: that is the wrong place for an SSE answer,
whose frames must reach the client the moment they are written, and whose request may outlive a
client that has gone. This one only watches the `send` calls go by and passes each one on at once.
"""

from __future__ import annotations

import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import log_request, request_id_from, request_id_var
from app.metrics import UNMATCHED_ROUTE, Metrics

REQUEST_ID_HEADER = "X-Request-ID"


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/chat/history/{sessionId}`), never the raw path."""
    route = scope.get("route")
    if route is None:
        # Refused by a middleware before routing (a rate limit, a foreign origin): match here.
        for candidate in getattr(scope.get("app"), "routes", ()):
            if candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class AccessMiddleware:
    """Gives each HTTP request an id (returned as X-Request-ID), then logs and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))
        # Handlers read it from request.state; answer tasks started here inherit the context var.
        scope.setdefault("state", {})["request_id"] = request_id
        context_token = request_id_var.set(request_id)
        started = time.perf_counter()
        # A request that raises before it answers is rendered as a 500 further out.
        status = 500
        streaming = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                streaming = headers.get("content-type", "").startswith("text/event-stream")
                if streaming:
                    self.metrics.active_streams.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            if streaming:
                self.metrics.active_streams.dec()
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.observe_request(route, method, status, elapsed)
            log_request(request_id, method, route, status, elapsed * 1000)
            request_id_var.reset(context_token)
