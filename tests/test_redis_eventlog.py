"""The Redis event log on its own: two logs on one Redis stand for two instances."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.eventlog import Event, encode_event
from app.redis_connection import SharedRedis
from app.redis_eventlog import CONFIRM_S, Keys, RedisEventLog
from tests.tcp_proxy import TcpProxy

Factory = Callable[..., Any]


@pytest.fixture
async def make_log(redis_prefix: str) -> AsyncIterator[Factory]:
    logs: list[tuple[RedisEventLog, SharedRedis]] = []

    async def make(url: str, lease_s: float = 3.0,
                   on_cancel_request: Callable[[str], None] | None = None) -> RedisEventLog:
        redis = SharedRedis(url)
        log = RedisEventLog(redis, key_prefix=redis_prefix, stream_ttl_s=60, stream_maxlen=1000,
                            lease_s=lease_s)
        await log.open(on_cancel_request)
        logs.append((log, redis))
        return log

    yield make
    for log, redis in logs:
        await log.aclose()
        await redis.aclose()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


META = encode_event(0, "meta", {"messageId": "x"})


async def never_lost(text: str, seq: int) -> Event:
    raise AssertionError("the producer is alive")


def follow(log: RedisEventLog, answer_id: str, after: int, on_lost: Any = never_lost,
           *, streaming: bool = False) -> Any:
    """`log.resume` of an answer another log produces (a coroutine to await)."""
    return log.resume(answer_id, after, meta=META, streaming=streaming, on_producer_lost=on_lost)


async def wait_until(condition: Callable[[], Any], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def produce(log: RedisEventLog, answer_id: str, tokens: list[str], *, end: bool = True) -> None:
    log.start(answer_id)
    log.append(answer_id, "meta", {"messageId": answer_id})
    for token in tokens:
        log.append(answer_id, "token", {"text": token})
    if end:
        log.append(answer_id, "done", {"text": "".join(tokens), "status": "complete"})


async def copied(client: aioredis.Redis, prefix: str, answer_id: str, entries: int) -> None:
    """Wait until the producer's background flush has copied `entries` events to Redis."""
    await wait_until(lambda: _xlen_is(client, f"{prefix}:answer:{answer_id}:events", entries))


async def collect(events: AsyncIterator[Event] | None) -> list[Event]:
    assert events is not None
    return [event async for event in events]


async def test_entries_carry_the_wire_ids_and_another_instance_reads_from_any_id(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    producer, other = await make_log(redis_url), await make_log(redis_url)
    produce(producer, "a1", ["one ", "two ", "three"])
    stream = f"{redis_prefix}:answer:a1:events"
    await wait_until(lambda: raw_redis.xlen(stream))
    await wait_until(lambda: _has_end(raw_redis, stream))
    ids = [entry_id for entry_id, _ in await raw_redis.xrange(stream)]
    assert ids == ["0-1", "1-1", "2-1", "3-1", "4-1"]
    assert await raw_redis.ttl(stream) > 0
    assert not await raw_redis.exists(f"{redis_prefix}:answer:a1:lease")

    from_two = await collect(await follow(other, "a1", 2, never_lost))
    assert [(e.seq, e.kind) for e in from_two] == [(0, "meta"), (3, "token"), (4, "done")]
    assert from_two[1].frame == b'id: 3\nevent: token\ndata: {"text":"three"}\n\n'
    past_end = await collect(await follow(other, "a1", 99, never_lost))
    assert [e.kind for e in past_end] == ["meta", "done"]
    assert await follow(other, "unknown", 0, never_lost) is None


async def _has_end(client: aioredis.Redis, stream: str) -> bool:
    last = await client.xrevrange(stream, count=1)
    return bool(last) and last[0][1]["k"] in ("done", "error")


async def test_a_live_answer_is_followed_on_another_instance_until_its_end(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    producer, other = await make_log(redis_url), await make_log(redis_url)
    produce(producer, "a2", ["a", "b"], end=False)
    await copied(raw_redis, redis_prefix, "a2", 3)
    events = await follow(other, "a2", 1, never_lost)
    assert events is not None
    seen = [await anext(events), await anext(events)]
    # The follower has read all there was: what comes now reaches it live.
    for token in ["c", "d"]:
        producer.append("a2", "token", {"text": token})
    producer.append("a2", "done", {"text": "abcd", "status": "complete"})
    seen += [event async for event in events]
    assert [(e.seq, e.kind) for e in seen] == [
        (0, "meta"), (2, "token"), (3, "token"), (4, "token"), (5, "done")]


async def test_a_stream_without_a_lease_or_an_end_is_reported_as_producer_lost(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    producer, other = await make_log(redis_url), await make_log(redis_url)
    produce(producer, "a3", ["cut ", "off"], end=False)
    stream = f"{redis_prefix}:answer:a3:events"
    await wait_until(lambda: _xlen_is(raw_redis, stream, 3))
    # The producer dies: its heartbeat stops, its lease runs out.
    producer._live.clear()
    await raw_redis.delete(f"{redis_prefix}:answer:a3:lease")
    lost: list[tuple[str, int]] = []

    async def on_lost(text: str, seq: int) -> Event:
        lost.append((text, seq))
        return encode_event(seq, "error", {"code": "interrupted"})

    events = await collect(await follow(other, "a3", 1, on_lost))
    assert [(e.seq, e.kind) for e in events] == [(0, "meta"), (2, "token"), (3, "error")]
    assert lost == [("cut off", 3)]


async def _xlen_is(client: aioredis.Redis, stream: str, length: int) -> bool:
    return bool(await client.xlen(stream) == length)


async def test_a_lease_that_stops_being_refreshed_is_noticed_by_a_waiting_subscriber(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    producer, other = await make_log(redis_url, lease_s=1.0), await make_log(redis_url,
                                                                           lease_s=1.0)
    produce(producer, "a4", ["x"], end=False)
    await copied(raw_redis, redis_prefix, "a4", 2)
    events = await follow(other, "a4", 0, lambda text, seq: _interrupted(seq))
    assert events is not None
    assert (await anext(events)).kind == "meta"
    assert (await anext(events)).kind == "token"
    producer._live.clear()  # no more heartbeats: the lease expires within a second
    async with asyncio.timeout(10):
        end = await anext(events)
    assert end.kind == "error"


async def test_a_stream_redis_lost_mid_answer_gets_its_expiry_back_from_the_next_flush(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    # A lease this long means no heartbeat during the test: only the flush can set the expiry.
    producer = await make_log(redis_url, lease_s=300.0)
    produce(producer, "a8", ["before "], end=False)
    stream = f"{redis_prefix}:answer:a8:events"
    await wait_until(lambda: _xlen_is(raw_redis, stream, 2))
    await raw_redis.delete(stream)  # Redis lost the key (a restart without its data, an eviction)
    producer.append("a8", "token", {"text": "after"})
    await wait_until(lambda: raw_redis.exists(stream))
    # Still mid-answer: without the flush's EXPIRE the re-created stream would never expire.
    assert 0 < await raw_redis.ttl(stream) <= 60


async def _interrupted(seq: int) -> Event:
    return encode_event(seq, "error", {"code": "interrupted"})


async def test_after_an_outage_the_copy_is_completed_from_memory_without_duplicates(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    proxy = await TcpProxy.to_redis(redis_url).start()
    producer = await make_log(proxy.redis_url())
    other = await make_log(redis_url)
    produce(producer, "a5", ["before "], end=False)
    stream = f"{redis_prefix}:answer:a5:events"
    await wait_until(lambda: _xlen_is(raw_redis, stream, 2))
    caplog.set_level(logging.WARNING, logger="app.redis_connection")
    await proxy.stop()

    def unreachable() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.name == "app.redis_connection" and "unreachable" in r.getMessage()]

    async def outage_noticed() -> bool:
        return bool(unreachable())

    for n in range(20):
        producer.append("a5", "token", {"text": f"t{n} "})
        if n == 0:  # the rest are written while the producer knows Redis is gone
            await wait_until(outage_noticed)
    producer.append("a5", "done", {"text": "", "status": "complete"})
    # The producer's own subscribers never noticed: memory has every event.
    local = await collect(producer.subscribe("a5", 0))
    assert len(local) == 23
    await proxy.start()
    await wait_until(lambda: _has_end(raw_redis, stream))
    remote = await collect(await follow(other, "a5", 0, never_lost))
    assert [e.frame for e in remote] == [e.frame for e in local]
    assert len(unreachable()) == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    await proxy.stop()


async def test_a_cancel_request_reaches_the_producing_instance(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    cancelled: list[str] = []
    heard = asyncio.Event()

    def on_cancel(answer_id: str) -> None:
        cancelled.append(answer_id)
        heard.set()

    producer = await make_log(redis_url, on_cancel_request=on_cancel)
    other = await make_log(redis_url)

    async def listening() -> bool:
        channel = Keys(redis_prefix).cancel_channel
        return bool(dict(await raw_redis.pubsub_numsub(channel)).get(channel))

    async def leased() -> bool:
        return bool(await raw_redis.exists(Keys(redis_prefix).lease("a6")))

    await wait_until(listening)  # the producer's listener has subscribed
    produce(producer, "a6", ["x"], end=False)
    await wait_until(leased)
    assert await other.request_cancel("a6") is True
    async with asyncio.timeout(5):
        await heard.wait()
    assert cancelled == ["a6"]
    assert await other.request_cancel("nobody-produces-this") is False


async def test_only_answers_without_a_lease_count_as_producerless(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    producer, other = await make_log(redis_url), await make_log(redis_url)
    await producer.claim("live")
    produce(producer, "dead", ["partial ", "text"], end=False)
    await copied(raw_redis, redis_prefix, "dead", 3)
    producer._live.discard("dead")
    await raw_redis.delete(Keys(redis_prefix).lease("dead"))
    assert await other.producerless(["live", "dead", "never-streamed"]) == {
        "dead": "partial text", "never-streamed": ""}


async def test_a_streaming_answer_with_no_trace_in_redis_ends_as_producer_lost(
        make_log: Factory, redis_url: str) -> None:
    other = await make_log(redis_url)
    lost: list[tuple[str, int]] = []

    async def on_lost(text: str, seq: int) -> Event:
        lost.append((text, seq))
        return encode_event(seq, "error", {"code": "interrupted"})

    async with asyncio.timeout(10):
        events = await collect(await follow(other, "no-trace", 0, on_lost, streaming=True))
    assert [e.kind for e in events] == ["meta", "error"]
    assert lost == [("", 1)]


async def test_a_lease_that_comes_back_at_once_is_not_a_dead_producer(
        make_log: Factory, redis_url: str, redis_prefix: str, raw_redis: aioredis.Redis) -> None:
    # Redis restarted without its data: the producer puts its lease back within a second.
    producer, other = await make_log(redis_url), await make_log(redis_url)
    produce(producer, "a7", ["x"], end=False)
    await copied(raw_redis, redis_prefix, "a7", 2)
    producer._live.discard("a7")  # its heartbeat would put the lease back by itself
    lease = Keys(redis_prefix).lease("a7")
    await raw_redis.delete(lease)
    events = await follow(other, "a7", 1, never_lost)
    assert events is not None
    assert (await anext(events)).kind == "meta"
    # The subscriber finds no lease at once, and looks again CONFIRM_S later; the lease is
    # back before that (this is the fault's length, not a wait for something to happen).
    next_event = asyncio.ensure_future(anext(events))
    await asyncio.sleep(CONFIRM_S / 2)
    await raw_redis.set(lease, "back", px=30_000)
    # Past the confirmation: the subscriber saw the lease again and kept waiting.
    finished, _ = await asyncio.wait({next_event}, timeout=CONFIRM_S + 1.5)
    assert not finished
    producer.append("a7", "done", {"text": "x", "status": "complete"})
    async with asyncio.timeout(10):
        assert (await next_event).kind == "done"
