"""The event log shared by every instance, on Redis Streams, over the in-process log.

Where it differs from the in-process log (app/eventlog.py) it wraps:

- The producer never waits for Redis. `append` writes to memory, which serves the producing
  instance's own subscribers, and queues the entry; one background task flushes the queue in one
  pipeline every FLUSH_LINGER_S (or FLUSH_BATCH entries), so the tokens of every live answer
  share a round trip and the answer's hot path costs a list append.
- Other instances read Redis: XRANGE from the client's Last-Event-ID, then XREAD BLOCK until the
  terminal event.
- Redis is never on an answer's critical path. If it is down, the answer streams on from memory,
  is saved, and its Redis copy is completed from memory once Redis is back.
- The producer holds a lease per live answer. A subscriber elsewhere that finds neither a lease
  nor a terminal event knows the producer died, and ends the stream instead of waiting forever.
  The lease goes out with the answer's first flush (at most FLUSH_LINGER_S after the claim, so
  possibly just after the answer's row is committed), not in a round trip of its own before the
  answer starts; whoever finds a lease missing confirms it CONFIRM_S later, far longer.

Keys, all under `{REDIS_PREFIX}:`:
    answer:{id}:events   the stream; expires STREAM_TTL_S after the answer ends (the same TTL,
                         refreshed by every flush that writes to it and by the heartbeat,
                         bounds a live one whose producer vanished, or one Redis lost and the
                         next flush re-created)
    answer:{id}:lease    set while an instance produces the answer; expires ANSWER_LEASE_S after
                         that instance's last heartbeat
    answer:{id}:cancel   a cancel request, for a producer that missed the pub/sub message
    cancel               pub/sub channel of cancel requests (the answer's id)

Stream entry ids are `<seq>-1`, the wire id in the milliseconds part. XRANGE and XREAD can then
start right after a client's Last-Event-ID with no lookup, and since Redis refuses an id that is
not above the stream's last, re-sending entries (a retried batch that may have landed, or a copy
completed after an outage) can never duplicate one. `-1` rather than `0-<seq>`: meta is seq 0,
and `0-0` is not a valid id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from . import answer_events
from .eventlog import (
    CancelHandler,
    Event,
    MemoryEventLog,
    ProducerLost,
    SharedLogUnavailable,
    encode_event,
    event_from_data,
    finished_events,
)
from .redis_connection import COMMAND_TIMEOUT_S, SharedRedis

log = logging.getLogger(__name__)

# Errors a Redis call can end in when the server or the network is at fault.
REDIS_FAILURES = (RedisError, OSError)
# While Redis is down and answers wait to be copied, how often the flusher tries again.
RETRY_S = 0.5
# The flusher waits this long after the first pending event, or until this many are pending,
# so one round trip carries tokens of every live answer: one pipeline per token cost more CPU
# than anything else on the relay path (bench/analysis.md). Other instances' followers see
# tokens at most this much later; the producer's own followers read memory and see no delay.
FLUSH_LINGER_S = 0.02
FLUSH_BATCH = 64
# A lease found missing is checked again this much later before its producer is declared dead:
# after a Redis restart, producers re-set their leases within RETRY_S of its return.
CONFIRM_S = 2 * RETRY_S
# Entries per XREAD: a subscriber that fell behind catches up in a few round trips.
READ_COUNT = 500


@dataclass(frozen=True)
class Keys:
    prefix: str

    def events(self, answer_id: str) -> str:
        return f"{self.prefix}:answer:{answer_id}:events"

    def lease(self, answer_id: str) -> str:
        return f"{self.prefix}:answer:{answer_id}:lease"

    def cancel(self, answer_id: str) -> str:
        return f"{self.prefix}:answer:{answer_id}:cancel"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"


def decode_entry(entry_id: str, fields: dict[str, str]) -> Event:
    return event_from_data(int(entry_id.split("-", 1)[0]), fields["k"], fields["d"])


def xread_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of a one-stream XREAD reply: a list in RESP2, a map in RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


class RedisEventLog:
    """Events per answer in memory on the producer, copied to a Redis stream for every instance."""

    def __init__(self, redis: SharedRedis, *, key_prefix: str, stream_ttl_s: int,
                 stream_maxlen: int, lease_s: float, memory_retention_s: float = 600.0) -> None:
        self._memory = MemoryEventLog(memory_retention_s)
        self._keys = Keys(key_prefix)
        self._ttl_s = stream_ttl_s
        self._maxlen = stream_maxlen
        self._lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))
        # A subscriber checks the lease after this long without news; so a dead producer is
        # noticed at most lease + poll + CONFIRM_S after it died.
        self._poll_s = min(2.0, lease_s / 3)
        self._redis = redis.commands
        # Blocking reads (XREAD BLOCK, pub/sub) wait up to poll_s by design.
        self._blocking = redis.blocking(read_timeout_s=self._poll_s + COMMAND_TIMEOUT_S)
        self._health = redis.event_log_health
        self._instance_id = uuid.uuid4().hex
        self._pending: list[tuple[str, Event]] = []
        # Answers claimed since the last flush: their leases go out with it.
        self._claims: list[str] = []
        self._wake = asyncio.Event()
        # Answers this instance produces that have not ended: their leases are ours to refresh.
        self._live: set[str] = set()
        # Answers whose Redis copy is behind memory because Redis failed; completed when it is back.
        self._unsynced: set[str] = set()
        self._cancel_handler: CancelHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, on_cancel_request: CancelHandler | None = None) -> None:
        self._cancel_handler = on_cancel_request
        # Hard references: the loop keeps only weak ones to tasks.
        self._tasks = [
            asyncio.create_task(self._flush_forever(), name="eventlog-flush"),
            asyncio.create_task(self._heartbeat_forever(), name="eventlog-heartbeat"),
            asyncio.create_task(self._listen_for_cancels(), name="eventlog-cancels"),
        ]

    async def aclose(self) -> None:
        """Flush what the last answers wrote (their terminal events), then stop."""
        self._stopping = True
        self._wake.set()
        flusher, others = self._tasks[:1], self._tasks[1:]
        for task in others:
            task.cancel()
        if flusher:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(flusher[0]), timeout=2.0)
            flusher[0].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._memory.aclose()  # the clients are SharedRedis's to close

    # -- producing ---------------------------------------------------------------------------

    async def claim(self, answer_id: str) -> None:
        # No round trip on the answer's path: the lease goes out with the next flush, which
        # carries the answer's meta too. An instance that finds the row 'streaming' and no lease
        # confirms CONFIRM_S later before it declares the producer gone, and the flush is due
        # FLUSH_LINGER_S after the claim: a starting answer is never taken for a dead one.
        if self._health.down:
            return  # the flusher re-sets the leases of live answers once Redis is back
        self._claims.append(answer_id)
        if not self._wake.is_set():
            self._wake.set()

    def start(self, answer_id: str) -> None:
        self._memory.start(answer_id)
        self._live.add(answer_id)
        if self._health.down:
            self._unsynced.add(answer_id)
            self._wake.set()

    def append(self, answer_id: str, kind: str, payload: Any) -> Event:
        event = self._memory.append(answer_id, kind, payload)
        if event.is_terminal:
            self._live.discard(answer_id)
        if answer_id not in self._unsynced:
            self._pending.append((answer_id, event))
            if not self._wake.is_set():
                self._wake.set()
        return event

    def subscribe(self, answer_id: str, after: int) -> AsyncIterator[Event] | None:
        return self._memory.subscribe(answer_id, after)

    async def end_id(self, answer_id: str) -> int | None:
        if self._memory.events_of(answer_id) is not None:
            return self._memory.logged_end_id(answer_id)  # produced here: memory is ahead
        try:
            last: Any = await self._redis.xrevrange(self._keys.events(answer_id), "+", "-",
                                                    count=1)
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "reading an answer")
            raise SharedLogUnavailable() from exc
        self._health.ok()
        if not last:
            return None
        tail = decode_entry(*last[0])
        return tail.seq if tail.is_terminal else None

    async def _flush_forever(self) -> None:
        while True:
            if self._unsynced and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RETRY_S)
            else:
                await self._wake.wait()
            if len(self._pending) < FLUSH_BATCH and not self._stopping:
                await asyncio.sleep(FLUSH_LINGER_S)
            self._wake.clear()
            try:
                await self._flush_once()
            except Exception:
                log.exception("event log flush failed")
            if self._stopping:
                return

    async def _flush_once(self) -> None:
        if self._unsynced:
            await self._complete_copies()
        # Entries of an answer that fell behind are left out: its copy is completed from memory
        # in order, never with a hole in the middle.
        batch = [(a, e) for a, e in self._pending if a not in self._unsynced]
        self._pending = []
        claims, self._claims = self._claims, []
        if not batch and not claims:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for answer_id in claims:
                    pipe.set(self._keys.lease(answer_id), self._instance_id, px=self._lease_ms)
                leased = frozenset(claims)
                for answer_id, event in batch:
                    self._queue_write(pipe, answer_id, event, leased=answer_id in leased)
                self._queue_expiries(pipe, {answer_id for answer_id, _ in batch})
                results = await pipe.execute(raise_on_error=False)
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "copying answers")
            self._unsynced.update(answer_id for answer_id, _ in batch)
            return
        self._health.ok()
        self._log_refusals(results)

    def _queue_write(self, pipe: Pipeline, answer_id: str, event: Event, *,
                     leased: bool = False) -> None:
        stream, lease = self._keys.events(answer_id), self._keys.lease(answer_id)
        if event.seq == 0 and not leased:
            pipe.set(lease, self._instance_id, px=self._lease_ms)
        pipe.xadd(stream, {"k": event.kind, "d": event.data}, id=f"{event.seq}-1",
                  maxlen=self._maxlen, approximate=True)
        if event.is_terminal:
            # After the terminal entry: a stream with no lease and no terminal entry means the
            # producer died, never that it is between the two writes.
            pipe.delete(lease)

    def _queue_expiries(self, pipe: Pipeline, answer_ids: set[str]) -> None:
        """Each flush refreshes the expiry of every stream it wrote to, after its entries: a
        stream Redis lost mid-answer is re-created by the next XADD, and must not live forever."""
        for answer_id in answer_ids:
            pipe.expire(self._keys.events(answer_id), self._ttl_s)

    def _log_refusals(self, results: list[Any]) -> None:
        for result in results:
            # An id not above the stream's last is a re-sent entry that is already there.
            if isinstance(result, RedisError) and "equal or smaller" not in str(result):
                log.error("Redis refused an event log write: %s", result)

    async def _complete_copies(self) -> None:
        """Bring the Redis copies of answers that fell behind during an outage up to memory."""
        copies = [(a, events) for a in self._unsynced
                  if (events := self._memory.events_of(a)) is not None]
        self._unsynced.intersection_update(a for a, _ in copies)
        if not copies:
            return
        written: dict[str, int] = {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for answer_id, _ in copies:
                    pipe.xrevrange(self._keys.events(answer_id), "+", "-", count=1)
                tops = await pipe.execute()
            async with self._redis.pipeline(transaction=False) as pipe:
                for (answer_id, events), top in zip(copies, tops, strict=True):
                    top_seq = decode_entry(*top[0]).seq if top else -1
                    written[answer_id] = len(events)
                    if answer_id in self._live:
                        pipe.set(self._keys.lease(answer_id), self._instance_id, px=self._lease_ms)
                    for event in events[top_seq + 1:]:
                        self._queue_write(pipe, answer_id, event)
                self._queue_expiries(pipe, set(written))
                results = await pipe.execute(raise_on_error=False)
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "copying answers")
            return
        self._health.ok()
        self._log_refusals(results)
        for answer_id, count in written.items():
            self._unsynced.discard(answer_id)
            # Events appended while the copy was in flight go out with the next batch.
            events = self._memory.events_of(answer_id) or []
            self._pending.extend((answer_id, event) for event in events[count:])

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            live = list(self._live)
            if not live:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for answer_id in live:
                        pipe.set(self._keys.lease(answer_id), self._instance_id, px=self._lease_ms)
                        pipe.expire(self._keys.events(answer_id), self._ttl_s)
                        pipe.exists(self._keys.cancel(answer_id))
                    results = await pipe.execute()
            except REDIS_FAILURES as exc:
                self._health.failed(exc, "refreshing leases")
                # Let the flusher re-set these leases as soon as Redis is back.
                self._unsynced.update(live)
                self._wake.set()
                continue
            self._health.ok()
            for answer_id, cancel_requested in zip(live, results[2::3], strict=True):
                if cancel_requested:
                    self._cancel_requested(answer_id)

    # -- cancelling across instances ---------------------------------------------------------

    async def request_cancel(self, answer_id: str) -> bool:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                # The flag outlives a lost pub/sub message: the heartbeat picks it up.
                pipe.set(self._keys.cancel(answer_id), "1", px=2 * self._lease_ms)
                pipe.publish(self._keys.cancel_channel, answer_id)
                pipe.exists(self._keys.lease(answer_id))
                _, _, has_lease = await pipe.execute()
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "sending a cancel request")
            raise SharedLogUnavailable() from exc
        return bool(has_lease)

    def _cancel_requested(self, answer_id: str) -> None:
        if answer_id in self._live and self._cancel_handler is not None:
            self._cancel_handler(answer_id)

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                async with self._blocking.pubsub() as pubsub:
                    await pubsub.subscribe(self._keys.cancel_channel)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=self._poll_s)
                        if message is not None and message.get("type") == "message":
                            self._cancel_requested(str(message["data"]))
            except REDIS_FAILURES as exc:
                self._health.failed(exc, "listening for cancel requests")
                await asyncio.sleep(RETRY_S)
            except Exception:
                log.exception("cancel listener failed")
                await asyncio.sleep(RETRY_S)

    # -- reading on another instance ---------------------------------------------------------

    async def finished(self, answer_id: str, after: int) -> list[Event] | None:
        if self._memory.events_of(answer_id) is not None:
            return await self._memory.finished(answer_id, after)  # produced here: memory is ahead
        stream = self._keys.events(answer_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrevrange(stream, "+", "-", count=1)
                pipe.xrange(stream, "-", "+", count=1)
                pipe.xrange(stream, f"{after + 1}-0", "+")
                last, first, later = await pipe.execute()
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "reading an answer")
            raise SharedLogUnavailable() from exc
        self._health.ok()
        if not last or not first:
            return None
        tail = decode_entry(*last[0])
        events = [decode_entry(*first[0]), *(decode_entry(*entry) for entry in later)]
        if events[-1].seq != tail.seq:
            events.append(tail)
        return finished_events(events, after)

    async def resume(self, answer_id: str, after: int, *, meta: Event, streaming: bool,
                     on_producer_lost: ProducerLost) -> AsyncIterator[Event] | None:
        stream = self._keys.events(answer_id)
        try:
            # One transaction, so the lease, the head, the rest and the last entry agree.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(self._keys.lease(answer_id))
                pipe.xrange(stream, "-", "+", count=1)
                pipe.xrange(stream, f"{after + 1}-0", "+")
                pipe.xrevrange(stream, "+", "-", count=1)
                has_lease, first, later, last = await pipe.execute()
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "reading an answer")
            raise SharedLogUnavailable() from exc
        self._health.ok()
        if not first and not has_lease and not streaming:
            return None  # expired, or never in Redis: the record has it all
        head = decode_entry(*first[0]) if first else meta
        if head.seq != 0:  # trimmed by MAXLEN
            head = meta
        backlog = [decode_entry(*entry) for entry in later]
        if last and not later:
            # At or past the last token: the end still goes out, whatever its seq.
            tail = decode_entry(*last[0])
            if tail.is_terminal:
                backlog.append(tail)
        cursor = last[0][0] if last else "0-0"
        return self._follow(answer_id, after, head, backlog, cursor, bool(has_lease),
                            on_producer_lost)

    async def _follow(self, answer_id: str, after: int, head: Event, backlog: list[Event],
                      cursor: str, producer_seen: bool,
                      on_producer_lost: ProducerLost) -> AsyncIterator[Event]:
        stream, lease = self._keys.events(answer_id), self._keys.lease(answer_id)
        yield head
        last_seq = head.seq
        for event in backlog:
            last_seq = max(last_seq, event.seq)
            yield event
            if event.is_terminal:
                return
        # Block for news; after a quiet poll, check that the producer still holds its lease.
        check_producer = not producer_seen
        lease_missing_since: float | None = None
        while True:
            try:
                if check_producer:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        pipe.exists(lease)
                        pipe.xrange(stream, f"({cursor}", "+")
                        alive, entries = await pipe.execute()
                    if not entries and not alive:
                        now = time.monotonic()
                        lease_missing_since = lease_missing_since or now
                        if now - lease_missing_since >= CONFIRM_S:
                            yield await self._producer_lost(answer_id, last_seq + 1,
                                                            on_producer_lost)
                            return
                        await asyncio.sleep(CONFIRM_S)
                        continue
                    lease_missing_since = None
                    check_producer = False
                else:
                    reply: Any = await self._blocking.xread(
                        {stream: cursor}, count=READ_COUNT, block=int(self._poll_s * 1000))
                    entries = xread_entries(reply)
                    check_producer = not entries
            except REDIS_FAILURES as exc:
                self._health.failed(exc, "following an answer")
                yield encode_event(last_seq + 1, *answer_events.unavailable())
                return
            for entry_id, fields in entries:
                cursor = entry_id
                event = decode_entry(entry_id, fields)
                last_seq = max(last_seq, event.seq)
                if event.seq > after or event.is_terminal:
                    yield event
                if event.is_terminal:
                    return

    async def _producer_lost(self, answer_id: str, seq: int,
                             on_producer_lost: ProducerLost) -> Event:
        log.warning("answer %s lost its producer mid-answer", answer_id[:8])
        return await on_producer_lost(await self._streamed_text(answer_id), seq)

    async def _without_lease(self, answer_ids: Sequence[str]) -> list[str]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for answer_id in answer_ids:
                    pipe.exists(self._keys.lease(answer_id))
                leases = await pipe.execute()
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "looking for orphaned answers")
            raise SharedLogUnavailable() from exc
        return [a for a, has_lease in zip(answer_ids, leases, strict=True) if not has_lease]

    async def _streamed_text(self, answer_id: str) -> str:
        """The text of the tokens in the answer's stream ('' if Redis cannot say)."""
        try:
            entries: Any = await self._redis.xrange(self._keys.events(answer_id), "1-0", "+")
        except REDIS_FAILURES as exc:
            self._health.failed(exc, "reading an answer")
            return ""
        return "".join(json.loads(fields["d"])["text"] for _, fields in entries
                       if fields["k"] == "token")

    async def producerless(self, answer_ids: Sequence[str]) -> dict[str, str]:
        if not answer_ids:
            return {}
        orphans = await self._without_lease(answer_ids)
        if orphans:
            # Confirmed once: a producer back from a Redis outage re-sets its leases at once.
            await asyncio.sleep(CONFIRM_S)
            orphans = await self._without_lease(orphans)
        texts = await asyncio.gather(*(self._streamed_text(a) for a in orphans))
        return dict(zip(orphans, texts, strict=True))
