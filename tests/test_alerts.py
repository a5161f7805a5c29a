"""The alert webhook: a real loopback receiver gets the JSON when a conversation starts
waiting, after a refused first attempt (the retry), and the shopper never waits for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import alerts
from tests.conftest import FakeUpstream, RunningApp, stream_chat

WAIT_S = 15.0


class Receiver:
    """A webhook endpoint on loopback that refuses its first `failures` posts with a 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def hook(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.failures:
            self.failures -= 1
            return Response(status_code=503)
        self.posts.append(body)
        self.arrived.set()
        return Response("ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver(failures=1)
    app = Starlette(routes=[Route("/hooks/secret-token", hook.hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it failed to start: say why
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    hook.url = f"http://127.0.0.1:{port}/hooks/secret-token"
    yield hook
    server.should_exit = True
    await task


async def test_a_waiting_conversation_is_posted_to_the_webhook_with_retries(
        start_app: Callable[..., Any], upstream: FakeUpstream, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The backoff's first step, made short: the test waits on the post, not on the clock.
    monkeypatch.setattr(alerts, "FIRST_RETRY_S", 0.05)
    app: RunningApp = await start_app(alert_webhook_url=receiver.url)
    async with app.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "I need a person"})
                      )[0].data["sessionId"]
        handoff = await shopper.post(f"/chat/conversations/{session_id}/handoff")
        assert handoff.status_code == 200  # answered before the webhook got anything
        async with asyncio.timeout(WAIT_S):
            await receiver.arrived.wait()
        # Asked again while waiting: no second alert.
        assert (await shopper.post(f"/chat/conversations/{session_id}/handoff")).status_code == 200
    [post] = receiver.posts
    assert post["event"] == "conversation.waiting" and post["conversationId"] == session_id
    assert post["text"].startswith("A shopper on Default is waiting for a person")
    assert post["url"].endswith(f"/admin#{session_id}")
    assert "secret-token" not in caplog.text
