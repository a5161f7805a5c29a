"""The access middleware: request ids, one log line and metrics per request, streams unbuffered."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.access import AccessMiddleware
from app.logs import JsonFormatter, request_id_var
from app.metrics import Metrics


def tiny_app(metrics: Metrics) -> Starlette:
    async def history(request: Request) -> Response:
        return JSONResponse(
            {
                "state": request.state.request_id,
                "context": request_id_var.get(),
            }
        )

    return Starlette(
        routes=[Route("/chat/history/{sessionId}", history)],
        middleware=[Middleware(AccessMiddleware, metrics=metrics)],
    )


async def get(app: Starlette, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


async def test_request_id_is_kept_returned_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = await get(tiny_app(metrics), "/chat/history/abc", {"X-Request-ID": "edge-42"})

    assert response.headers["X-Request-ID"] == "edge-42"
    assert response.json() == {"state": "edge-42", "context": "edge-42"}
    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["request_id"] == "edge-42"
    assert line["route"] == "/chat/history/{sessionId}"
    assert line["status"] == 200 and line["method"] == "GET"
    assert isinstance(line["latency_ms"], float)


async def test_metrics_use_the_route_template_and_lump_unknown_paths() -> None:
    metrics = Metrics()
    app = tiny_app(metrics)
    generated = await get(app, "/chat/history/one")
    await get(app, "/chat/history/two")
    await get(app, "/wp-admin/install.php")

    assert len(generated.headers["X-Request-ID"]) == 32
    body = metrics.exposition()[0].decode()
    assert (
        'chat_http_requests_total{method="GET",route="/chat/history/{sessionId}",status="200"} 2.0'
        in body
    )
    assert 'chat_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in body
    assert "/chat/history/one" not in body and "wp-admin" not in body


async def test_a_stream_passes_through_frame_by_frame_and_counts_as_active() -> None:
    """The app writes its second frame only once the client has received the first one."""
    metrics = Metrics()
    first_frame_delivered = asyncio.Event()
    active_while_streaming: list[float] = []

    async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await first_frame_delivered.wait()
        active_while_streaming.append(metrics.registry.get_sample_value("chat_active_streams"))
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    received: list[Message] = []

    async def client_send(message: Message) -> None:
        received.append(message)
        if message.get("body") == b"data: 1\n\n":
            first_frame_delivered.set()

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: Scope = {"type": "http", "method": "POST", "path": "/chat/stream", "headers": []}
    # A buffering middleware would hold frame 1 back and never let the app reach frame 2.
    await asyncio.wait_for(AccessMiddleware(sse_app, metrics)(scope, no_body, client_send), 10)

    assert [message.get("body") for message in received[1:]] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert active_while_streaming == [1.0]
    assert metrics.registry.get_sample_value("chat_active_streams") == 0
    assert (b"x-request-id", scope["state"]["request_id"].encode()) in received[0]["headers"]
