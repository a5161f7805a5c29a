"""The record of every conversation: each SQL statement about conversations and messages.

The orchestration (app/chat.py) calls these and never writes SQL itself. They raise domain errors
(`NotFoundError`, and `StoreUnavailable` from app/db.py), never HTTP ones: app/errors.py is the one
place that turns those into responses.

Every lookup is scoped by site (sql/0004_sites.sql): another site's conversation or message is
not found, exactly like an unknown one. `site_id` defaults to the default site's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import NotFoundError, StoreUnavailable
from .feedback import feedback_json
from .identity import Customer
from .sites import DEFAULT_SITE_ID

log = logging.getLogger(__name__)

# Statuses an answer can end in; 'streaming' is the only one that is not final.
FINAL_STATUSES = frozenset({"complete", "error", "cancelled", "interrupted"})
# How often an answer's save is tried through a database outage (0.5 s, doubling, in between).
SAVE_ATTEMPTS = 5
# An answer whose producer is gone: keep the text given (or, with NULL, what the row has), and
# touch only a row still 'streaming', so a producer that saved first is never overwritten.
INTERRUPT_SQL = ("UPDATE messages SET status = 'interrupted', text = coalesce(%s, text),"
                 " finished_at = now() WHERE id = %s AND status = 'streaming'")
# A session that still has a transaction open: the one whose COMMIT went unanswered, until the
# server has finished (or abandoned) that commit.
_TRANSACTION_OPEN_SQL = ("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND xact_start IS NOT NULL"
                         " AND pid <> pg_backend_pid()")


MESSAGE_SQL = ("SELECT m.id, m.sender, m.text, m.status, m.created_at, m.seq, m.sources,"
               " m.fallback, a.display_name AS agent_name, m.tools, m.offer_person,"
               " m.feedback_rating, m.feedback_comment"
               " FROM messages m LEFT JOIN staff a ON a.id = m.staff_id")


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    sender: str
    text: str
    status: str
    created_at: datetime
    seq: int
    sources: list[dict[str, str]]
    fallback: bool
    agent_name: str | None = None  # sender 'agent': who wrote it
    tools: list[dict[str, Any]] = field(default_factory=list)
    offer_person: bool = False  # app/person_offer.py
    feedback_rating: str | None = None  # the shopper's vote (app/feedback.py)
    feedback_comment: str | None = None

    def to_json(self) -> dict[str, Any]:
        # sources, fallback and the tool events as the live answer had them, so a reload shows
        # what it did (order cards included), and the shopper's vote, so it shows as pressed.
        body = {"id": str(self.id), "sender": self.sender, "text": self.text,
                "status": self.status, "createdAt": self.created_at.isoformat(),
                "sources": self.sources, "fallback": self.fallback, "tools": self.tools,
                "offerPerson": self.offer_person,
                "feedback": feedback_json(self.feedback_rating, self.feedback_comment)}
        if self.sender == "agent":
            body["agentName"] = self.agent_name
        return body


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
    site_id: int
    tools: list[dict[str, Any]] = field(default_factory=list)
    offer_person: bool = False


@dataclass(frozen=True)
class HistoryPage:
    session_id: uuid.UUID
    messages: list[Message]
    has_more: bool
    status: str = "bot"  # who answers the conversation now


class Turn:
    """A shopper's new turn: the session and history are read, the two rows are not written yet
    (`save`). In a known conversation the turn is a transaction: leaving the block commits, an
    exception rolls back. A new conversation's rows are one statement that commits alone."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], session_id: uuid.UUID,
                 history: list[tuple[str, str]], new_session: bool, site_id: int,
                 status: str = "bot") -> None:
        self._conn = conn
        self.session_id = session_id
        self.site_id = site_id
        self.history = history
        self._new_session = new_session
        # Who answers (sql/0006_staff.sql): in 'human' a person does, and no answer starts.
        self.status = status
        # Set once the rows are written: from then on a failure may come after the server has
        # committed them (a reply lost to a freeze or a cut), so they may exist after all.
        self.writer_pid: int | None = None

    async def save(self, question: str, user_message_id: uuid.UUID, answer_id: uuid.UUID,
                   model: str | None, customer: Customer | None = None, *,
                   language: str | None = None) -> None:
        """The shopper's message (with its question's language), and the answer's empty
        'streaming' row; the conversation takes the question's language, and a verified
        customer is noted on it (for the inbox, never as authority)."""
        customer_id = None if customer is None else customer.id
        customer_email = None if customer is None else customer.email
        messages = (
            "INSERT INTO messages"
            " (id, conversation_id, site_id, sender, text, status, model, language)"
            " VALUES (%(user_message)s, %(conversation)s, %(site)s, 'user', %(question)s,"
            " 'complete', NULL, %(language)s),"
            " (%(answer)s, %(conversation)s, %(site)s, 'ai', '', 'streaming', %(model)s, NULL)")
        values = {"user_message": user_message_id, "answer": answer_id,
                  "conversation": self.session_id, "site": self.site_id, "question": question,
                  "language": language, "model": model, "customer_id": customer_id,
                  "customer_email": customer_email}
        # From here the rows may be committed even if no reply says so (a cut, a freeze).
        self.writer_pid = self._conn.info.backend_pid
        if self._new_session:
            # One statement, and in a new conversation's turn (autocommit) its own commit.
            await self._conn.execute(
                "WITH conversation AS (INSERT INTO conversations"
                " (id, site_id, language, customer_id, customer_email) VALUES (%(conversation)s,"
                " %(site)s, %(language)s, %(customer_id)s, %(customer_email)s)) " + messages,
                values)
            return
        await self._touch(language)
        if customer is not None:
            await self._conn.execute(
                "UPDATE conversations SET customer_id = %s, customer_email = %s"
                " WHERE id = %s AND (customer_id IS DISTINCT FROM %s"
                " OR customer_email IS DISTINCT FROM %s)",
                (customer_id, customer_email, self.session_id, customer_id,
                 customer_email))
        await self._conn.execute(messages, values)

    async def save_forwarded(self, question: str, user_message_id: uuid.UUID,
                             language: str | None = None) -> None:
        """The shopper's message alone: a person answers this conversation."""
        await self._touch(language)
        await self._conn.execute(
            "INSERT INTO messages (id, conversation_id, site_id, sender, text, status, language)"
            " VALUES (%s, %s, %s, 'user', %s, 'complete', %s)",
            (user_message_id, self.session_id, self.site_id, question, language))

    async def _touch(self, language: str | None) -> None:
        # Before the messages' INSERT: the statements of a turn end with it, then COMMIT.
        # A resolved conversation that the shopper writes to again is the assistant's again;
        # the conversation takes the language of its newest question.
        await self._conn.execute(
            "UPDATE conversations SET last_activity_at = now(),"
            " language = coalesce(%s, language),"
            " status = CASE WHEN status = 'resolved' THEN 'bot' ELSE status END"
            " WHERE id = %s", (language, self.session_id))


class MessageStore:
    def __init__(self, pool: AsyncConnectionPool, *, history_window: int) -> None:
        self._pool = pool
        self._history_window = history_window

    @contextlib.asynccontextmanager
    async def new_turn(self, session_id: uuid.UUID | None,
                       site_id: int = DEFAULT_SITE_ID) -> AsyncIterator[Turn]:
        """A new turn in `session_id` of the site (a transaction), or in a new session (another
        site's session id is an unknown one; a new conversation's turn needs no transaction)."""
        async with db.connection(self._pool) as conn:
            if session_id is None:
                # A new conversation: nothing to read or lock, and its rows go in one statement
                # that commits alone (Turn.save): one round trip instead of four.
                async with db.autocommit(conn):
                    yield Turn(conn, uuid.uuid4(), [], new_session=True, site_id=site_id)
                return
            async with conn.transaction():
                # FOR UPDATE: a takeover committing meanwhile waits, so a message is either
                # before it (answered) or after it (forwarded), never answered after it.
                cur = await conn.execute(
                    "SELECT status FROM conversations WHERE id = %s AND site_id = %s FOR UPDATE",
                    (session_id, site_id))
                row = await cur.fetchone()
                if row is None:
                    # An unknown id from the client is never adopted: the server makes the id,
                    # so one shopper cannot pick another's future session id.
                    yield Turn(conn, uuid.uuid4(), [], new_session=True, site_id=site_id)
                    return
                history = await self._history_window_rows(conn, session_id)
                yield Turn(conn, session_id, history, new_session=False, site_id=site_id,
                           status=row[0])

    async def _history_window_rows(self, conn: psycopg.AsyncConnection[Any],
                                   session_id: uuid.UUID) -> list[tuple[str, str]]:
        if self._history_window == 0:
            return []
        # Answers still streaming have no text yet, and failed ones may be empty: skip both.
        # An agent's message is an assistant turn with a note, so the assistant, handed the
        # conversation back, knows what the person said and that it was not itself.
        cur = await conn.execute(
            "SELECT m.sender, CASE WHEN m.sender = 'agent' THEN '(' ||"
            " coalesce(a.display_name, 'A person') || ' from the store''s team wrote this,"
            " not the assistant) ' || m.text ELSE m.text END"
            " FROM messages m LEFT JOIN staff a ON a.id = m.staff_id"
            " WHERE m.conversation_id = %s AND m.text <> '' ORDER BY m.seq DESC LIMIT %s",
            (session_id, self._history_window),
        )
        rows = await cur.fetchall()
        return [(sender, text) for sender, text in reversed(rows)]

    async def save_answer(self, answer_id: uuid.UUID, text: str, status: str, *,
                          prompt_tokens: int | None, completion_tokens: int | None,
                          sources: Sequence[Mapping[str, object]], fallback: bool,
                          tools: Sequence[Mapping[str, object]] = (),
                          offer_person: bool = False,
                          first_token_ms: int | None = None, language: str | None = None) -> bool:
        """Write the answer's one row (with the language it is written in, for analytics);
        retry through a short database outage. False: not saved."""
        delay = 0.5
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                # One statement that commits alone: no BEGIN and COMMIT round trips.
                async with db.connection(self._pool) as conn, db.autocommit(conn):
                    await conn.execute(
                        "UPDATE messages SET text = %s, status = %s, prompt_tokens = %s,"
                        " completion_tokens = %s, sources = %s, fallback = %s, tools = %s,"
                        " offer_person = %s, first_token_ms = %s, language = %s,"
                        " finished_at = now() WHERE id = %s",
                        (text, status, prompt_tokens, completion_tokens, Jsonb(sources),
                         fallback, Jsonb(list(tools)), offer_person, first_token_ms, language,
                         answer_id),
                    )
                return True
            except StoreUnavailable:
                if attempt < SAVE_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
        log.error("could not save answer %s after %d attempts", str(answer_id)[:8],
                  SAVE_ATTEMPTS)
        return False

    async def find_answer(self, answer_id: uuid.UUID, session_id: uuid.UUID,
                          site_id: int = DEFAULT_SITE_ID) -> AnswerRecord:
        """The answer if it belongs to this session of this site; otherwise NotFoundError, as
        if it did not exist."""
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(AnswerRecord))
            await cur.execute(
                "SELECT id, conversation_id, text, status, prompt_tokens, completion_tokens,"
                " fallback, sources, site_id, tools, offer_person FROM messages WHERE id = %s"
                " AND conversation_id = %s"
                " AND site_id = %s AND sender = 'ai'",
                (answer_id, session_id, site_id),
            )
            record = await cur.fetchone()
        if record is None:
            raise NotFoundError("message")
        return record

    async def mark_interrupted(self, answer_id: uuid.UUID, text: str | None) -> None:
        """An answer left 'streaming' lost its producer; `text` (None: the row's own) is kept."""
        async with db.connection(self._pool) as conn:
            await conn.execute(INTERRUPT_SQL, (text, answer_id))

    async def interrupt_once_committed(self, answer_id: uuid.UUID, writer_pid: int) -> bool:
        """If the session that wrote the answer's row (whose COMMIT went unanswered) has no
        transaction open any more, end the row as 'interrupted' should the commit have happened,
        and return True; False while that commit may still be under way (a frozen server)."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(_TRANSACTION_OPEN_SQL, (writer_pid,))
            if await cur.fetchone() is not None:
                return False
            cur = await conn.execute(INTERRUPT_SQL, (None, answer_id))
            if cur.rowcount:
                log.warning("answer %s: its question's commit was not confirmed but happened;"
                            " the answer is saved as interrupted", str(answer_id)[:8])
            return True

    async def mark_many_interrupted(self, texts: dict[str, str]) -> None:
        """`mark_interrupted` for many answers at once: answer id -> the text streamed."""
        async with db.connection(self._pool) as conn:
            cur = conn.cursor()
            await cur.executemany(INTERRUPT_SQL,
                                  [(text, answer_id) for answer_id, text in texts.items()])

    async def streaming_ids(self) -> Sequence[str]:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute("SELECT id FROM messages WHERE status = 'streaming'")
            return [str(row[0]) for row in await cur.fetchall()]

    async def history_page(self, session_id: uuid.UUID, limit: int, before: uuid.UUID | None,
                           site_id: int = DEFAULT_SITE_ID) -> HistoryPage:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT status FROM conversations WHERE id = %s AND site_id = %s",
                (session_id, site_id))
            found = await cur.fetchone()
            if found is None:
                raise NotFoundError("conversation")
            before_seq: int | None = None
            if before is not None:
                cur = await conn.execute(
                    "SELECT seq FROM messages WHERE id = %s AND conversation_id = %s",
                    (before, session_id))
                row = await cur.fetchone()
                if row is None:
                    raise NotFoundError("message")
                before_seq = row[0]
            rows = conn.cursor(row_factory=class_row(Message))
            await rows.execute(
                MESSAGE_SQL + " WHERE m.conversation_id = %s AND (%s::bigint IS NULL OR m.seq < %s)"
                " ORDER BY m.seq DESC LIMIT %s",
                (session_id, before_seq, before_seq, limit + 1),
            )
            newest_first = await rows.fetchall()
        has_more = len(newest_first) > limit
        return HistoryPage(session_id, list(reversed(newest_first[:limit])), has_more, found[0])


# -- the back office: conversations as staff see them -----------------------------------------

INBOX_FILTERS = ("all", "waiting", "mine", "unresolved", "resolved", "disliked")
# The statuses an action moves a conversation from, and to; app/endpoints_admin.py names them.
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "takeover": (("bot", "waiting", "resolved"), "human"),
    "handback": (("human",), "bot"),
    "resolve": (("bot", "waiting", "human"), "resolved"),
    "reopen": (("resolved",), "bot"),
    "handoff": (("bot", "resolved"), "waiting"),
}


class StatusConflict(Exception):
    """The conversation is not in a status the action can move it from."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class ConversationSummary:
    id: uuid.UUID
    site_id: int
    status: str
    agent_id: int | None
    agent_name: str | None
    waiting_since: datetime | None
    last_activity_at: datetime
    created_at: datetime
    last_sender: str | None
    last_text: str | None
    # The shopper's identity as the store signed it (app/identity.py): for people to read,
    # never authority for anything.
    customer_id: str | None = None
    customer_email: str | None = None
    language: str | None = None  # of the newest question (app/language.py); None: none yet
    shopper_email: str | None = None  # left in the widget out of hours (app/shopper_email.py)

    @property
    def cursor(self) -> tuple[datetime, uuid.UUID]:
        """Where the inbox's next page starts: after this row, in the inbox's order."""
        return self.last_activity_at, self.id

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "siteId": self.site_id, "status": self.status,
                "language": self.language,
                "agentId": self.agent_id, "agentName": self.agent_name,
                "waitingSince": None if self.waiting_since is None
                else self.waiting_since.isoformat(),
                "lastActivityAt": self.last_activity_at.isoformat(),
                "createdAt": self.created_at.isoformat(),
                "lastMessage": None if self.last_sender is None
                else {"sender": self.last_sender, "text": self.last_text},
                "customer": None if self.customer_id is None
                else {"id": self.customer_id, "email": self.customer_email},
                "shopperEmail": self.shopper_email}


_SUMMARY_SQL = (
    "SELECT c.id, c.site_id, c.status, c.agent_id, a.display_name AS agent_name,"
    " c.waiting_since, c.last_activity_at, c.created_at, lm.sender AS last_sender,"
    " lm.text AS last_text, c.customer_id, c.customer_email, c.language, c.shopper_email"
    " FROM conversations c LEFT JOIN staff a ON a.id = c.agent_id"
    " LEFT JOIN LATERAL (SELECT sender, text FROM messages m WHERE m.conversation_id = c.id"
    " AND m.text <> '' ORDER BY m.seq DESC LIMIT 1) lm ON true")


class ConversationDesk:
    """The conversations of some sites as staff see and change them; a conversation of a site
    the caller is not given is not found, exactly like an unknown one."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def inbox(self, site_ids: Sequence[int], view: str, staff_id: int, limit: int,
                    search: str | None = None,
                    after: tuple[datetime, uuid.UUID] | None = None,
                    language: str | None = None
                    ) -> list[ConversationSummary]:
        """Newest activity first, from after `after` (a row's `cursor`: keyset paging, so a
        conversation moving meanwhile is never shown twice nor skipped by an offset). `search`
        is web-search syntax ("refund -paypal", "\"gift wrap\"") over every message of the
        conversation, in the 'simple' configuration of the index in sql/0012, or the
        shopper's exact email."""
        after_at, after_id = after if after is not None else (None, None)
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(ConversationSummary))
            await cur.execute(
                _SUMMARY_SQL + " WHERE c.site_id = ANY(%(sites)s) AND CASE %(view)s"
                " WHEN 'waiting' THEN c.status = 'waiting'"
                " WHEN 'mine' THEN c.status = 'human' AND c.agent_id = %(staff)s"
                " WHEN 'unresolved' THEN c.status <> 'resolved'"
                " WHEN 'resolved' THEN c.status = 'resolved'"
                # A shopper gave an answer in it a thumbs down (sql/0010).
                " WHEN 'disliked' THEN EXISTS (SELECT 1 FROM messages d WHERE d.site_id = c.site_id"
                " AND d.conversation_id = c.id AND d.feedback_rating = 'down') ELSE true END"
                " AND (%(after_at)s::timestamptz IS NULL"
                " OR (c.last_activity_at, c.id) < (%(after_at)s, %(after_id)s::uuid))"
                " AND (%(search)s::text IS NULL OR lower(c.customer_email) = lower(%(search)s)"
                " OR EXISTS (SELECT 1 FROM messages f WHERE f.conversation_id = c.id"
                " AND to_tsvector('simple', f.text) @@ websearch_to_tsquery('simple', %(search)s)))"
                " AND (%(language)s::text IS NULL OR c.language = %(language)s)"
                " ORDER BY c.last_activity_at DESC, c.id DESC LIMIT %(limit)s",
                {"sites": list(site_ids), "view": view, "staff": staff_id, "limit": limit,
                 "search": search, "after_at": after_at, "after_id": after_id,
                 "language": language})
            return await cur.fetchall()

    async def summary(self, conversation_id: uuid.UUID,
                      site_ids: Sequence[int]) -> ConversationSummary:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(ConversationSummary))
            await cur.execute(_SUMMARY_SQL + " WHERE c.id = %s AND c.site_id = ANY(%s)",
                              (conversation_id, list(site_ids)))
            found = await cur.fetchone()
        if found is None:
            raise NotFoundError("conversation")
        return found

    async def transcript(self, conversation_id: uuid.UUID, site_ids: Sequence[int],
                         limit: int = 500) -> list[Message]:
        await self.summary(conversation_id, site_ids)
        async with db.connection(self._pool) as conn:
            rows = conn.cursor(row_factory=class_row(Message))
            await rows.execute(MESSAGE_SQL + " WHERE m.conversation_id = %s"
                               " ORDER BY m.seq DESC LIMIT %s", (conversation_id, limit))
            return list(reversed(await rows.fetchall()))

    async def move(self, conversation_id: uuid.UUID, site_ids: Sequence[int], action: str,
                   staff_id: int | None) -> ConversationSummary:
        """Apply an action of TRANSITIONS; StatusConflict when the status does not allow it.

        A hand-back is only the handling agent's, and a takeover of a conversation someone
        else handles is refused: taking it from a colleague is a conversation between them.
        """
        sources, target = TRANSITIONS[action]
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE conversations SET status = %(target)s,"
                " agent_id = CASE WHEN %(target)s = 'human' THEN %(staff)s::bigint END,"
                " waiting_since = CASE WHEN %(target)s = 'waiting' THEN now() END,"
                " last_activity_at = now()"
                " WHERE id = %(id)s AND site_id = ANY(%(sites)s) AND status = ANY(%(sources)s)"
                " AND (%(action)s <> 'handback' OR agent_id = %(staff)s) RETURNING id",
                {"target": target, "staff": staff_id, "id": conversation_id,
                 "sites": list(site_ids), "sources": list(sources), "action": action})
            moved = await cur.fetchone() is not None
        summary = await self.summary(conversation_id, site_ids)
        if not moved:
            raise StatusConflict(summary.status)
        return summary

    async def add_agent_message(self, conversation_id: uuid.UUID, site_ids: Sequence[int],
                                staff_id: int, text: str) -> Message:
        """Only the agent who took the conversation over writes in it."""
        message_id = uuid.uuid4()
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "INSERT INTO messages (id, conversation_id, site_id, sender, text, status,"
                " staff_id) SELECT %s, c.id, c.site_id, 'agent', %s, 'complete', %s"
                " FROM conversations c WHERE c.id = %s AND c.site_id = ANY(%s)"
                " AND c.status = 'human' AND c.agent_id = %s RETURNING id",
                (message_id, text, staff_id, conversation_id, list(site_ids), staff_id))
            added = await cur.fetchone() is not None
            if added:
                await conn.execute("UPDATE conversations SET last_activity_at = now()"
                                   " WHERE id = %s", (conversation_id,))
        if not added:
            summary = await self.summary(conversation_id, site_ids)
            raise StatusConflict(summary.status)
        async with db.connection(self._pool) as conn:
            rows = conn.cursor(row_factory=class_row(Message))
            await rows.execute(MESSAGE_SQL + " WHERE m.id = %s", (message_id,))
            message = await rows.fetchone()
        assert message is not None
        return message
