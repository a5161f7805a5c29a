"""The answers this instance produces, and the rules around them: start, follow, cancel, shut down.

An answer is an asyncio task owned by this service (an `AnswerRun`, app/answer_run.py), not by the
HTTP request that asked for it: a shopper who drops the connection still gets the answer saved,
and can follow it again from the event log. The shopper's message is committed before the answer
starts; the answer row is written once, when it ends, with its final status. No path loses text
that was already streamed. The SQL is in app/messages.py, the events' shapes in
app/answer_events.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, Literal

from psycopg_pool import AsyncConnectionPool

from . import answer_events
from .answer_events import record_meta, replay_record, settled, terminal_event
from .answer_run import KNOWLEDGE_ONLY_MODEL, AnswerRun, AnswerTools, StartedAnswer, answer_caps
from .budget import Reservation
from .errors import NotFoundError, ServiceUnavailable, StoreUnavailable
from .eventlog import REPLAYED_END_ID, Event, EventLog, SharedLogUnavailable
from .identity import Customer
from .knowledge_search import Retrieval, SiteSearches
from .language import detect_language, detector
from .llm import LLM
from .messages import AnswerRecord, HistoryPage, MessageStore, Turn
from .metrics import Metrics
from .orders import OrdersClient
from .prompt import build_system_prompt
from .sites import DEFAULT_SITE_ID, Site
from .store_profile import StoreProfile

__all__ = ["KNOWLEDGE_ONLY_MODEL", "ChatService", "StartedAnswer", "answer_caps"]

log = logging.getLogger(__name__)

# How long a cancel on an instance that does not produce the answer waits to see it end.
REMOTE_CANCEL_WAIT_S = 3.0
# How long an answer whose question's commit went unconfirmed is looked after before start-up is
# left to end it (interrupt_orphans); and the longest wait between two looks.
UNCONFIRMED_SETTLE_S = 60.0
_UNCONFIRMED_MAX_DELAY_S = 4.0
# Past any token id: following from here yields just meta and the end.
_AFTER_EVERY_TOKEN = 2**53


# Told of an answer that ended: (site id, conversation id, the message's summary).
ANSWERED_PREVIEW_CHARS = 200
Answered = Callable[[int, uuid.UUID, dict[str, Any]], Coroutine[Any, Any, None]]


class ChatService:
    def __init__(self, pool: AsyncConnectionPool, events: EventLog, llm: LLM | None, *,
                 history_window: int, profile: StoreProfile,
                 knowledge: SiteSearches, metrics: Metrics | None = None,
                 orders: OrdersClient | None = None,
                 answer_cap: tuple[int, int] = answer_caps(500),
                 answered: Answered | None = None) -> None:
        self._messages = MessageStore(pool, history_window=history_window)
        # Told of every answer that ended (site, conversation, the message): the back office
        # showing the conversation reads it again, on whichever instance it is open.
        self._answered = answered
        detector()  # built now (about 0.15 s), not on the first shopper's question
        self._events = events
        self._llm = llm
        self._profile = profile
        max_chars, max_events = answer_cap
        # Tests that build a service alone get a registry nobody reads.
        self._tools = AnswerTools(messages=self._messages, knowledge=knowledge, events=events,
                                  llm=llm, profile=profile,
                                  metrics=metrics if metrics is not None else Metrics(),
                                  orders=orders,
                                  max_answer_chars=max_chars, max_answer_events=max_events)
        # The answers this instance is producing. Keep a hard reference to each task: the event
        # loop only keeps weak ones (https://docs.python.org/3/library/asyncio-task.html#asyncio.create_task).
        self._running: dict[uuid.UUID, AnswerRun] = {}
        # Answers whose question's commit went unconfirmed, looked after until their row is
        # known to be settled (see _end_unconfirmed); they count as produced here meanwhile.
        self._settling: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._telling: set[asyncio.Task[None]] = set()  # the `answered` calls under way

    @property
    def running_count(self) -> int:
        """Answers this instance still looks after: produced here, or being settled."""
        return len(self._running) + len(self._settling)

    @property
    def mode(self) -> str:
        return "llm" if self._llm is not None else "knowledge-only"

    # -- starting an answer ------------------------------------------------------------------

    def reservation_chars(self, question: str, site: Site | None = None) -> int:
        """The characters of the prompt known before the answer starts, for its first
        reservation of the site's token budget (the knowledge and the history come on top)."""
        profile = self._profile if site is None else site.profile
        return len(build_system_prompt(profile, Retrieval(question, ()))) + len(question)

    async def start_answer(self, question: str, session_id: uuid.UUID | None,
                           site: Site | None = None, customer: Customer | None = None,
                           reservation: Reservation | None = None) -> StartedAnswer:
        """Commit the shopper's message and an empty answer row while the answer starts.

        `customer` is the shopper's verified identity (app/identity.py), kept on the
        conversation and the only authority for the answer's order lookups.

        The conversation is the site's (None: the default site's): another site's session id
        is treated as unknown, and starts a new conversation. `reservation` is the answer's
        share of the site's token budget: the answer settles it, or releases it when it never
        starts.

        The knowledge search and the model's first token take far longer than the commit, so
        the answer's task starts as soon as the history is read instead of after the commit;
        its first token (and anything it saves) still waits for the commit, so no answer is
        ever shown or kept for a question that was not saved.
        """
        asked_at = time.monotonic()
        language = detect_language(question)  # some 50 us: no reason to leave the loop
        user_message_id, answer_id = uuid.uuid4(), uuid.uuid4()
        # Claimed before the row exists; the lease may reach other instances just after the
        # commit, and they confirm a missing lease before declaring a producer dead.
        await self._events.claim(str(answer_id))
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run: AnswerRun | None = None
        turn: Turn | None = None
        forwarded: StartedAnswer | None = None
        try:
            site_id = DEFAULT_SITE_ID if site is None else site.id
            async with self._messages.new_turn(session_id, site_id) as turn:
                started = StartedAnswer(turn.session_id, user_message_id, answer_id)
                if turn.status == "human":
                    await turn.save_forwarded(question, user_message_id, language=language)
                    forwarded = replace(started, answer_id=user_message_id, forwarded=True)
                    run = None
                else:
                    run = AnswerRun(self._tools, started, question, turn.history, asked_at,
                                    committed, site, customer, language=language,
                                    reservation=reservation)
                    run.start()
                    await turn.save(question, user_message_id, answer_id,
                                    run.model if self._llm else None, customer,
                                    language=language)
        except BaseException:
            # The question is not saved, so there is no answer: stop its task quietly.
            committed.cancel()
            if run is not None and run.task is not None:
                run.task.cancel()
            if turn is not None and turn.writer_pid is not None:
                # The rows may have been committed all the same (a new conversation's commit
                # is its save's one statement).
                self._settle_unconfirmed(answer_id, turn.writer_pid)
            raise
        committed.set_result(None)
        self._tools.metrics.questions.labels(language=language).inc()
        if forwarded is not None:
            return forwarded
        assert run is not None
        answer_key = str(answer_id)
        self._events.start(answer_key)
        self._events.append(answer_key, *answer_events.meta(
            str(started.session_id), answer_key, str(user_message_id),
            DEFAULT_SITE_ID if site is None else site.id))
        self._running[answer_id] = run
        assert run.task is not None
        run.task.add_done_callback(lambda _: self._running.pop(answer_id, None))
        if self._answered is not None:
            answered, site_id = self._answered, DEFAULT_SITE_ID if site is None else site.id
            run.task.add_done_callback(lambda _: self._tell_answered(answered, site_id, run))
        return started

    def _tell_answered(self, answered: Answered, site_id: int, run: AnswerRun) -> None:
        # A preview: the inbox reads the conversation again, and the site's feed keeps 2,000
        # of these for a day, so whole answers there would only cost Redis memory.
        message = {"id": str(run.started.answer_id), "sender": "ai",
                   "text": run.text[:ANSWERED_PREVIEW_CHARS], "status": run.status}
        task = asyncio.create_task(answered(site_id, run.started.session_id, message),
                                   name=f"answered-{run.started.answer_id}")
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    def _settle_unconfirmed(self, answer_id: uuid.UUID, writer_pid: int) -> None:
        task = asyncio.create_task(self._end_unconfirmed(answer_id, writer_pid),
                                   name=f"unconfirmed-{answer_id}")
        self._settling[answer_id] = task
        task.add_done_callback(lambda _: self._settling.pop(answer_id, None))

    async def _end_unconfirmed(self, answer_id: uuid.UUID, writer_pid: int) -> None:
        """The shopper got a 503, but the server may have committed the question and its
        'streaming' answer row, which no task will ever produce. Once the session that wrote
        them has no transaction open (so the commit is visible, or never happened), end that
        row as 'interrupted', as start-up does with a dead instance's answers. Asking earlier
        could miss rows whose commit the server finishes later (a frozen server, thawed)."""
        deadline = time.monotonic() + UNCONFIRMED_SETTLE_S
        delay = 0.5
        while True:
            with contextlib.suppress(StoreUnavailable):
                if await self._messages.interrupt_once_committed(answer_id, writer_pid):
                    return
            if time.monotonic() + delay > deadline:
                log.error("answer %s: its question's commit was not confirmed; if it happened,"
                          " the answer stays 'streaming' until the next start",
                          str(answer_id)[:8])
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _UNCONFIRMED_MAX_DELAY_S)

    # -- reading -----------------------------------------------------------------------------

    async def find_answer(self, answer_id: uuid.UUID, session_id: uuid.UUID,
                          site_id: int = DEFAULT_SITE_ID) -> AnswerRecord:
        """The answer if it belongs to this session of this site; otherwise NotFoundError."""
        return await self._messages.find_answer(answer_id, session_id, site_id)

    def new_answer_events(self, started: StartedAnswer) -> AsyncIterator[Event]:
        """The events of an answer this instance just started (no ownership check needed)."""
        if started.forwarded:
            return answer_events.forwarded(str(started.session_id), str(started.user_message_id))
        events = self._events.subscribe(str(started.answer_id), after=0)
        assert events is not None, "start_answer puts every new answer in the event log"
        return events

    async def follow(self, answer_id: uuid.UUID, session_id: uuid.UUID, after: int,
                     site_id: int = DEFAULT_SITE_ID) -> AsyncIterator[Event] | None:
        """The answer's events after `after`: from this instance's memory if it produces the
        answer, else from the shared log, else rebuilt from the record.

        None when `after` is at or past the id of the answer's end: the client has seen it all,
        the end included (an EventSource reconnecting after `done`), and there is nothing to send.

        A finished answer that the log still holds whole costs no database round trip: its own
        meta event names the conversation it belongs to.
        """
        done = await self._follow_done(answer_id, session_id, after, site_id)
        if done is False:
            return None  # the client has the end
        if done is not None:
            return done
        record = await self.find_answer(answer_id, session_id, site_id)
        if after > 0:
            end = await self._end_id(record)
            if end is not None and after >= end:
                return None
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
            return replay_record(record, after)  # the record has all of a finished answer
        if shared is not None:
            return settled(shared)
        # No instance has it: an expired stream, or an answer whose producer died with it.
        if (record.status == "streaming" and answer_id not in self._running
                and answer_id not in self._settling):
            record = await self._mark_interrupted(record)
        return replay_record(record, after)

    async def _follow_done(self, answer_id: uuid.UUID, session_id: uuid.UUID, after: int,
                           site_id: int) -> AsyncIterator[Event] | Literal[False] | None:
        """A done answer's events straight from the log (False: the client has them all);
        None when the log does not hold the answer whole and done, and the record decides."""
        try:
            events = await self._events.finished(str(answer_id), after)
        except SharedLogUnavailable:
            return None  # the record can still say how it ended
        if events is None:
            return None
        meta = events[0].payload
        if (meta.get("sessionId") != str(session_id)
                or meta.get("siteId", DEFAULT_SITE_ID) != site_id):
            # Another conversation's answer, or another site's: the same 404 as an id nobody
            # knows. (Only answers of other sites than the default carry `siteId`.)
            raise NotFoundError("message")
        if after > 0 and after >= events[-1].seq:
            return False

        async def replay() -> AsyncIterator[Event]:
            for event in events:
                yield event

        return replay()

    async def _end_id(self, record: AnswerRecord) -> int | None:
        """The id the answer's end has on the wire, as a client resuming it now would get it;
        None while the answer may still go on."""
        try:
            logged = await self._events.end_id(str(record.id))
        except SharedLogUnavailable:
            logged = None  # then a finished answer is replayed from the record, as below
        if logged is not None:
            return logged
        return None if record.status == "streaming" else REPLAYED_END_ID

    async def _end_orphan(self, record: AnswerRecord, streamed_text: str, seq: int) -> Event:
        """A subscriber found the producer gone: save what it had streamed, as 'interrupted'."""
        try:
            await self._messages.mark_interrupted(record.id, streamed_text)
            # Whatever the update found: the producer may have saved the answer just before.
            record = await self.find_answer(record.id, record.conversation_id, record.site_id)
        except StoreUnavailable:
            record = replace(record, text=streamed_text, status="interrupted")
        return terminal_event(record, seq)

    async def _mark_interrupted(self, record: AnswerRecord) -> AnswerRecord:
        """An answer left 'streaming' with no producer: its instance died mid-answer."""
        await self._messages.mark_interrupted(record.id, None)
        return replace(record, status="interrupted")

    async def interrupt_orphans(self) -> int:
        """At start-up: answers still 'streaming' that no instance produces lost their producer.

        With one instance that is all of them; with a shared log, only those without a lease
        (others may be producing the rest right now). The streamed text is kept.
        """
        streaming = await self._messages.streaming_ids()
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
        await self._messages.mark_many_interrupted(orphans)
        return len(orphans)

    async def history(self, session_id: uuid.UUID, limit: int, before: uuid.UUID | None,
                      site_id: int = DEFAULT_SITE_ID) -> HistoryPage:
        return await self._messages.history_page(session_id, limit, before, site_id)

    # -- stopping ----------------------------------------------------------------------------

    async def cancel(self, answer_id: uuid.UUID, session_id: uuid.UUID,
                     site_id: int = DEFAULT_SITE_ID) -> str:
        """Stop an answer this instance is producing; return the answer's status."""
        record = await self.find_answer(answer_id, session_id, site_id)
        run = self._running.get(answer_id)
        if run is None or run.task is None:
            if record.status != "streaming":
                return record.status
            return await self._cancel_elsewhere(record)
        run.cancel()
        # shield: a shopper who leaves mid-cancel must not cancel the save of the partial text.
        return await asyncio.shield(run.task)

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
        return (await self.find_answer(record.id, record.conversation_id, record.site_id)).status

    def cancel_running(self, answer_key: str) -> None:
        """Another instance asked to cancel an answer: cancel it if this instance produces it."""
        run = self._running.get(uuid.UUID(answer_key))
        if run is not None:
            run.cancel()

    async def shutdown(self, grace_s: float) -> None:
        """Let answers finish for `grace_s`, then save the rest as 'interrupted'."""
        pending: list[asyncio.Task[object]] = [
            run.task for run in self._running.values() if run.task is not None]
        pending += self._settling.values()
        if pending:
            log.info("waiting up to %.0fs for %d answers to finish", grace_s, len(pending))
            _, still_running = await asyncio.wait(pending, timeout=grace_s)
            if still_running:
                for run in list(self._running.values()):
                    run.cancel(shutting_down=True)
                await asyncio.wait(still_running, timeout=10)


