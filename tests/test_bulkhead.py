"""Cheap lookups cannot starve the answers: their own share of the pool, their own limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app import db
from app.chat import ChatService
from app.services import services_of
from tests.conftest import FakeUpstream, RunningApp, parse_sse

POOL = {"db_pool_max": 4, "db_pool_lookups": 2, "rate_limit_ip": "100000/minute",
        "rate_limit_lookup_ip": "100000/minute"}


@pytest.fixture
def slow_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Event]:
    """History lookups that hold their pooled connection until the test lets them go: a slow
    query, or a database under load."""
    release = asyncio.Event()
    original = ChatService.history

    async def held_history(self: ChatService, *args: Any) -> Any:
        async with db.connection(self._messages._pool):
            await release.wait()
        return await original(self, *args)

    monkeypatch.setattr(ChatService, "history", held_history)
    yield release
    release.set()


async def test_a_hundred_lookups_at_once_leave_the_answers_their_connections(
        start_app: Any, upstream: FakeUpstream, slow_lookups: asyncio.Event) -> None:
    app: RunningApp = await start_app(**POOL)
    # Sixty connections from one address at once (the server allows 64 per address): the
    # hundred lookups go through them as fast as they are answered.
    async with app.client(limits=httpx.Limits(max_connections=60)) as http:
        lookups = {asyncio.create_task(http.get(f"/chat/history/{uuid.uuid4()}"))
                   for _ in range(100)}
        # All but the lookups' share are refused, while the share still holds its connections:
        # nothing has been let go yet.
        pending = lookups
        async with asyncio.timeout(30):  # a guard against a hang, not a measurement
            while len(pending) > 2:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        refused = [task.result() for task in lookups - pending]
        assert len(refused) == 98
        assert {r.status_code for r in refused} == {503}
        assert {r.json()["error"]["code"] for r in refused} == {"lookups_busy"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)

        # A shopper's answer meanwhile gets a connection without waiting for the lookups.
        answer = await http.post("/chat/stream", json={"message": "Do you ship abroad?"})
        assert answer.status_code == 200
        assert parse_sse(answer.text)[-1].event == "done"
        stats = services_of(app.app).pool.get_stats()
        assert stats.get("requests_waiting", 0) == 0
        assert stats.get("requests_errors", 0) == 0  # no pool timeout for anyone

        ready = await http.get("/readyz")
        assert ready.status_code == 200

        slow_lookups.set()
        finished = await asyncio.gather(*pending)
    assert [r.status_code for r in finished] == [404, 404]


async def test_readyz_is_about_the_database_not_a_busy_pool(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(db_pool_max=2)
    pool = services_of(app.app).pool
    held = [await pool.getconn() for _ in range(2)]  # every connection busy (answers at load)
    try:
        async with app.client() as http:
            ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"] == "up"
    finally:
        for conn in held:
            await pool.putconn(conn)


async def test_lookups_have_a_per_ip_limit_apart_from_chat_messages(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_lookup_ip="3/minute")
    async with app.client() as http:
        statuses = [(await http.get(f"/chat/history/{uuid.uuid4()}")).status_code
                    for _ in range(4)]
        refused = await http.get(f"/chat/history/{uuid.uuid4()}")
        chat = await http.post("/chat/stream", json={"message": "hi"})
    assert statuses == [404, 404, 404, 429]
    assert refused.headers["ratelimit-policy"].startswith('"lookup_ip"')
    assert chat.status_code == 200  # chat messages count apart


async def test_the_conversations_own_reads_share_the_lookups_slots_not_their_limit(
        start_app: Any, upstream: FakeUpstream, slow_lookups: asyncio.Event) -> None:
    """Typing, handoff and the live stream's check read the database by a session id anyone
    can make up: they wait for the lookups' share like history does, but a shopper typing to a
    person (one every 3 s) is not held to the lookups' per-IP limit."""
    app: RunningApp = await start_app(db_pool_max=4, db_pool_lookups=2,
                                      rate_limit_lookup_ip="2/minute")
    async with app.client() as http:
        unknown = uuid.uuid4()
        held = [asyncio.create_task(http.get(f"/chat/history/{uuid.uuid4()}"))
                for _ in range(2)]
        slots = services_of(app.app).lookups
        for _ in range(3000):  # until both history lookups hold their slot
            if slots.full:
                break
            await asyncio.sleep(0.01)
        assert slots.full
        busy = [await http.post(f"/chat/conversations/{unknown}/typing"),
                await http.post(f"/chat/conversations/{unknown}/handoff"),
                await http.get(f"/chat/conversations/{unknown}/stream")]
        assert {r.status_code for r in busy} == {503}
        assert {r.json()["error"]["code"] for r in busy} == {"lookups_busy"}
        slow_lookups.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [404, 404]
        # Past the lookups' per-IP limit (2 a minute, spent by the history lookups above).
        after = [(await http.post(f"/chat/conversations/{unknown}/typing")).status_code
                 for _ in range(4)]
    assert after == [404] * 4
