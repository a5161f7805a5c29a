"""One answer's run, from the shopper's question to its saved row and the stream's last event.

Each answer is an `AnswerRun` with its own state (the text so far, usage, status, what the
knowledge search found for it), run as one asyncio task that app/chat.py keeps in its registry.
It reads straight down: knowledge (its site's KnowledgeSearch), prompt or composed answer
(app/prompt.py), upstream stream, events, save with its sources, metrics, token budget. Nothing reaches the
event log or the database before the shopper's message is committed (`committed`).

A run is for one site (None: the default site): its profile, its knowledge, its model settings
and its token budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from . import answer_events
from .eventlog import EventLog
from .identity import Customer
from .knowledge_languages import needs_english_note, search_in_language
from .knowledge_search import Retrieval, SiteSearches
from .language import ENGLISH, answer_in, english_help_centre_note
from .llm import LLM, ToolCalls, UpstreamError, Usage
from .logs import log_answer
from .messages import MessageStore
from .metrics import Metrics
from .order_tools import (
    MAX_TOOL_CALLS,
    ORDER_TOOLS_PROMPT,
    UNAVAILABLE_LINE,
    OrderTools,
    ToolOutcome,
    describe,
    direct_answer,
)
from .orders import OrdersClient
from .person_offer import offers_person
from .prompt import (
    answer_pieces,
    build_messages,
    build_system_prompt,
    cited_sources,
    compose_answer,
)
from .ratelimit import estimate_tokens
from .sites import DEFAULT_SITE_ID, Site
from .store_profile import StoreProfile

log = logging.getLogger(__name__)

# The `model` of answers in the log when no model is configured (knowledge-only mode).
KNOWLEDGE_ONLY_MODEL = "knowledge-only"


@dataclass(frozen=True)
class StartedAnswer:
    session_id: uuid.UUID
    user_message_id: uuid.UUID
    answer_id: uuid.UUID
    # A person handles the conversation: the message is saved and no answer starts (its
    # stream is meta and a `done` with status 'forwarded', both naming the shopper's message).
    forwarded: bool = False


@dataclass(frozen=True)
class AnswerTools:
    """What every run uses; one per app, built by ChatService."""

    messages: MessageStore
    knowledge: SiteSearches  # each site's KnowledgeSearch
    events: EventLog
    llm: LLM | None  # None: knowledge-only mode, every answer comes from the knowledge base
    profile: StoreProfile  # the default site's
    metrics: Metrics
    record_tokens: Callable[[int, Site | None], Awaitable[None]] | None
    orders: OrdersClient | None = None  # None: no order lookups (app/orders.py)


class AnswerRun:
    def __init__(self, tools: AnswerTools, started: StartedAnswer, question: str,
                 history: list[tuple[str, str]], asked_at: float,
                 committed: asyncio.Future[None], site: Site | None = None,
                 customer: Customer | None = None, language: str = ENGLISH) -> None:
        self._tools = tools
        # The verified shopper (None: anonymous): the only authority for order lookups.
        self._customer = customer
        self._language = language  # the question's, detected (app/language.py)
        self._site = site
        self._site_id = DEFAULT_SITE_ID if site is None else site.id
        # The site's profile, or the default site's.
        self._profile = tools.profile if site is None else site.profile
        self.started = started
        self._key = str(started.answer_id)
        self._question = question
        self._history = history
        self._asked_at = asked_at
        self._committed = committed
        self._parts: list[str] = []
        self._usage: Usage | None = None
        self._failure: UpstreamError | None = None
        self._retrieval = Retrieval(question, ())
        self._prompt: list[dict[str, str]] = []
        self._fallback = False
        self._first_token_at: float | None = None
        self._shutting_down = False
        self._text = ""
        self._sources: list[answer_events.Source] = []
        # The tool events sent (order cards), kept with the answer for its replay.
        self._tools_used: list[answer_events.ToolPayload] = []
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
        if self._tools.llm is not None and not self._fallback:
            # Only the sources the model cited (all it was given when it cited none).
            self._sources = (cited_sources(self._retrieval, self._text)
                             if self._retrieval.found else [])
        saved = await self._save()
        if self._first_token_at is None and self._parts:
            self._first_token_at = time.monotonic()  # a knowledge-base answer: all of it at once
        self._observe_finished()
        self._tools.events.append(self._key, *self._end_event(saved))
        # After the end is sent: charging the budget may wait on Redis, the shopper need not.
        if self._prompt and not self._fallback:
            await self._count_tokens()
        return self.status

    async def _generate(self) -> None:
        self._retrieval = await self._find_knowledge()
        llm = self._tools.llm
        if llm is None:
            await self._committed
            if not await self._answer_order_directly():
                self._answer_from_knowledge()
            return
        system_prompt = build_system_prompt(self._profile, self._retrieval)
        system_prompt = answer_in(system_prompt, self._language)
        orders = self._tools.orders
        order_tools = (OrderTools(orders, self._site, self._customer, self._question)
                       if orders is not None and orders.configured(self._site) else None)
        if order_tools is not None:
            system_prompt += "\n\n" + ORDER_TOOLS_PROMPT
        self._prompt = build_messages(system_prompt, self._history, self._question)
        conversation: list[dict[str, Any]] = list(self._prompt)
        # The per-token path: locals, not attributes, and no call beyond the log's append.
        parts, append, key, site = self._parts, self._tools.events.append, self._key, self._site
        try:
            # One round per model stream: a round that ends in tool calls runs them and streams
            # again, with their results; past MAX_TOOL_CALLS the model must answer in text.
            while True:
                offer = (order_tools.specs if order_tools is not None
                         and order_tools.calls < MAX_TOOL_CALLS else None)
                requested: ToolCalls | None = None
                async for item in llm.stream(
                        conversation, model=site.model if site else None,
                        temperature=site.temperature if site else None,
                        max_tokens=site.max_tokens if site else None, tools=offer):
                    if isinstance(item, str):
                        if self._first_token_at is None:
                            await self._committed
                            self._first_token_at = time.monotonic()
                        parts.append(item)
                        append(key, "token", {"text": item})  # answer_events.token, inlined
                    elif isinstance(item, Usage):
                        self._add_usage(item)
                    else:
                        requested = item
                if requested is None or order_tools is None:
                    break
                conversation += await self._run_tools(order_tools, requested)
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
            if self._tools_used:
                self._answer_from_tool_results()
            elif not await self._answer_order_directly():
                self._answer_from_knowledge()

    def _add_usage(self, usage: Usage) -> None:
        """Each round of tool calling is a request of its own: the answer costs their sum."""
        if self._usage is not None:
            usage = Usage(self._usage.prompt_tokens + usage.prompt_tokens,
                          self._usage.completion_tokens + usage.completion_tokens)
        self._usage = usage

    async def _run_tools(self, order_tools: OrderTools, requested: ToolCalls
                         ) -> list[dict[str, Any]]:
        """Run the model's tool calls (at most MAX_TOOL_CALLS per answer, each with its own
        timeout, app/order_tools.py): the messages that carry their results back."""
        replies: list[dict[str, Any]] = [{
            "role": "assistant", "content": None,
            "tool_calls": [{"id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments}}
                           for call in requested.calls]}]
        for call in requested.calls:
            if order_tools.calls >= MAX_TOOL_CALLS:
                result: dict[str, Any] = {"result": "limit",
                                          "note": "No more lookups in this answer."}
            else:
                outcome = await order_tools.call(call.name, call.arguments)
                await self._committed
                self._send_tool_event(outcome)
                result = outcome.for_model
            replies.append({"role": "tool", "tool_call_id": call.id,
                            "content": json.dumps(result)})
        return replies

    def _answer_from_tool_results(self) -> None:
        """The model failed after its tools ran: the cards are shown, say what they say."""
        lines = [describe(order) for payload in self._tools_used
                 for order in ([payload["order"]] if "order" in payload
                               else payload.get("orders", []))]
        text = " ".join(lines) or UNAVAILABLE_LINE
        for piece in answer_pieces(text):
            self._parts.append(piece)
            self._tools.events.append(self._key, *answer_events.token(piece))

    async def _find_knowledge(self) -> Retrieval:
        """What the knowledge base holds for the question, in the shopper's language when the
        site has it, else in English; a follow-up such as "and to Europe?" is searched again
        together with the shopper's previous message."""
        earlier = [text for sender, text in self._history if sender == "user"]
        try:
            return await search_in_language(
                self._tools.knowledge, self._site_id, self._profile, self._question,
                earlier[-1] if earlier else None, self._language)
        except (PoolTimeout, psycopg.Error) as exc:
            # The answer can still be given without the articles; losing it would be worse.
            log.warning("knowledge search failed: %s", type(exc).__name__)
            return Retrieval(self._question, ())

    def _send_tool_event(self, outcome: ToolOutcome) -> None:
        kind, payload = outcome.event
        self._tools_used.append(payload)
        self._tools.events.append(self._key, kind, payload)

    async def _answer_order_directly(self) -> bool:
        """Without the model: a question naming an order gets its card and a one-line answer
        (app/order_tools.py); False when it names none."""
        answered = await direct_answer(self._tools.orders, self._site, self._customer,
                                       self._question)
        if answered is None:
            return False
        outcome, line = answered
        if outcome is not None:
            self._send_tool_event(outcome)
        # The answer drew on the order, not on an article.
        self._retrieval = Retrieval(self._question, ())
        self._sources = []
        for piece in answer_pieces(line):
            self._parts.append(piece)
            self._tools.events.append(self._key, *answer_events.token(piece))
        return True

    def _answer_from_knowledge(self) -> None:
        """Stream the composed answer with the same token events a model's answer uses; its
        sources are the ones it used. An answer from the English articles to a shopper who
        wrote in another language says so, in their language, in one line before it."""
        composed = compose_answer(self._profile, self._retrieval)
        answer = composed.text
        note = english_help_centre_note(self._language)
        if note is not None and needs_english_note(self._retrieval, self._language):
            answer = f"{note}\n\n{answer}"
        for piece in answer_pieces(answer):
            self._parts.append(piece)
            self._tools.events.append(self._key, *answer_events.token(piece))
        self._sources = composed.sources

    @property
    def _offer_person(self) -> bool:
        earlier = [text for sender, text in self._history if sender == "user"]
        return self.status == "complete" and offers_person(
            self._question, self._text, self._profile.contact_email, fallback=self._fallback,
            previous_question=earlier[-1] if earlier else None)

    async def _save(self) -> bool:
        usage = self._usage
        return await self._tools.messages.save_answer(
            self.started.answer_id, self._text, self.status,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            sources=self._sources,
            fallback=self._fallback, tools=self._tools_used, offer_person=self._offer_person,
            # For the analytics page's median time to first token (sql/0011_analytics.sql).
            first_token_ms=None if self._first_token_at is None
            else round((self._first_token_at - self._asked_at) * 1000),
            language=self._answer_language)

    @property
    def _answer_language(self) -> str:
        """The language the answer is written in (analytics, sql/0017): a model's is the
        shopper's, as the prompt asks; a composed one (no model, or its fallback) is that of the
        articles it came from, English when it fell back to them."""
        if self._tools.llm is not None and not self._fallback:
            return self._language
        return self._retrieval.language

    def _end_event(self, saved: bool) -> tuple[answer_events.Kind, object]:
        if not saved:
            return answer_events.not_saved()
        if self.status in ("complete", "cancelled"):
            return answer_events.done(self._key, self._text, self.status, self._usage,
                                      self._sources, self._fallback, self._offer_person)
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

    async def _count_tokens(self) -> None:
        """Charge the day's token budget: the upstream's count, or an estimate if it never came."""
        record_tokens = self._tools.record_tokens
        if record_tokens is None:
            return
        if self._usage is not None:
            tokens = self._usage.prompt_tokens + self._usage.completion_tokens
        else:
            tokens = estimate_tokens(sum(len(m["content"]) for m in self._prompt),
                                     len(self._text))
        await record_tokens(tokens, self._site)
