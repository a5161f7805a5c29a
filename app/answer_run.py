"""One answer's run, from the shopper's question to its saved row and the stream's last event.

Each answer is an `AnswerRun` with its own state (the text so far, usage, status, what the
knowledge search found for it), run as one asyncio task that app/chat.py keeps in its registry.
It reads straight down: knowledge (its site's KnowledgeSearch), prompt or composed answer
(app/prompt.py; the answer's reservation of the token budget grown to the whole prompt, and
again before every further model round a tool call needs), upstream stream (cut at the answer's
caps), events, save with its sources, metrics, settling the token budget. Nothing reaches the
event log or the database before the shopper's message is committed (`committed`).

A run is for one site (None: the default site): its profile, its knowledge, its model settings
and its token budget (the reservation the endpoint took from the site's counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from . import answer_events
from .budget import Reservation, estimate_tokens
from .errors import AppError
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
from .sites import DEFAULT_SITE_ID, Site
from .store_profile import StoreProfile

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
    orders: OrdersClient | None = None  # None: no order lookups (app/orders.py)
    # answer_caps(MAX_TOKENS): past either, the upstream stream is closed and the answer ends.
    max_answer_chars: int = 8000
    max_answer_events: int = 1000


class AnswerRun:
    def __init__(self, tools: AnswerTools, started: StartedAnswer, question: str,
                 history: list[tuple[str, str]], asked_at: float,
                 committed: asyncio.Future[None], site: Site | None = None,
                 customer: Customer | None = None, language: str = ENGLISH,
                 reservation: Reservation | None = None) -> None:
        self._tools = tools
        # The verified shopper (None: anonymous): the only authority for order lookups.
        self._customer = customer
        self._language = language  # the question's, detected (app/language.py)
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
        self._retrieval = Retrieval(question, ())
        self._fallback = False
        # Characters of the answer relayed so far, across its model rounds (for its caps).
        self._answer_chars = 0
        # Tokens of model rounds the upstream sent no usage for, estimated (for the budget).
        self._uncounted_tokens = 0
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

    @property
    def text(self) -> str:
        """The answer's text as saved (empty until it ends)."""
        return self._text
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
        except Exception:
            # A defect of ours (once, a race in the knowledge search): the answer still ends,
            # saved as an error with what it had streamed, and its stream gets its `error`.
            # Without this the task died and the shopper's stream stayed open, waiting.
            log.exception("answer %s failed", self._key[:8])
            self._failure = UpstreamError(AppError.code, AppError.message, retryable=True)
            self.status = "error"
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
        # After the end is sent: settling the budget may wait on Redis, the shopper need not.
        if self._reservation is not None:
            await self._reservation.settle(self._tokens_used())
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
        prompt = build_messages(system_prompt, self._history, self._question)
        if not await self._reserve_round(prompt):
            self._fallback = True
            await self._committed
            if not await self._answer_order_directly():
                self._answer_from_knowledge()
            return
        conversation: list[dict[str, Any]] = list(prompt)
        try:
            # One round per model stream: a round that ends in tool calls runs them and streams
            # again, with their results; past MAX_TOOL_CALLS the model must answer in text.
            # Every round is a paid request: the reservation grows to cover it before it starts.
            while True:
                offer = (order_tools.specs if order_tools is not None
                         and order_tools.calls < MAX_TOOL_CALLS else None)
                requested = await self._paid_round(llm, conversation, offer)
                if requested is None or order_tools is None:
                    break
                conversation += await self._run_tools(order_tools, requested)
                if not await self._reserve_round(conversation):
                    # No room for the round that would word the results: the cards are
                    # shown, and the answer says what they say.
                    self._fallback = True
                    self._answer_from_tool_results()
                    break
        except UpstreamError as exc:
            self._tools.metrics.upstream_errors.labels(kind=exc.code).inc()
            # Before the first token the shopper has seen nothing, so the knowledge base can
            # still answer; after it, a second voice would contradict the first. A rejected key
            # or request is a configuration fault: it stays an error.
            if self._parts or not exc.retryable:
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

    async def _paid_round(self, llm: LLM, conversation: list[dict[str, Any]],
                          offer: list[dict[str, Any]] | None) -> ToolCalls | None:
        """One model request, relayed; the tools it asks for (None: it answered in text).

        A round the upstream did not count (no usage: cut off, cancelled, or an upstream that
        never reports it) is estimated from its prompt and what it sent, for the budget; a
        request that failed before sending anything is not counted."""
        site = self._site
        usage_before = self._usage
        sent = [0]  # characters the round sent: its text and its tool calls' arguments
        try:
            requested = await self._relay(llm.stream(
                conversation, model=site.model if site else None,
                temperature=site.temperature if site else None,
                max_tokens=site.max_tokens if site else None, tools=offer), sent)
        except UpstreamError:
            if sent[0] and self._usage is usage_before:
                self._uncounted_tokens += estimate_tokens(message_chars(conversation), sent[0])
            raise
        except BaseException:
            if self._usage is usage_before:
                self._uncounted_tokens += estimate_tokens(message_chars(conversation), sent[0])
            raise
        if self._usage is usage_before:
            self._uncounted_tokens += estimate_tokens(message_chars(conversation), sent[0])
        return requested

    async def _relay(self, answer_stream: AsyncIterator[str | Usage | ToolCalls],
                     sent: list[int]) -> ToolCalls | None:
        """Relay one round's deltas to the event log, up to the answer's caps; the tool calls
        the round ended with, if any. `sent[0]` counts the characters the upstream sent.

        Past a cap the upstream stream is closed and the answer ends with what it has.
        """
        # The per-token path: locals, not attributes, and no call beyond the log's append.
        parts, append, key = self._parts, self._tools.events.append, self._key
        max_chars, max_events = self._tools.max_answer_chars, self._tools.max_answer_events
        if self._site is not None and self._site.max_tokens is not None:
            max_chars, max_events = answer_caps(self._site.max_tokens)  # the site's own MAX_TOKENS
        chars = self._answer_chars
        requested: ToolCalls | None = None
        try:
            async with contextlib.aclosing(answer_stream):  # type: ignore[type-var]
                async for item in answer_stream:
                    if isinstance(item, str):
                        if self._first_token_at is None:
                            await self._committed
                            self._first_token_at = time.monotonic()
                        room = max_chars - chars
                        if len(item) >= room or len(parts) + 1 >= max_events:
                            item = item[:max(room, 0)]
                            if item:
                                chars += len(item)
                                parts.append(item)
                                append(key, "token", {"text": item})
                            log.warning("the model's answer passed the cap (%d characters, %d"
                                        " events): cut off", max_chars, max_events)
                            return None  # no further round: the answer ends here
                        chars += len(item)
                        parts.append(item)
                        append(key, "token", {"text": item})  # answer_events.token, inlined
                    elif isinstance(item, Usage):
                        self._add_usage(item)
                    else:
                        requested = item
                        sent[0] += sum(len(call.name) + len(call.arguments)
                                       for call in item.calls)
        finally:
            sent[0] += chars - self._answer_chars
            self._answer_chars = chars
        return requested

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

    async def _reserve_round(self, conversation: list[dict[str, Any]]) -> bool:
        """Grow the answer's reservation to cover one more model request with `conversation`
        as its prompt (its worst case: the prompt plus the site's MAX_TOKENS) on top of what
        the rounds before it cost; False: the budget has no room for it, and no paid call is
        made."""
        reservation = self._reservation
        if reservation is None:
            return True
        if await reservation.extend_to(self._tokens_used() + reservation.budget.answer_estimate(
                message_chars(conversation),
                self._site.max_tokens if self._site is not None else None)):
            return True
        log.warning("the token budget has no room for this model request: answering without it")
        return False

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

    def _tokens_used(self) -> int:
        """What the answer's model requests cost so far: the upstream's counts, and estimates
        for the rounds it did not count; nothing when no paid call was made."""
        usage = self._usage
        counted = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
        return counted + self._uncounted_tokens


def message_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """The characters of a model request's messages, tool calls and results included."""
    chars = 0
    for message in messages:
        chars += len(message.get("content") or "")
        for call in message.get("tool_calls", ()):
            chars += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return chars
