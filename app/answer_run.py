"""One answer's run, from the shopper's question to its saved row and the stream's last event.

Each answer is an `AnswerRun` with its own state (the text so far, usage, status, the chunks it
drew on), run as one asyncio task that app/chat.py keeps in its registry. It reads straight down:
knowledge, prompt (its reservation of the token budget grown to the whole prompt), upstream
stream (cut at the answer's caps), events, save, metrics, settling the token budget. Nothing
reaches the event log or the database before the shopper's message is committed (`committed`).

A run is for one site (None: the default site): its profile, its knowledge, its model settings
and its token budget (the reservation the endpoint took from the site's counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import answer_events
from .budget import Reservation, estimate_tokens
from .eventlog import EventLog
from .knowledge import KnowledgeChunk, answer_pieces, knowledge_only_answer, search_knowledge
from .llm import LLM, UpstreamError, Usage
from .logs import log_answer
from .messages import MessageStore
from .metrics import Metrics
from .prompt import build_messages
from .sites import DEFAULT_SITE_ID, Site
from .store_profile import StoreProfile, build_system_prompt

log = logging.getLogger(__name__)

# The `model` of answers in the log when no model is configured (knowledge-only mode).
KNOWLEDGE_ONLY_MODEL = "knowledge-only"
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


@dataclass(frozen=True)
class StartedAnswer:
    session_id: uuid.UUID
    user_message_id: uuid.UUID
    answer_id: uuid.UUID


@dataclass(frozen=True)
class AnswerTools:
    """What every run uses; one per app, built by ChatService."""

    pool: AsyncConnectionPool
    messages: MessageStore
    events: EventLog
    llm: LLM | None  # None: knowledge-only mode, every answer comes from the knowledge base
    profile: StoreProfile  # the default site's
    metrics: Metrics
    # answer_caps(MAX_TOKENS): past either, the upstream stream is closed and the answer ends.
    max_answer_chars: int
    max_answer_events: int


class AnswerRun:
    def __init__(self, tools: AnswerTools, started: StartedAnswer, question: str,
                 history: list[tuple[str, str]], asked_at: float,
                 committed: asyncio.Future[None], site: Site | None = None,
                 reservation: Reservation | None = None) -> None:
        self._tools = tools
        self._site = site
        self._site_id = DEFAULT_SITE_ID if site is None else site.id
        # The site's profile, or the default site's.
        self._profile = tools.profile if site is None else site.profile
        # The answer's share of the site's token budget, settled when it ends (None: no budget).
        self._reservation = reservation
        self.started = started
        self._key = str(started.answer_id)
        self._question = question
        self._history = history
        self._asked_at = asked_at
        self._committed = committed
        self._parts: list[str] = []
        self._usage: Usage | None = None
        self._failure: UpstreamError | None = None
        self._chunks: list[KnowledgeChunk] = []
        self._prompt: list[dict[str, str]] = []
        self._fallback = False
        self._first_token_at: float | None = None
        self._shutting_down = False
        self._text = ""
        self._sources: list[answer_events.Source] = []
        self.status = "complete"
        # Only while generating may a cancel interrupt the run: once generation has ended, the
        # save and the terminal event must run to the end, or the text is lost and the stream
        # never ends.
        self.generating = False
        self.task: asyncio.Task[str] | None = None

    @property
    def model(self) -> str:
        """The model this answer is asked of: the site's, else the deployment's."""
        llm = self._tools.llm
        if llm is None:
            return KNOWLEDGE_ONLY_MODEL
        return (self._site.model if self._site is not None else None) or llm.model

    def start(self) -> asyncio.Task[str]:
        # The task copies the caller's context, so the answer's log line carries the request id.
        self.task = asyncio.create_task(self.run(), name=f"answer-{self._key}")
        return self.task

    def cancel(self, *, shutting_down: bool = False) -> None:
        """Stop generating (the shopper cancelled, or the instance is shutting down); the text
        so far is saved as 'cancelled', or 'interrupted' on shutdown."""
        self._shutting_down = self._shutting_down or shutting_down
        if self.generating and self.task is not None:
            self.task.cancel()

    async def run(self) -> str:
        try:
            return await self._run()
        finally:
            if self._reservation is not None:
                # Settled already unless the answer ended early (its question never saved).
                await asyncio.shield(self._reservation.release())

    async def _run(self) -> str:
        self.generating = True
        try:
            await self._generate()
        except asyncio.CancelledError:
            if self._committed.cancelled():
                raise  # the question was never saved (see start_answer): nothing to keep
            # Cancelled by the shopper (cancel) or by shutdown: either way, keep what was said.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self.status = "interrupted" if self._shutting_down else "cancelled"
        except UpstreamError as exc:  # counted where it was caught first, in _generate
            self._failure, self.status = exc, "error"
        finally:
            self.generating = False
        # A failure can come before the commit; the answer row must exist before its update.
        await self._committed
        self._text = "".join(self._parts)
        self._sources = answer_events.sources_of(self._chunks)
        saved = await self._save()
        if self._first_token_at is None and self._parts:
            self._first_token_at = time.monotonic()  # a knowledge-base answer: all of it at once
        self._observe_finished()
        self._tools.events.append(self._key, *self._end_event(saved))
        # After the end is sent: settling the budget may wait on Redis, the shopper need not.
        if self._reservation is not None:
            await self._reservation.settle(self._tokens_used())
        return self.status

    async def _generate(self) -> None:
        self._chunks = await self._find_knowledge()
        llm = self._tools.llm
        if llm is None:
            await self._committed
            self._answer_from_knowledge()
            return
        system_prompt = build_system_prompt(self._profile, self._chunks)
        prompt = build_messages(system_prompt, self._history, self._question)
        if not await self._reserve_prompt(prompt):
            self._fallback = True
            await self._committed
            self._answer_from_knowledge()
            return
        self._prompt = prompt
        parts, site = self._parts, self._site
        try:
            await self._relay(llm.stream(
                prompt, model=site.model if site else None,
                temperature=site.temperature if site else None,
                max_tokens=site.max_tokens if site else None))
        except UpstreamError as exc:
            self._tools.metrics.upstream_errors.labels(kind=exc.code).inc()
            # Before the first token the shopper has seen nothing, so the knowledge base can
            # still answer; after it, a second voice would contradict the first. A rejected key
            # or request is a configuration fault: it stays an error.
            if parts or not exc.retryable:
                raise
            log.warning("the model failed before its first token (%s): answering from "
                        "the knowledge base", exc.code)
            self._fallback = True
            await self._committed
            self._answer_from_knowledge()

    async def _relay(self, answer_stream: AsyncIterator[str | Usage]) -> None:
        """Relay the model's deltas to the event log, up to the answer's caps.

        Past a cap the upstream stream is closed and the answer ends with what it has.
        """
        # The per-token path: locals, not attributes, and no call beyond the log's append.
        parts, append, key = self._parts, self._tools.events.append, self._key
        max_chars, max_events = self._tools.max_answer_chars, self._tools.max_answer_events
        if self._site is not None and self._site.max_tokens is not None:
            max_chars, max_events = answer_caps(self._site.max_tokens)  # the site's own MAX_TOKENS
        chars = 0
        async with contextlib.aclosing(answer_stream):  # type: ignore[type-var]
            async for item in answer_stream:
                if isinstance(item, Usage):
                    self._usage = item
                    continue
                if self._first_token_at is None:
                    await self._committed
                    self._first_token_at = time.monotonic()
                room = max_chars - chars
                if len(item) >= room or len(parts) + 1 >= max_events:
                    item = item[:max(room, 0)]
                    if item:
                        parts.append(item)
                        append(key, "token", {"text": item})
                    log.warning("the model's answer passed the cap (%d characters, %d events):"
                                " cut off", max_chars, max_events)
                    break
                chars += len(item)
                parts.append(item)
                append(key, "token", {"text": item})  # answer_events.token, inlined

    async def _reserve_prompt(self, prompt: list[dict[str, str]]) -> bool:
        """Grow the answer's reservation to its whole prompt; False: the budget has no room
        for it, and the knowledge base answers instead of a paid call."""
        reservation = self._reservation
        if reservation is None:
            return True
        if await reservation.extend_to(reservation.budget.answer_estimate(
                sum(len(m["content"]) for m in prompt),
                self._site.max_tokens if self._site is not None else None)):
            return True
        log.warning("the token budget has no room for this prompt: answering from the "
                    "knowledge base")
        return False

    async def _find_knowledge(self) -> list[KnowledgeChunk]:
        """The knowledge base's best chunks for the question; a follow-up such as "and to
        Europe?" is searched again together with the shopper's previous message."""
        pool = self._tools.pool
        try:
            chunks = await search_knowledge(pool, self._question, site_id=self._site_id)
            earlier = [text for sender, text in self._history if sender == "user"]
            if not chunks and earlier:
                chunks = await search_knowledge(pool, f"{earlier[-1]} {self._question}",
                                                site_id=self._site_id)
            return chunks
        except (PoolTimeout, psycopg.Error) as exc:
            # The answer can still be given without the articles; losing it would be worse.
            log.warning("knowledge search failed: %s", type(exc).__name__)
            return []

    def _answer_from_knowledge(self) -> None:
        """Stream the framed best chunk with the same token events a model's answer uses."""
        for piece in answer_pieces(knowledge_only_answer(self._profile, self._chunks)):
            self._parts.append(piece)
            self._tools.events.append(self._key, *answer_events.token(piece))

    async def _save(self) -> bool:
        usage = self._usage
        return await self._tools.messages.save_answer(
            self.started.answer_id, self._text, self.status,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            sources=self._sources,
            fallback=self._fallback)

    def _end_event(self, saved: bool) -> tuple[answer_events.Kind, object]:
        if not saved:
            return answer_events.not_saved()
        if self.status in ("complete", "cancelled"):
            return answer_events.done(self._key, self._text, self.status, self._usage,
                                      self._sources, self._fallback)
        if self.status == "interrupted":
            # Retryable: the instance is shutting down; the widget resumes, and another
            # instance serves the saved text.
            return answer_events.interrupted(retryable=True)
        failure = self._failure
        assert failure is not None
        return answer_events.error(failure.code, failure.message, retryable=failure.retryable)

    def _observe_finished(self) -> None:
        """The answer's metrics and its one log line, once it is saved."""
        usage = self._usage
        duration_s = time.monotonic() - self._asked_at
        first_token_s = (None if self._first_token_at is None
                         else self._first_token_at - self._asked_at)
        self._tools.metrics.observe_answer(
            self.status, duration_s, first_token_s,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0)
        log_answer(
            message_id=self.started.answer_id, session_id=self.started.session_id,
            status=self.status, model=self.model,
            fallback=self._fallback,
            time_to_first_token_ms=None if first_token_s is None else first_token_s * 1000,
            duration_ms=duration_s * 1000,
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            deltas=len(self._parts))

    def _tokens_used(self) -> int:
        """What the answer cost: the upstream's count, or an estimate if it never came; nothing
        when no paid call was made, or the call failed before its first token."""
        usage = self._usage
        if usage is not None:
            return usage.prompt_tokens + usage.completion_tokens
        if not self._prompt or self._fallback:
            return 0
        return estimate_tokens(sum(len(m["content"]) for m in self._prompt), len(self._text))
