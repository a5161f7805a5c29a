"""An instance killed mid-answer: the answer ends as 'interrupted', never as an endless wait.

The producer is a real `python -m app` process (SIGKILL needs one), talking to the fake model
on loopback (tests/fake_model.py; respx cannot reach another process); the instance that
serves the resume runs in the test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import (
    ROOT,
    SSEEvent,
    free_port,
    parse_sse,
    read_events,
)
from tests.fake_model import FakeModel, Script

Query = Callable[..., list[tuple[Any, ...]]]
LEASE_S = 2


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeModel]:
    async with FakeModel() as model:
        yield model


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def spawn_instance(database_url: str, redis_url: str, redis_prefix: str,
                   tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """Start `python -m app` as its own process, sharing the test's database and Redis."""
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(openai_base_url: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
               "REDIS_PREFIX": redis_prefix, "OPENAI_BASE_URL": openai_base_url,
               "OPENAI_API_KEY": "test-key", "PORT": str(port), "ANSWER_LEASE_S": str(LEASE_S)}
        with (tmp_path / f"instance-{port}.log").open("wb") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        processes.append(process)
        return process, f"http://127.0.0.1:{port}"

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as http, asyncio.timeout(60):
        while True:
            assert process.poll() is None, "the instance exited at start"
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


def token_texts(events: list[SSEEvent]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


async def test_a_producer_killed_mid_answer_ends_the_resume_with_interrupted(
        fake_openai: FakeModel, spawn_instance: Callable[[str], Any],
        start_app: Callable[..., Any], redis_prefix: str, query: Query, raw_redis: aioredis.Redis) -> None:
    fake_openai.queue(Script([f"w{n} " for n in range(400)], delay=0.05))
    producer, producer_url = spawn_instance(fake_openai.base_url)
    other = await start_app(redis_prefix=redis_prefix, answer_lease_s=LEASE_S)
    await wait_until_serving(producer_url, producer)

    first: list[SSEEvent] = []
    async with httpx.AsyncClient(base_url=producer_url, timeout=10) as http, \
            http.stream("POST", "/chat/stream", json={"message": "hi"}) as response:
        async for event in read_events(response):
            first.append(event)
            if event.id == "5":
                break
    # Killed once token 5 is in Redis. (A token can reach the producer's own client a fraction of
    # a millisecond before its batch reaches Redis; a kill inside that window loses it from the
    # record, though not from that client's screen.)
    meta = first[0].data
    stream_key = f"{redis_prefix}:answer:{meta['messageId']}:events"
    assert await raw_redis.xread({stream_key: "4-1"}, count=1, block=10_000)
    producer.send_signal(signal.SIGKILL)
    producer.wait(timeout=10)
    assert query("SELECT status FROM messages WHERE id = %s", meta["messageId"]) == [
        ("streaming",)]

    async with other.client() as http:
        # Bounded: the lease runs out within LEASE_S, then the subscriber must end the stream.
        async with asyncio.timeout(30):
            response = await http.get(f"/chat/stream/{meta['messageId']}",
                                      params={"sessionId": meta["sessionId"]},
                                      headers={"Last-Event-ID": "5"})
        rest = parse_sse(response.text)
    assert rest[0].event == "meta"
    assert [e.id for e in rest if e.event == "token"] == [
        str(n) for n in range(6, 6 + len(rest) - 2)]
    assert rest[-1].event == "error"
    assert rest[-1].data == {"code": "interrupted", "retryable": False,
                             "message": "The answer was cut off. Please ask again."}
    streamed = token_texts(first) + token_texts(rest)
    assert streamed.startswith("w0 w1 w2 w3 w4 ")
    assert query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"]) == [
        ("interrupted", streamed)]

    # Anyone resuming later gets what was streamed and the same end, at once.
    async with other.client() as http, asyncio.timeout(10):
        again = parse_sse((await http.get(f"/chat/stream/{meta['messageId']}",
                                       params={"sessionId": meta["sessionId"]})).text)
    assert token_texts(again) == streamed
    assert again[-1].event == "error" and again[-1].data["code"] == "interrupted"
