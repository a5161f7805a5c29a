"""Resume on any instance: two app instances sharing one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from app.eventlog import REPLAYED_END_ID
from app.messages import MessageStore
from tests.conftest import FakeUpstream, Reply, RunningApp, SSEEvent, parse_sse, read_events
from tests.tcp_proxy import TcpProxy

Query = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
async def two_instances(start_app: Callable[..., Any], upstream: FakeUpstream,
                        shared_settings: dict[str, Any]) -> tuple[RunningApp, RunningApp]:
    return await start_app(**shared_settings), await start_app(**shared_settings)


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def resume(app: RunningApp, meta: dict[str, str], last_event_id: int | None = None,
                 session_id: str | None = None) -> httpx.Response:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with app.client() as http:
        return await http.get(f"/chat/stream/{meta['messageId']}", headers=headers,
                              params={"sessionId": session_id or meta["sessionId"]})


async def complete_answer(app: RunningApp) -> list[SSEEvent]:
    async with app.client() as http:
        response = await http.post("/chat/stream", json={"message": "hi"})
    assert response.status_code == 200
    return parse_sse(response.text)


def tokens_of(events: list[SSEEvent]) -> list[tuple[str | None, str]]:
    return [(e.id, e.data["text"]) for e in events if e.event == "token"]


async def wait_for(condition: Callable[[], Any], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_client_that_drops_after_ten_tokens_resumes_on_another_instance(
        two_instances: tuple[RunningApp, RunningApp], upstream: FakeUpstream) -> None:
    a, b = two_instances
    tokens = [f"w{n} " for n in range(30)]
    upstream.queue(Reply(tokens=tokens, delay=0.03))
    first: list[SSEEvent] = []
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        async for event in read_events(response):
            first.append(event)
            if event.id == "10":
                break  # the phone changes networks
    meta = first[0].data
    response = await resume(b, meta, last_event_id=10)
    assert response.status_code == 200
    rest = parse_sse(response.text)
    assert rest[0].event == "meta" and rest[0].data["messageId"] == meta["messageId"]
    assert [i for i, _ in tokens_of(first)] == [str(n) for n in range(1, 11)]
    assert [i for i, _ in tokens_of(rest)] == [str(n) for n in range(11, 31)]
    assert "".join(text for _, text in tokens_of(first) + tokens_of(rest)) == "".join(tokens)
    assert rest[-1].event == "done"
    assert rest[-1].data["text"] == "".join(tokens) and rest[-1].data["status"] == "complete"


async def test_a_finished_answer_replays_from_any_id_on_another_instance(
        two_instances: tuple[RunningApp, RunningApp]) -> None:
    a, b = two_instances
    original = await complete_answer(a)
    meta = original[0].data
    whole = parse_sse((await resume(b, meta)).text)
    # Token by token, as first streamed: this came from Redis, not from the saved row.
    assert [(e.event, e.id, e.data) for e in whole[1:]] == [
        (e.event, e.id, e.data) for e in original[1:]]
    from_five = parse_sse((await resume(b, meta, last_event_id=5)).text)
    assert [(e.event, e.id) for e in from_five] == [
        ("meta", None), ("token", "6"), ("token", "7"), ("done", "8")]
    at_the_last_token = parse_sse((await resume(b, meta, last_event_id=7)).text)
    assert [e.event for e in at_the_last_token] == ["meta", "done"]
    assert at_the_last_token[-1].data == original[-1].data
    for past_the_end in (8, 99):  # the client has the end: nothing more, and EventSource stops
        response = await resume(b, meta, last_event_id=past_the_end)
        assert (response.status_code, response.content) == (204, b"")


async def test_a_finished_answer_resumes_without_asking_the_database_while_redis_has_it(
        two_instances: tuple[RunningApp, RunningApp], shared_settings: dict[str, Any],
        raw_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ownership comes from the stream's own meta event, which names the conversation."""
    a, b = two_instances
    original = await complete_answer(a)
    meta = original[0].data
    stream_key = f"{shared_settings['redis_prefix']}:answer:{meta['messageId']}:events"

    async def copied() -> bool:  # the producer flushes its batch a few ms after the answer
        return int(await raw_redis.xlen(stream_key)) == len(original)

    await wait_for(copied)
    lookups: list[uuid.UUID] = []
    original_find = MessageStore.find_answer

    async def counted(self: MessageStore, answer_id: uuid.UUID, session_id: uuid.UUID,
                      site_id: int) -> Any:
        lookups.append(answer_id)
        return await original_find(self, answer_id, session_id, site_id)

    monkeypatch.setattr(MessageStore, "find_answer", counted)
    unknown = await resume(b, {"messageId": str(uuid.uuid4()), "sessionId": meta["sessionId"]})
    assert unknown.status_code == 404 and len(lookups) == 1  # not in the log: the record says
    lookups.clear()
    for app in (a, b):  # a: its own memory; b: Redis
        whole = parse_sse((await resume(app, meta)).text)
        assert [(e.event, e.id, e.data) for e in whole[1:]] == [
            (e.event, e.id, e.data) for e in original[1:]]
        from_five = parse_sse((await resume(app, meta, last_event_id=5)).text)
        assert [(e.event, e.id) for e in from_five] == [
            ("meta", None), ("token", "6"), ("token", "7"), ("done", "8")]
        assert (await resume(app, meta, last_event_id=8)).status_code == 204
        foreign = await resume(app, meta, session_id=str(uuid.uuid4()))
        assert (foreign.status_code, foreign.json()) == (404, unknown.json())
    assert lookups == []


async def test_an_expired_stream_is_served_from_postgresql(
        start_app: Callable[..., Any], upstream: FakeUpstream, shared_settings: dict[str, Any],
        raw_redis: aioredis.Redis) -> None:
    a = await start_app(**shared_settings, stream_ttl_s=1)
    b = await start_app(**shared_settings)
    original = await complete_answer(a)
    meta = original[0].data
    stream_key = f"{shared_settings['redis_prefix']}:answer:{meta['messageId']}:events"

    async def copied() -> bool:  # the producer flushes its batch a few ms after the answer
        return bool(await raw_redis.exists(stream_key))

    async def expired() -> bool:
        return not await raw_redis.exists(stream_key)

    await wait_for(copied)
    await wait_for(expired)
    replay = parse_sse((await resume(b, meta)).text)
    # The token ids are gone with the stream: the end gets an id past any a client can hold.
    assert [(e.event, e.id) for e in replay] == [
        ("meta", None), ("token", "1"), ("done", str(REPLAYED_END_ID))]
    assert replay[1].data["text"] == original[-1].data["text"]
    assert replay[-1].data == original[-1].data
    for seen in (3, 8):  # a token's id, or the live end's: the end again, with the replay's id
        after_some = parse_sse((await resume(b, meta, last_event_id=seen)).text)
        assert [e.event for e in after_some] == ["meta", "done"]
    response = await resume(b, meta, last_event_id=REPLAYED_END_ID)
    assert response.status_code == 204


async def test_another_sessions_answer_is_404_on_every_instance(
        two_instances: tuple[RunningApp, RunningApp]) -> None:
    a, b = two_instances
    mine = (await complete_answer(a))[0].data
    theirs = (await complete_answer(a))[0].data
    for app in (a, b):
        foreign = await resume(app, theirs, session_id=mine["sessionId"])
        unknown = await resume(app, {"messageId": str(uuid.uuid4()), **{
            "sessionId": mine["sessionId"]}})
        async with app.client() as http:
            foreign_cancel = await http.post(f"/chat/messages/{theirs['messageId']}/cancel",
                                             params={"sessionId": mine["sessionId"]})
        for response in (foreign, unknown, foreign_cancel):
            assert response.status_code == 404
            assert response.json() == unknown.json()


async def test_cancel_on_another_instance_stops_the_answer_and_keeps_its_text(
        two_instances: tuple[RunningApp, RunningApp], upstream: FakeUpstream,
        query: Query) -> None:
    a, b = two_instances
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(200)], delay=0.05))
    seen: list[SSEEvent] = []
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        async for event in read_events(response):
            seen.append(event)
            if event.id == "3":
                meta = seen[0].data
                async with b.client() as http_b:
                    cancel = await http_b.post(f"/chat/messages/{meta['messageId']}/cancel",
                                               params={"sessionId": meta["sessionId"]})
                assert cancel.status_code == 200
                assert cancel.json() == {"messageId": meta["messageId"], "status": "cancelled"}
    done = seen[-1]
    assert done.event == "done" and done.data["status"] == "cancelled"
    streamed = "".join(text for _, text in tokens_of(seen))
    assert done.data["text"] == streamed and len(streamed.split()) < 200
    assert query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"]) == [
        ("cancelled", streamed)]


async def test_with_redis_down_mid_answer_the_answer_completes_and_is_saved(
        start_app: Callable[..., Any], upstream: FakeUpstream, shared_settings: dict[str, Any],
        redis_url: str, raw_redis: aioredis.Redis, query: Query,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.redis_connection")
    proxy = await TcpProxy.to_redis(redis_url).start()
    a = await start_app(**{**shared_settings, "redis_url": proxy.redis_url()})
    b = await start_app(**shared_settings)
    tokens = [f"w{n} " for n in range(40)]
    upstream.queue(Reply(tokens=tokens, delay=0.02))
    seen: list[SSEEvent] = []
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        async for event in read_events(response):
            seen.append(event)
            if event.id == "5":
                await proxy.stop()  # Redis gone, for instance A
    meta = seen[0].data
    assert [i for i, _ in tokens_of(seen)] == [str(n) for n in range(1, 41)]
    assert seen[-1].event == "done" and seen[-1].data["text"] == "".join(tokens)
    assert query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"]) == [
        ("complete", "".join(tokens))]
    outages = [r for r in caplog.records
               if r.name == "app.redis_connection" and "unreachable" in r.getMessage()]
    assert len(outages) == 1

    # Redis back: A completes the copy from memory, and B serves the whole answer from it.
    await proxy.start()
    stream_key = f"{shared_settings['redis_prefix']}:answer:{meta['messageId']}:events"

    async def copied() -> bool:
        return bool(await raw_redis.xlen(stream_key) == 42)

    await wait_for(copied)
    replay = parse_sse((await resume(b, meta)).text)
    assert [(e.event, e.id, e.data) for e in replay[1:]] == [
        (e.event, e.id, e.data) for e in seen[1:]]
    await proxy.stop()


async def test_an_instance_without_redis_still_serves_finished_answers_and_refuses_live_ones(
        start_app: Callable[..., Any], upstream: FakeUpstream, shared_settings: dict[str, Any],
        redis_url: str) -> None:
    proxy = await TcpProxy.to_redis(redis_url).start()
    a = await start_app(**shared_settings)
    b = await start_app(**{**shared_settings, "redis_url": proxy.redis_url()})
    finished = (await complete_answer(a))[0].data
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(100)], delay=0.05))
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        async for event in read_events(response):
            live = event.data
            break
    await proxy.stop()
    from_record = await resume(b, finished)
    assert from_record.status_code == 200
    assert [e.event for e in parse_sse(from_record.text)] == ["meta", "token", "done"]
    refused = await resume(b, live)
    assert refused.status_code == 503
    assert set(refused.json()["error"]) == {"code", "message"}


async def test_a_starting_instance_interrupts_only_answers_no_instance_produces(
        start_app: Callable[..., Any], upstream: FakeUpstream, shared_settings: dict[str, Any],
        query: Query) -> None:
    a = await start_app(**shared_settings)
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(100)], delay=0.05))
    conversation, orphan = uuid.uuid4(), uuid.uuid4()
    query("INSERT INTO conversations (id) VALUES (%s)", conversation)
    query("INSERT INTO messages (id, conversation_id, sender, text, status)"
          " VALUES (%s, %s, 'ai', '', 'streaming')", orphan, conversation)
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        events = read_events(response)
        meta = (await anext(events)).data
        await start_app(**shared_settings)  # B starts while A is producing
        assert query("SELECT status FROM messages WHERE id = %s", orphan) == [("interrupted",)]
        assert query("SELECT status FROM messages WHERE id = %s", meta["messageId"]) == [
            ("streaming",)]
        rest = [event async for event in events]
    assert rest[-1].event == "done"
    assert query("SELECT status FROM messages WHERE id = %s", meta["messageId"]) == [
        ("complete",)]


async def test_an_answer_cut_by_a_shutdown_ends_for_good_on_the_instance_that_resumes_it(
        two_instances: tuple[RunningApp, RunningApp], upstream: FakeUpstream,
        query: Query) -> None:
    a, b = two_instances
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(400)], delay=0.05))
    seen: list[SSEEvent] = []
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        async for event in read_events(response):
            seen.append(event)
            if event.id == "3":
                a.server.should_exit = True  # SIGTERM: answers get their grace period, then stop
    # The producer's own client is told to resume elsewhere...
    assert seen[-1].event == "error"
    assert seen[-1].data["code"] == "interrupted" and seen[-1].data["retryable"] is True
    meta = seen[0].data
    streamed = "".join(text for _, text in tokens_of(seen))
    last_id = int([e.id for e in seen if e.event == "token"][-1])
    # ...and elsewhere, the answer is settled: what was said, then a final end.
    resumed = parse_sse((await resume(b, meta, last_event_id=last_id)).text)
    assert [e.event for e in resumed] == ["meta", "error"]
    assert resumed[-1].data["code"] == "interrupted" and resumed[-1].data["retryable"] is False
    assert query("SELECT status, text FROM messages WHERE id = %s", meta["messageId"]) == [
        ("interrupted", streamed)]
