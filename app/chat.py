"""The conversation rules: history, persistence, and one generation per answer.

An answer is an asyncio task owned by this service, not by the HTTP request that asked for it: a
shopper who drops the connection still gets the answer saved, and can follow it again from the
event log. The shopper's message is committed before the answer starts; the answer row is written
once, when it ends, with its final status. No path loses text that was already streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import db
from .budget import Reservation, estimate_tokens
from .errors import DatabaseUnavailable, NotFound, ServiceUnavailable
from .eventlog import Event, EventLog, SharedLogUnavailable, encode_event
from .knowledge import KnowledgeChunk, answer_pieces, knowledge_only_answer, search_knowledge
from .llm import LLM, UpstreamError, Usage
from .logs import log_answer
from .metrics import Metrics
from .prompt import build_messages
from .store_profile import StoreProfile, build_system_prompt

log = logging.getLogger(__name__)

# Statuses an answer can end in; 'streaming' is the only one that is not final.
FINAL_STATUSES = frozenset({"complete", "error", "cancelled", "interrupted"})
_SAVE_ATTEMPTS = 5
# An answer whose producer is gone: keep the text given (or, with NULL, what the row has), and
# touch only a row still 'streaming', so a producer that saved first is never overwritten.
INTERRUPT_SQL = ("UPDATE messages SET status = 'interrupted', text = coalesce(%s, text),"
                 " finished_at = now() WHERE id = %s AND status = 'streaming'")
# How long a cancel on an instance that does not produce the answer waits to see it end.
REMOTE_CANCEL_WAIT_S = 3.0
# The longest answer the service keeps, whatever the upstream sends: MAX_TOKENS bounds what an
# honest model writes, these bound a hostile or broken one (4 MB answers held in memory, in the
# event log and in the row). Per MAX_TOKENS token: a token is rarely over 16 characters, and one
# token event carries one token or more.
ANSWER_CHARS_PER_TOKEN = 16
ANSWER_EVENTS_PER_TOKEN = 2
ANSWER_MIN_CHARS = 8000
ANSWER_MIN_EVENTS = 1000


def answer_caps(max_tokens: int) -> tuple[int, int]:
    """(characters, token events) an answer may have with MAX_TOKENS = `max_tokens`."""
    return (max(ANSWER_MIN_CHARS, max_tokens * ANSWER_CHARS_PER_TOKEN),
            max(ANSWER_MIN_EVENTS, max_tokens * ANSWER_EVENTS_PER_TOKEN))


# Past any token id: following from here yields just meta and the end.
_AFTER_EVERY_TOKEN = 2**53


@dataclass(frozen=True)
class StartedAnswer:
    session_id: uuid.UUID
    user_message_id: uuid.UUID
    answer_id: uuid.UUID


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    sender: str
    text: str
    status: str
    created_at: datetime
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "sender": self.sender, "text": self.text,
                "status": self.status, "createdAt": self.created_at.isoformat()}


@dataclass(frozen=True)
class AnswerRecord:
    id: uuid.UUID
    conversation_id: uuid.UUID
    text: str
    status: str
    prompt_tokens: int | None
    completion_tokens: int | None
    fallback: bool
    sources: list[dict[str, str]]


@dataclass(frozen=True)
class HistoryPage:
    session_id: uuid.UUID
    messages: list[Message]
    has_more: bool


@dataclass
class _Relayed:
    """What an answer's relay has passed on so far (kept when the upstream fails midway)."""

    parts: list[str]
    usage: Usage | None = None
    first_token_at: float | None = None


def meta_payload(started: StartedAnswer) -> dict[str, str]:
    return {"sessionId": str(started.session_id), "messageId": str(started.answer_id),
            "userMessageId": str(started.user_message_id)}


def usage_payload(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {"promptTokens": usage.prompt_tokens, "completionTokens": usage.completion_tokens,
            "totalTokens": usage.prompt_tokens + usage.completion_tokens}


def sources_payload(chunks: list[KnowledgeChunk]) -> list[dict[str, str]]:
    """The articles an answer drew on, each once, best first: the widget shows "From: …"."""
    articles = {chunk.path: chunk.title for chunk in chunks}
    return [{"title": title, "path": path} for path, title in articles.items()]


def done_payload(answer_key: str, text: str, status: str, usage: Usage | None,
                 sources: list[dict[str, str]], fallback: bool) -> dict[str, Any]:
    return {"messageId": answer_key, "text": text, "status": status,
            "usage": usage_payload(usage), "sources": sources, "fallback": fallback}


NOT_SAVED_MESSAGE = "We could not keep this answer. Please ask again in a moment."
INTERRUPTED_MESSAGE = "The answer was cut off. Please ask again."


# The `model` of answers in the log when no model is configured (knowledge-only mode).
KNOWLEDGE_ONLY_MODEL = "knowledge-only"


class ChatService:
    def __init__(self, pool: AsyncConnectionPool, events: EventLog, llm: LLM | None, *,
                 history_window: int, profile: StoreProfile,
                 metrics: Metrics | None = None,
                 answer_cap: tuple[int, int] = answer_caps(500)) -> None:
        self._pool = pool
        self._events = events
        # None: knowledge-only mode, every answer comes from the knowledge base.
        self._llm = llm
        self._history_window = history_window
        self._max_answer_chars, self._max_answer_events = answer_cap
        self._profile = profile
        # The answers this instance is producing. Keep a hard reference to each task: the event
        # loop only keeps weak ones (https://docs.python.org/3/library/asyncio-task.html#asyncio.create_task).
        self._running: dict[uuid.UUID, asyncio.Task[str]] = {}
        # The answers still generating, the only ones a cancel may interrupt: once generation
        # has ended, the save and the terminal event must run to the end, or the text is lost
        # and the stream never ends.
        self._generating: set[uuid.UUID] = set()
        self._interrupting = False
        # Tests that build a service alone get a registry nobody reads.
        self._metrics = metrics if metrics is not None else Metrics()
        events.on_cancel_request(self._cancel_running)

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def mode(self) -> str:
        return "llm" if self._llm is not None else "knowledge-only"

    # -- starting an answer ------------------------------------------------------------------

    def reservation_chars(self, question: str) -> int:
        """The characters of the prompt known before the answer starts, for its first
        reservation of the token budget (the knowledge and the history come on top)."""
        return len(build_system_prompt(self._profile, [])) + len(question)

    async def start_answer(self, question: str, session_id: uuid.UUID | None,
                           reservation: Reservation | None = None) -> StartedAnswer:
        """Commit the shopper's message and an empty answer row while the answer starts.

        `reservation` is the answer's share of the token budget: the answer settles it.

        The knowledge search and the model's first token take far longer than the commit, so
        the answer's task starts as soon as the history is read instead of after the commit;
        its first token (and anything it saves) still waits for the commit, so no answer is
        ever shown or kept for a question that was not saved.
        """
        asked_at = time.monotonic()
        user_message_id, answer_id = uuid.uuid4(), uuid.uuid4()
        # Claimed before the row exists: other instances never see it 'streaming' unclaimed.
        await self._events.claim(str(answer_id))
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task: asyncio.Task[str] | None = None
        try:
            async with db.connection(self._pool) as conn, conn.transaction():
                history: list[tuple[str, str]] = []
                new_session = True
                if session_id is not None:
                    cur = await conn.execute("SELECT 1 FROM conversations WHERE id = %s",
                                             (session_id,))
                    if await cur.fetchone() is not None:
                        new_session = False
                        history = await self._history_window_rows(conn, session_id)
                if new_session:
                    # An unknown id from the client is never adopted: the server makes the id,
                    # so one shopper cannot pick another's future session id.
                    session_id = uuid.uuid4()
                assert session_id is not None
                started = StartedAnswer(session_id, user_message_id, answer_id)
                # The task copies this request's context, so its log line carries the request id.
                task = asyncio.create_task(
                    self._generate(started, history, question, asked_at, committed,
                                   reservation),
                    name=f"answer-{answer_id}")
                if new_session:
                    await conn.execute("INSERT INTO conversations (id) VALUES (%s)",
                                       (session_id,))
                await conn.execute(
                    "INSERT INTO messages (id, conversation_id, sender, text, status, model)"
                    " VALUES (%s, %s, 'user', %s, 'complete', NULL),"
                    " (%s, %s, 'ai', '', 'streaming', %s)",
                    (user_message_id, session_id, question, answer_id, session_id,
                     self._llm.model if self._llm else None),
                )
        except BaseException:
            # The question is not saved, so there is no answer: stop its task quietly.
            committed.cancel()
            if task is not None:
                task.cancel()
            raise
        committed.set_result(None)
        answer_key = str(answer_id)
        self._events.start(answer_key)
        self._events.append(answer_key, "meta", meta_payload(started))
        self._running[answer_id] = task
        task.add_done_callback(lambda _: self._running.pop(answer_id, None))
        return started

    async def _history_window_rows(self, conn: Any, session_id: uuid.UUID) -> list[tuple[str, str]]:
        if self._history_window == 0:
            return []
        # Answers still streaming have no text yet, and failed ones may be empty: skip both.
        cur = await conn.execute(
            "SELECT sender, text FROM messages WHERE conversation_id = %s AND text <> ''"
            " ORDER BY seq DESC LIMIT %s",
            (session_id, self._history_window),
        )
        rows = await cur.fetchall()
        return [(sender, text) for sender, text in reversed(rows)]

    # -- generating --------------------------------------------------------------------------

    async def _generate(self, started: StartedAnswer, history: list[tuple[str, str]],
                        question: str, asked_at: float, committed: asyncio.Future[None],
                        reservation: Reservation | None) -> str:
        """Produce the answer; nothing reaches the event log or the database before `committed`."""
        try:
            return await self._produce(started, history, question, asked_at, committed,
                                       reservation)
        finally:
            if reservation is not None:
                # Settled already unless the answer ended early (its question never saved).
                await asyncio.shield(reservation.release())

    async def _produce(self, started: StartedAnswer, history: list[tuple[str, str]],
                       question: str, asked_at: float, committed: asyncio.Future[None],
                       reservation: Reservation | None) -> str:
        answer_key = str(started.answer_id)
        parts: list[str] = []
        failure: UpstreamError | None = None
        status = "complete"
        chunks: list[KnowledgeChunk] = []
        prompt: list[dict[str, str]] = []
        fallback = False
        relayed = _Relayed(parts)
        self._generating.add(started.answer_id)
        try:
            chunks = await self._find_knowledge(question, history)
            system_prompt = build_system_prompt(self._profile, chunks)
            if self._llm is None or not await self._reserve_prompt(
                    reservation, build_messages(system_prompt, history, question)):
                await committed
                self._answer_from_knowledge(answer_key, chunks, parts)
                fallback = self._llm is not None
            else:
                prompt = build_messages(system_prompt, history, question)
                try:
                    await self._relay(self._llm.stream(prompt), answer_key, relayed, committed)
                except UpstreamError as exc:
                    self._metrics.upstream_errors.labels(kind=exc.code).inc()
                    # Before the first token the shopper has seen nothing, so the knowledge
                    # base can still answer; after it, a second voice would contradict the first.
                    # A rejected key or request is a configuration fault: it stays an error.
                    if parts or not exc.retryable:
                        raise
                    log.warning("the model failed before its first token (%s): answering from "
                                "the knowledge base", exc.code)
                    fallback = True
                    await committed
                    self._answer_from_knowledge(answer_key, chunks, parts)
        except asyncio.CancelledError:
            if committed.cancelled():
                raise  # the question was never saved (see start_answer): nothing to keep
            # Cancelled by the shopper (cancel) or by shutdown: either way, keep what was said.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            status = "interrupted" if self._interrupting else "cancelled"
        except UpstreamError as exc:  # counted where it was caught first, above
            failure, status = exc, "error"
        finally:
            self._generating.discard(started.answer_id)
        usage, first_token_at = relayed.usage, relayed.first_token_at
        # A failure can come before the commit; the answer row must exist before its update.
        await committed
        text = "".join(parts)
        sources = sources_payload(chunks)
        saved = await self._save_answer(started.answer_id, text, status, usage, sources,
                                        fallback)
        if first_token_at is None and parts:
            first_token_at = time.monotonic()  # a knowledge-base answer: all of it at once
        self._observe_finished(started, status, asked_at, first_token_at, usage, len(parts),
                               fallback)
        if not saved:
            # `done` tells the shopper the answer is kept: it was not, so say so instead.
            self._events.append(answer_key, "error", {
                "code": "not_saved", "message": NOT_SAVED_MESSAGE, "retryable": True})
        elif status in ("complete", "cancelled"):
            self._events.append(answer_key, "done",
                                done_payload(answer_key, text, status, usage, sources, fallback))
        elif status == "interrupted":
            # Retryable: the widget resumes, and another instance serves the saved text.
            self._events.append(answer_key, "error", {
                "code": "interrupted", "message": INTERRUPTED_MESSAGE, "retryable": True})
        else:
            assert failure is not None
            self._events.append(answer_key, "error", {
                "code": failure.code, "message": failure.message, "retryable": failure.retryable})
        # After the end is sent: charging the budget may wait on Redis, the shopper need not.
        if reservation is not None:
            await reservation.settle(self._tokens_used(prompt, text, usage, fallback))
        return status

    async def _relay(self, answer_stream: AsyncIterator[str | Usage], answer_key: str,
                     relayed: _Relayed, committed: asyncio.Future[None]) -> None:
        """Relay the model's deltas to the event log, up to the answer's caps.

        Past a cap the upstream stream is closed and the answer ends with what it has.
        """
        parts = relayed.parts
        chars = 0
        async with contextlib.aclosing(answer_stream):  # type: ignore[type-var]
            async for item in answer_stream:
                if isinstance(item, Usage):
                    relayed.usage = item
                    continue
                if not parts:
                    await committed
                    relayed.first_token_at = time.monotonic()
                room = self._max_answer_chars - chars
                if len(item) >= room or len(parts) + 1 >= self._max_answer_events:
                    item = item[:max(room, 0)]
                    if item:
                        parts.append(item)
                        self._events.append(answer_key, "token", {"text": item})
                    log.warning("the model's answer passed the cap (%d characters, %d events):"
                                " cut off", self._max_answer_chars, self._max_answer_events)
                    break
                chars += len(item)
                parts.append(item)
                self._events.append(answer_key, "token", {"text": item})

    async def _reserve_prompt(self, reservation: Reservation | None,
                              prompt: list[dict[str, str]]) -> bool:
        """Grow the answer's reservation to its whole prompt; False: the budget has no room
        for it, and the knowledge base answers instead of a paid call."""
        if reservation is None:
            return True
        if await reservation.extend_to(reservation.budget.answer_estimate(
                sum(len(m["content"]) for m in prompt))):
            return True
        log.warning("the token budget has no room for this prompt: answering from the "
                    "knowledge base")
        return False

    def _observe_finished(self, started: StartedAnswer, status: str, asked_at: float,
                          first_token_at: float | None, usage: Usage | None,
                          deltas: int, fallback: bool) -> None:
        """The answer's metrics and its one log line, once it is saved."""
        duration_s = time.monotonic() - asked_at
        first_token_s = None if first_token_at is None else first_token_at - asked_at
        self._metrics.observe_answer(
            status, duration_s, first_token_s,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0)
        log_answer(
            message_id=started.answer_id, session_id=started.session_id, status=status,
            model=self._llm.model if self._llm is not None else KNOWLEDGE_ONLY_MODEL,
            fallback=fallback,
            time_to_first_token_ms=None if first_token_s is None else first_token_s * 1000,
            duration_ms=duration_s * 1000,
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            deltas=deltas)

    async def _find_knowledge(self, question: str,
                              history: list[tuple[str, str]]) -> list[KnowledgeChunk]:
        """The knowledge base's best chunks for the question; a follow-up such as "and to
        Europe?" is searched again together with the shopper's previous message."""
        try:
            chunks = await search_knowledge(self._pool, question)
            earlier = [text for sender, text in history if sender == "user"]
            if not chunks and earlier:
                chunks = await search_knowledge(self._pool, f"{earlier[-1]} {question}")
            return chunks
        except (PoolTimeout, psycopg.Error) as exc:
            # The answer can still be given without the articles; losing it would be worse.
            log.warning("knowledge search failed: %s", type(exc).__name__)
            return []

    def _answer_from_knowledge(self, answer_key: str, chunks: list[KnowledgeChunk],
                               parts: list[str]) -> None:
        """Stream the framed best chunk with the same token events a model's answer uses."""
        for piece in answer_pieces(knowledge_only_answer(self._profile, chunks)):
            parts.append(piece)
            self._events.append(answer_key, "token", {"text": piece})

    @staticmethod
    def _tokens_used(prompt: list[dict[str, str]], text: str, usage: Usage | None,
                     fallback: bool) -> int:
        """What the answer cost: the upstream's count, or an estimate if it never came; nothing
        when no paid call was made, or the call failed before its first token."""
        if usage is not None:
            return usage.prompt_tokens + usage.completion_tokens
        if not prompt or fallback:
            return 0
        return estimate_tokens(sum(len(m["content"]) for m in prompt), len(text))

    async def _save_answer(self, answer_id: uuid.UUID, text: str, status: str,
                           usage: Usage | None, sources: list[dict[str, str]],
                           fallback: bool) -> bool:
        """Write the answer's one row; retry through a short database outage. False: not saved."""
        prompt_tokens = usage.prompt_tokens if usage else None
        completion_tokens = usage.completion_tokens if usage else None
        delay = 0.5
        for attempt in range(1, _SAVE_ATTEMPTS + 1):
            try:
                async with db.connection(self._pool) as conn:
                    await conn.execute(
                        "UPDATE messages SET text = %s, status = %s, prompt_tokens = %s,"
                        " completion_tokens = %s, sources = %s, fallback = %s,"
                        " finished_at = now() WHERE id = %s",
                        (text, status, prompt_tokens, completion_tokens, Jsonb(sources),
                         fallback, answer_id),
                    )
                return True
            except DatabaseUnavailable:
                if attempt < _SAVE_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
        log.error("could not save answer %s after %d attempts", str(answer_id)[:8],
                  _SAVE_ATTEMPTS)
        return False

    # -- reading -----------------------------------------------------------------------------

    async def find_answer(self, answer_id: uuid.UUID, session_id: uuid.UUID) -> AnswerRecord:
        """The answer if it belongs to this session; otherwise NotFound, as if it did not exist."""
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(AnswerRecord))
            await cur.execute(
                "SELECT id, conversation_id, text, status, prompt_tokens, completion_tokens,"
                " fallback, sources FROM messages WHERE id = %s AND conversation_id = %s AND sender = 'ai'",
                (answer_id, session_id),
            )
            record = await cur.fetchone()
        if record is None:
            raise NotFound("This message was not found.")
        return record

    def new_answer_events(self, started: StartedAnswer) -> AsyncIterator[Event]:
        """The events of an answer this instance just started (no ownership check needed)."""
        events = self._events.subscribe(str(started.answer_id), after=0)
        assert events is not None, "start_answer puts every new answer in the event log"
        return events

    async def follow(self, answer_id: uuid.UUID, session_id: uuid.UUID,
                     after: int) -> AsyncIterator[Event]:
        """The answer's events after `after`: from this instance's memory if it produces the
        answer, else from the shared log, else rebuilt from the record."""
        record = await self.find_answer(answer_id, session_id)
        live = self._events.subscribe(str(answer_id), after)
        if live is not None:
            return live
        try:
            shared = await self._events.resume(
                str(answer_id), after, meta=record_meta(record),
                streaming=record.status == "streaming",
                on_producer_lost=lambda text, seq: self._end_orphan(record, text, seq))
        except SharedLogUnavailable:
            if record.status == "streaming":
                raise ServiceUnavailable(
                    "This answer cannot be followed right now. Please try again in a moment."
                ) from None
            return _replay_record(record, after)  # the record has all of a finished answer
        if shared is not None:
            return _settled(shared)
        # No instance has it: an expired stream, or an answer whose producer died with it.
        if record.status == "streaming" and answer_id not in self._running:
            record = await self._mark_interrupted(record)
        return _replay_record(record, after)

    async def _end_orphan(self, record: AnswerRecord, streamed_text: str, seq: int) -> Event:
        """A subscriber found the producer gone: save what it had streamed, as 'interrupted'."""
        try:
            async with db.connection(self._pool) as conn:
                await conn.execute(INTERRUPT_SQL, (streamed_text, record.id))
            # Whatever the update found: the producer may have saved the answer just before.
            record = await self.find_answer(record.id, record.conversation_id)
        except DatabaseUnavailable:
            record = replace(record, text=streamed_text, status="interrupted")
        return terminal_event(record, seq)

    async def _mark_interrupted(self, record: AnswerRecord) -> AnswerRecord:
        """An answer left 'streaming' with no producer: its instance died mid-answer."""
        async with db.connection(self._pool) as conn:
            await conn.execute(INTERRUPT_SQL, (None, record.id))
        return replace(record, status="interrupted")

    async def interrupt_orphans(self) -> int:
        """At start-up: answers still 'streaming' that no instance produces lost their producer.

        With one instance that is all of them; with a shared log, only those without a lease
        (others may be producing the rest right now). The streamed text is kept.
        """
        async with db.connection(self._pool) as conn:
            cur = await conn.execute("SELECT id FROM messages WHERE status = 'streaming'")
            streaming = [str(row[0]) for row in await cur.fetchall()]
        if not streaming:
            return 0
        try:
            orphans = await self._events.producerless(streaming)
        except SharedLogUnavailable:
            log.warning("shared event log unreachable: left %d streaming answers alone",
                        len(streaming))
            return 0
        if not orphans:
            return 0
        async with db.connection(self._pool) as conn:
            cur = conn.cursor()
            await cur.executemany(INTERRUPT_SQL,
                                  [(text, answer_id) for answer_id, text in orphans.items()])
        return len(orphans)

    async def history(self, session_id: uuid.UUID, limit: int,
                      before: uuid.UUID | None) -> HistoryPage:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute("SELECT 1 FROM conversations WHERE id = %s", (session_id,))
            if await cur.fetchone() is None:
                raise NotFound("This conversation was not found.")
            before_seq: int | None = None
            if before is not None:
                cur = await conn.execute(
                    "SELECT seq FROM messages WHERE id = %s AND conversation_id = %s",
                    (before, session_id))
                row = await cur.fetchone()
                if row is None:
                    raise NotFound("This message was not found.")
                before_seq = row[0]
            rows = conn.cursor(row_factory=class_row(Message))
            await rows.execute(
                "SELECT id, sender, text, status, created_at, seq FROM messages"
                " WHERE conversation_id = %s AND (%s::bigint IS NULL OR seq < %s)"
                " ORDER BY seq DESC LIMIT %s",
                (session_id, before_seq, before_seq, limit + 1),
            )
            newest_first = await rows.fetchall()
        has_more = len(newest_first) > limit
        return HistoryPage(session_id, list(reversed(newest_first[:limit])), has_more)

    # -- stopping ----------------------------------------------------------------------------

    async def cancel(self, answer_id: uuid.UUID, session_id: uuid.UUID) -> str:
        """Stop an answer this instance is producing; return the answer's status."""
        record = await self.find_answer(answer_id, session_id)
        task = self._running.get(answer_id)
        if task is None:
            if record.status != "streaming":
                return record.status
            return await self._cancel_elsewhere(record)
        if answer_id in self._generating:
            task.cancel()
        # shield: a shopper who leaves mid-cancel must not cancel the save of the partial text.
        return await asyncio.shield(task)

    async def _cancel_elsewhere(self, record: AnswerRecord) -> str:
        """Ask the instance producing the answer to cancel it, and wait a moment for its end."""
        answer_key = str(record.id)
        try:
            await self._events.request_cancel(answer_key)
            events = await self._events.resume(
                answer_key, _AFTER_EVERY_TOKEN, meta=record_meta(record), streaming=True,
                on_producer_lost=lambda text, seq: self._end_orphan(record, text, seq))
        except SharedLogUnavailable:
            raise ServiceUnavailable("The answer cannot be stopped right now. Please try again.") \
                from None
        if events is None:
            # No instance has it: its producer died (one instance: with the previous process).
            return (await self._mark_interrupted(record)).status
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REMOTE_CANCEL_WAIT_S):
                    async for event in events:
                        if event.is_terminal:
                            break
        # The producer saves before it sends the end, so the record now says how it ended.
        return (await self.find_answer(record.id, record.conversation_id)).status

    def _cancel_running(self, answer_key: str) -> None:
        """Another instance asked to cancel an answer: cancel it if this instance produces it."""
        answer_id = uuid.UUID(answer_key)
        task = self._running.get(answer_id)
        if task is not None and answer_id in self._generating:
            task.cancel()

    async def shutdown(self, grace_s: float) -> None:
        """Let answers finish for `grace_s`, then save the rest as 'interrupted'."""
        pending = list(self._running.values())
        if pending:
            log.info("waiting up to %.0fs for %d answers to finish", grace_s, len(pending))
            _, still_running = await asyncio.wait(pending, timeout=grace_s)
            if still_running:
                self._interrupting = True
                for answer_id, task in list(self._running.items()):
                    if answer_id in self._generating:
                        task.cancel()
                await asyncio.wait(still_running, timeout=10)


def record_meta(record: AnswerRecord) -> Event:
    return encode_event(0, "meta", {"sessionId": str(record.conversation_id),
                                    "messageId": str(record.id)})


def terminal_event(record: AnswerRecord, seq: int) -> Event:
    """How a settled answer ends on the wire: `done`, or an `error` that is not worth retrying."""
    answer_key = str(record.id)
    if record.status in ("complete", "cancelled"):
        usage = None
        if record.prompt_tokens is not None and record.completion_tokens is not None:
            usage = Usage(record.prompt_tokens, record.completion_tokens)
        return encode_event(seq, "done", done_payload(
            answer_key, record.text, record.status, usage, record.sources, record.fallback))
    if record.status == "interrupted":
        return encode_event(seq, "error", {
            "code": "interrupted", "message": INTERRUPTED_MESSAGE, "retryable": False})
    return encode_event(seq, "error", {
        "code": "upstream_error", "retryable": False,
        "message": "The assistant could not finish this answer. Please ask again."})


async def _settled(events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Events from the shared log, with a shutdown's 'retryable' interruption made final.

    A producer that shuts down ends its answers with a retryable `interrupted` error, so that
    its clients resume elsewhere. Elsewhere is here, and the answer is settled: retrying again
    would only replay the same end.
    """
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if event.kind == "error" and event.payload.get("code") == "interrupted":
                yield encode_event(event.seq, "error", {
                    "code": "interrupted", "message": INTERRUPTED_MESSAGE, "retryable": False})
            else:
                yield event


def _replay_record(record: AnswerRecord, after: int) -> AsyncIterator[Event]:
    """A finished answer from PostgreSQL: meta, its whole text as one token, then the end."""
    events = [record_meta(record)]
    if after < 1 and record.text:
        events.append(encode_event(1, "token", {"text": record.text}))
    events.append(terminal_event(record, 2))

    async def replay() -> AsyncIterator[Event]:
        for event in events:
            yield event

    return replay()
