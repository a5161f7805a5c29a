"""The live view of each answer: an append-only list of events, and subscribers that follow it.

Event ids: `meta` is 0, tokens are 1, 2, 3... and the terminal `done` or `error` comes last. Tokens
put their id on the wire, so a browser's Last-Event-ID is "the last token I have"; so does the end
of an answer, so that a browser which saw the end says so when its EventSource reconnects, and is
told 204 (which stops it) instead of getting the end again every 3 s. An `error` that asks the
client to follow the answer again (`interrupted` or `unavailable`, retryable) is not the end and
has no id: the client resumes from its last token.
Each event is encoded to its SSE frame once, when appended; every subscriber sends those bytes.

This module is the in-process log (one instance); app/redis_eventlog.py shares it between
instances. PostgreSQL is the record; the log is short-lived.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TERMINAL_KINDS = frozenset({"done", "error"})
# Errors after which a client should follow the answer again, on this or another instance (the
# widget does): the producer shut down, or this instance lost the shared log.
FOLLOW_AGAIN_CODES = frozenset({"interrupted", "unavailable"})
# The largest id a client may send back (Last-Event-ID has at most 12 digits). A finished answer
# replayed from PostgreSQL, whose token ids are gone, ends with this id: past any id its client
# can hold, so a reconnect after that end is told 204 and one from any token still replays.
REPLAYED_END_ID = 10**12 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str
    data: str  # one line of JSON
    frame: bytes  # the SSE frame as sent

    @property
    def payload(self) -> Any:
        return json.loads(self.data)

    @property
    def is_terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def encode_event(seq: int, kind: str, payload: Any) -> Event:
    # ensure_ascii=False keeps emoji as UTF-8, not six-byte escapes. json never emits a raw
    # newline or carriage return, so one `data:` line can hold any text.
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    # ensure_ascii=False leaves a lone surrogate as it is, and UTF-8 cannot carry one (a browser
    # would read U+FFFD): write it as a JSON \udXXX escape, which JSON.parse turns back into the
    # same UTF-16 unit. Any text then round-trips, and every frame is valid UTF-8.
    # isascii() is a quick scan that spares the regex for most tokens.
    if not data.isascii():
        data = _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", data)
    return event_from_data(seq, kind, data)


def event_from_data(seq: int, kind: str, data: str) -> Event:
    """An event whose JSON is already encoded (read back from a shared log)."""
    # A `tool` event (an order card) is part of the answer like a token: it has an id, so a
    # client resuming after it does not get it twice.
    id_line = (f"id: {seq}\n" if kind == "token" or kind == "tool" or _ends_the_answer(kind, data)
               else "")
    frame = f"{id_line}event: {kind}\ndata: {data}\n\n".encode()
    return Event(seq, kind, data, frame)


def _ends_the_answer(kind: str, data: str) -> bool:
    if kind == "done":
        return True
    if kind != "error":
        return False
    payload = json.loads(data)
    return not (payload.get("retryable") is True and payload.get("code") in FOLLOW_AGAIN_CODES)


def finished_events(events: Sequence[Event], after: int) -> list[Event] | None:
    """Of an answer's events from its first on, what a resume after `after` gets when the
    answer is done: its meta, the events after `after`, and its `done`; None unless `events`
    runs whole from the meta (seq 0) to a `done`."""
    if not events or events[0].seq != 0 or events[0].kind != "meta" or events[-1].kind != "done":
        return None
    end = events[-1]
    return [events[0], *(e for e in events[1:-1] if e.seq > after), end]


class SharedLogUnavailable(Exception):
    """The log shared between instances (Redis) could not be reached in acceptable time."""


# Called by a subscriber that finds an answer's producer gone: (text streamed so far, seq for the
# terminal event) -> the terminal event to end the stream with, once the record is settled.
ProducerLost = Callable[[str, int], Awaitable[Event]]
# Called on the producing instance when another instance asks to cancel one of its answers.
CancelHandler = Callable[[str], None]


class EventLog(Protocol):
    async def open(self, on_cancel_request: CancelHandler | None = None) -> None:
        """Start; `on_cancel_request` is called on the producing instance when another instance
        asks to cancel one of its answers."""

    async def claim(self, answer_id: str) -> None:
        """Announce that this instance will produce the answer (before its row is committed)."""

    def start(self, answer_id: str) -> None: ...

    def append(self, answer_id: str, kind: str, payload: Any) -> Event: ...

    def subscribe(self, answer_id: str, after: int) -> AsyncIterator[Event] | None:
        """Events with seq > after (meta always), then live ones; None if the log has no such answer."""

    async def end_id(self, answer_id: str) -> int | None:
        """The id of the answer's terminal event, if the log (this instance's or the shared one)
        has it; None while the answer is live or when the log has no trace of it.
        Raises SharedLogUnavailable."""

    async def finished(self, answer_id: str, after: int) -> list[Event] | None:
        """A finished answer's events, for a resume that needs no database: its meta, the
        events after `after` and its `done`, when the log holds the answer whole from its meta
        to its `done`; None otherwise (live, ended otherwise, trimmed, expired or unknown).
        Raises SharedLogUnavailable."""

    async def resume(self, answer_id: str, after: int, *, meta: Event, streaming: bool,
                     on_producer_lost: ProducerLost) -> AsyncIterator[Event] | None:
        """Like subscribe, for an answer produced by another instance; None if no instance has it.

        `meta` stands in if the shared copy lost its own; `streaming` says the record is not
        final, so an answer with no trace in the shared log is waited for (briefly) rather
        than given up. Raises SharedLogUnavailable.
        """

    async def producerless(self, answer_ids: Sequence[str]) -> dict[str, str]:
        """Of these 'streaming' answers, those no instance is producing, with the text they had
        streamed. Raises SharedLogUnavailable."""

    async def request_cancel(self, answer_id: str) -> bool:
        """Ask whichever instance produces the answer to cancel it; False if no instance could
        hear it. Raises SharedLogUnavailable."""

    async def aclose(self) -> None: ...


@dataclass
class _Answer:
    events: list[Event] = field(default_factory=list)
    # Replaced on every append; subscribers wait on the one current when they ran out of events.
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryEventLog:
    """Events per answer in this process; finished answers are kept for `retention_s`."""

    def __init__(self, retention_s: float = 600.0) -> None:
        self._answers: dict[str, _Answer] = {}
        # Finished answers in the order they finished, so expiry never scans live ones.
        self._finished: deque[tuple[float, str]] = deque()
        self._retention_s = retention_s

    async def open(self, on_cancel_request: CancelHandler | None = None) -> None:
        pass  # only this process can cancel its answers, directly

    async def claim(self, answer_id: str) -> None:
        pass  # one instance: nobody else needs to know

    def start(self, answer_id: str) -> None:
        self._forget_expired()
        self._answers[answer_id] = _Answer()

    def append(self, answer_id: str, kind: str, payload: Any) -> Event:
        answer = self._answers[answer_id]
        event = encode_event(len(answer.events), kind, payload)
        answer.events.append(event)
        if event.is_terminal:
            self._finished.append((time.monotonic(), answer_id))
        waiters, answer.changed = answer.changed, asyncio.Event()
        waiters.set()
        return event

    def subscribe(self, answer_id: str, after: int) -> AsyncIterator[Event] | None:
        answer = self._answers.get(answer_id)
        if answer is None:
            return None
        return self._follow(answer, after)

    def events_of(self, answer_id: str) -> list[Event] | None:
        """The answer's events so far (the live list: it grows as the answer does)."""
        answer = self._answers.get(answer_id)
        return None if answer is None else answer.events

    async def end_id(self, answer_id: str) -> int | None:
        return self.logged_end_id(answer_id)

    def logged_end_id(self, answer_id: str) -> int | None:
        answer = self._answers.get(answer_id)
        if answer is None or not answer.events or not answer.events[-1].is_terminal:
            return None
        return answer.events[-1].seq

    async def finished(self, answer_id: str, after: int) -> list[Event] | None:
        return finished_events(self.events_of(answer_id) or [], after)

    async def resume(self, answer_id: str, after: int, *, meta: Event, streaming: bool,
                     on_producer_lost: ProducerLost) -> AsyncIterator[Event] | None:
        return None  # no other instance to resume from

    async def producerless(self, answer_ids: Sequence[str]) -> dict[str, str]:
        # No other instance shares this log: an answer this process is not producing has none.
        return {answer_id: "" for answer_id in answer_ids if answer_id not in self._answers}

    async def request_cancel(self, answer_id: str) -> bool:
        return False

    async def _follow(self, answer: _Answer, after: int) -> AsyncIterator[Event]:
        position = 0
        while True:
            while position < len(answer.events):
                event = answer.events[position]
                position += 1
                if event.seq == 0 or event.seq > after or event.is_terminal:
                    yield event
                if event.is_terminal:
                    return
            await answer.changed.wait()

    def _forget_expired(self) -> None:
        cutoff = time.monotonic() - self._retention_s
        while self._finished and self._finished[0][0] < cutoff:
            _, answer_id = self._finished.popleft()
            self._answers.pop(answer_id, None)

    async def aclose(self) -> None:
        self._answers.clear()
