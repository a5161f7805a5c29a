"""The live view of each conversation (and of each site's inbox): events with ids 1, 2, 3...

One level up from an answer's events (app/eventlog.py): a conversation's stream says that a
message arrived (`message`), that its status changed (`status`) and that someone is typing
(`typing`); an answer's tokens stay on the answer's own stream. Unlike an answer's, these streams
never end: a subscriber follows until it leaves. Every event carries `id:`, in one sequence per
conversation, so `Last-Event-ID` resumes exactly where the client was, on any instance.

Two backends behind one interface, like the answers' log: this process's memory (one instance)
and Redis Streams (several). In Redis the next id and the append are one Lua script, so two
instances writing to one conversation at once still give ids in order with no gap.
PostgreSQL stays the record: a reload reads the history, then follows from the last id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .eventlog import Event
from .redis_connection import SharedRedis

# How long a conversation's events stay in Redis after the last one, and how many are kept:
# a widget reconnecting within a day resumes; a later reload reads the record.
FEED_TTL_S = 86_400
FEED_MAXLEN = 2_000
# A blocking read waits this long before it looks again (and notices a closed client).
FEED_BLOCK_MS = 2_000


def conversation_key(site_id: int, conversation_id: object) -> str:
    return f"conv:{site_id}:{conversation_id}"


def site_key(site_id: int) -> str:
    return f"site:{site_id}"


def feed_event(seq: int, kind: str, data: str) -> Event:
    return Event(seq, kind, data, f"id: {seq}\nevent: {kind}\ndata: {data}\n\n".encode())


def encode(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class Feeds(Protocol):
    async def publish(self, key: str, kind: str, payload: Any) -> int:
        """Append an event; its id. Never raises: a lost live event costs a reload, not a 500."""

    def follow(self, key: str, after: int) -> AsyncIterator[Event]:
        """The events with id > after, then new ones as they come, until the caller leaves."""

    async def last_id(self, key: str) -> int:
        """The id of the feed's last event (0: none): where a reader of the record resumes."""


@dataclass
class _Feed:
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryFeeds:
    """The feeds of one instance. Kept for the process's life, each cut to FEED_MAXLEN."""

    def __init__(self) -> None:
        self._feeds: dict[str, _Feed] = {}

    async def publish(self, key: str, kind: str, payload: Any) -> int:
        feed = self._feeds.setdefault(key, _Feed())
        seq = feed.events[-1].seq + 1 if feed.events else 1
        feed.events.append(feed_event(seq, kind, encode(payload)))
        del feed.events[:-FEED_MAXLEN]
        waiters, feed.changed = feed.changed, asyncio.Event()
        waiters.set()
        return seq

    async def last_id(self, key: str) -> int:
        feed = self._feeds.get(key)
        return feed.events[-1].seq if feed and feed.events else 0

    async def follow(self, key: str, after: int) -> AsyncIterator[Event]:
        feed = self._feeds.setdefault(key, _Feed())
        while True:
            changed = feed.changed
            for event in [e for e in feed.events if e.seq > after]:
                after = event.seq
                yield event
            await changed.wait()


# KEYS: the counter, the stream. ARGV: kind, data, maxlen, ttl. The id is "<n>-1": Redis needs
# a stream id above the last one, and n only grows.
_PUBLISH = """
local n = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], n .. '-1', 'kind', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return n
"""


class RedisFeeds:
    def __init__(self, redis: SharedRedis, key_prefix: str) -> None:
        self._redis = redis.commands
        self._blocking: Redis = redis.blocking(read_timeout_s=FEED_BLOCK_MS / 1000 + 5)
        self._prefix = f"{key_prefix}:feed"
        self._memory = MemoryFeeds()  # while Redis is down: this instance's subscribers only

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self._prefix}:{key}:n", f"{self._prefix}:{key}"

    async def publish(self, key: str, kind: str, payload: Any) -> int:
        counter, stream = self._keys(key)
        try:
            seq = await self._redis.eval(_PUBLISH, 2, counter, stream, kind, encode(payload),
                                         FEED_MAXLEN, FEED_TTL_S)
        except (RedisError, OSError):
            return await self._memory.publish(key, kind, payload)
        return int(seq)

    async def last_id(self, key: str) -> int:
        counter, _ = self._keys(key)
        try:
            value = await self._redis.get(counter)
        except (RedisError, OSError):
            return 0  # the widget then reads from the start, as before
        return int(value or 0)

    async def follow(self, key: str, after: int) -> AsyncIterator[Event]:
        _, stream = self._keys(key)
        last = f"{after}-1"
        while True:
            try:
                found: Any = await self._blocking.xread(
                    {stream: last}, block=FEED_BLOCK_MS, count=100)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
                continue
            for _, entries in found or []:
                for entry_id, fields in entries:
                    last = entry_id  # the client decodes responses: str ids and fields
                    yield feed_event(int(entry_id.split("-")[0]), fields["kind"], fields["data"])


def build_feeds(redis: SharedRedis | None, key_prefix: str) -> Feeds:
    return MemoryFeeds() if redis is None else RedisFeeds(redis, key_prefix)

