"""SIGTERM to a real `python -m app`: answers in flight finish, or are saved, never lost.

The model is a scripted server whose tokens the test releases one by one, so "the answer is
still running when the signal arrives" is a fact of the test, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_process import AppProcess
from tests.conftest import SSEEvent, read_events
from tests.fake_model import FakeModel, Script

# uvicorn re-raises the signal once its graceful shutdown is done, so the process ends "killed by
# SIGTERM" (status 143 under Docker), which tells a supervisor it stopped on request.
STOPPED_BY_SIGTERM = -signal.SIGTERM


@pytest.fixture(scope="module")
def model() -> Iterator[FakeModel]:
    with FakeModel() as fake:
        yield fake


@pytest.fixture
def start_instance(database_url: str, redis_url: str, model: FakeModel,
                   tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    started: list[AppProcess] = []

    def start(**env: str) -> AppProcess:
        instance = AppProcess({
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}", "OPENAI_API_KEY": "test-key",
            "OPENAI_BASE_URL": model.base_url, **env}, tmp_path / f"app-{len(started)}.log")
        started.append(instance)
        instance.wait_healthy()
        return instance

    yield start
    for instance in started:
        instance.stop()


async def next_event(events: AsyncIterator[SSEEvent]) -> SSEEvent:
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        return await anext(events)


async def until_refused(url: str) -> None:
    """Poll with new connections until the instance stops accepting them."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with httpx.AsyncClient() as fresh:
                    await fresh.get(f"{url}/healthz")
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                # Refused, or accepted from the backlog just as the listener closed and then
                # dropped unanswered: either way the instance takes no new request.
                return
            await asyncio.sleep(0.05)


async def start_stream(http: httpx.AsyncClient, answer: Script,
                       tokens_before_signal: int) -> tuple[Any, AsyncIterator[SSEEvent], list[str]]:
    response = await http.send(http.build_request("POST", "/chat/stream",
                                                  json={"message": "Can I return shoes?"}),
                               stream=True)
    assert response.status_code == 200
    events = read_events(response)
    meta = await next_event(events)
    assert meta.event == "meta"
    received = []
    for _ in range(tokens_before_signal):
        answer.release()
        token = await next_event(events)
        assert token.event == "token"
        received.append(token.data["text"])
    return response, events, received


async def test_an_answer_in_flight_finishes_after_sigterm(
        start_instance: Callable[..., AppProcess], model: FakeModel,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    answer = model.hold_default()
    instance = start_instance(SHUTDOWN_GRACE_S="30")
    async with httpx.AsyncClient(base_url=instance.url, timeout=30) as http:
        response, events, received = await start_stream(http, answer, tokens_before_signal=1)
        instance.terminate()
        # Draining: no new connection is taken, while the open stream goes on.
        await until_refused(instance.url)
        answer.release_all()
        rest = [event async for event in events]
        await response.aclose()

    assert [event.event for event in rest] == ["token"] * (len(answer.tokens) - 1) + ["done"]
    done = rest[-1].data
    assert done["status"] == "complete" and done["text"] == "".join(answer.tokens)
    assert received + [event.data["text"] for event in rest[:-1]] == answer.tokens
    assert await asyncio.to_thread(instance.wait) == STOPPED_BY_SIGTERM
    assert query("SELECT status, text FROM messages WHERE id = %s",
                 uuid.UUID(done["messageId"])) == [("complete", "".join(answer.tokens))]
    answer_lines = [line for line in instance.log_lines() if line.get("message") == "answer"]
    assert [line["status"] for line in answer_lines] == ["complete"]


async def test_an_answer_outlasting_the_grace_is_saved_as_interrupted_and_resumable(
        start_instance: Callable[..., AppProcess], model: FakeModel,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    answer = model.hold_default()
    instance = start_instance(SHUTDOWN_GRACE_S="1")
    async with httpx.AsyncClient(base_url=instance.url, timeout=30) as http:
        response, events, received = await start_stream(http, answer, tokens_before_signal=2)
        instance.terminate()
        # No more tokens are released: the grace period runs out with the answer half done.
        rest = [event async for event in events]
        await response.aclose()

    assert [event.event for event in rest] == ["error"]
    assert rest[0].data["code"] == "interrupted" and rest[0].data["retryable"] is True
    assert await asyncio.to_thread(instance.wait) == STOPPED_BY_SIGTERM
    rows = query("SELECT id, status, text FROM messages WHERE sender = 'ai' AND text = %s",
                 "".join(received))
    assert [(status, text) for _, status, text in rows] == [("interrupted", "".join(received))]
    answer_lines = [line for line in instance.log_lines() if line.get("message") == "answer"]
    assert [line["status"] for line in answer_lines] == ["interrupted"]
    assert answer_lines[0]["message_id"] == str(rows[0][0])[:8]
