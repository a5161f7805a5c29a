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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import NotFoundError, StoreUnavailable
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

    def to_json(self) -> dict[str, Any]:
        # sources and fallback as in the `done` event, so a reload shows what the live answer did.
        return {"id": str(self.id), "sender": self.sender, "text": self.text,
                "status": self.status, "createdAt": self.created_at.isoformat(),
                "sources": self.sources, "fallback": self.fallback}


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


@dataclass(frozen=True)
class HistoryPage:
    session_id: uuid.UUID
    messages: list[Message]
    has_more: bool


class Turn:
    """A shopper's new turn, inside its transaction: the session and history are read, the two
    rows are not written yet (`save`). Leaving the block commits; an exception rolls back."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], session_id: uuid.UUID,
                 history: list[tuple[str, str]], new_session: bool, site_id: int) -> None:
        self._conn = conn
        self.session_id = session_id
        self.site_id = site_id
        self.history = history
        self._new_session = new_session
        # Set once the rows are written: from then on a failure may come after the server has
        # committed them (a reply lost to a freeze or a cut), so they may exist after all.
        self.writer_pid: int | None = None

    async def save(self, question: str, user_message_id: uuid.UUID, answer_id: uuid.UUID,
                   model: str | None) -> None:
        """The shopper's message, and the answer's empty 'streaming' row."""
        if self._new_session:
            await self._conn.execute("INSERT INTO conversations (id, site_id) VALUES (%s, %s)",
                                     (self.session_id, self.site_id))
        await self._conn.execute(
            "INSERT INTO messages (id, conversation_id, site_id, sender, text, status, model)"
            " VALUES (%s, %s, %s, 'user', %s, 'complete', NULL),"
            " (%s, %s, %s, 'ai', '', 'streaming', %s)",
            (user_message_id, self.session_id, self.site_id, question, answer_id,
             self.session_id, self.site_id, model),
        )
        self.writer_pid = self._conn.info.backend_pid


class MessageStore:
    def __init__(self, pool: AsyncConnectionPool, *, history_window: int) -> None:
        self._pool = pool
        self._history_window = history_window

    @contextlib.asynccontextmanager
    async def new_turn(self, session_id: uuid.UUID | None,
                       site_id: int = DEFAULT_SITE_ID) -> AsyncIterator[Turn]:
        """Open the transaction of a new turn in `session_id` of the site, or in a new session
        (another site's session id is an unknown one)."""
        async with db.connection(self._pool) as conn, conn.transaction():
            history: list[tuple[str, str]] = []
            known = False
            if session_id is not None:
                cur = await conn.execute(
                    "SELECT 1 FROM conversations WHERE id = %s AND site_id = %s",
                    (session_id, site_id))
                if await cur.fetchone() is not None:
                    known = True
                    history = await self._history_window_rows(conn, session_id)
            if session_id is None or not known:
                # An unknown id from the client is never adopted: the server makes the id,
                # so one shopper cannot pick another's future session id.
                session_id = uuid.uuid4()
            yield Turn(conn, session_id, history, new_session=not known, site_id=site_id)

    async def _history_window_rows(self, conn: psycopg.AsyncConnection[Any],
                                   session_id: uuid.UUID) -> list[tuple[str, str]]:
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

    async def save_answer(self, answer_id: uuid.UUID, text: str, status: str, *,
                          prompt_tokens: int | None, completion_tokens: int | None,
                          sources: Sequence[Mapping[str, object]], fallback: bool) -> bool:
        """Write the answer's one row; retry through a short database outage. False: not saved."""
        delay = 0.5
        for attempt in range(1, SAVE_ATTEMPTS + 1):
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
                " fallback, sources, site_id FROM messages WHERE id = %s AND conversation_id = %s"
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
            cur = await conn.execute("SELECT 1 FROM conversations WHERE id = %s AND site_id = %s",
                                     (session_id, site_id))
            if await cur.fetchone() is None:
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
                "SELECT id, sender, text, status, created_at, seq, sources, fallback FROM messages"
                " WHERE conversation_id = %s AND (%s::bigint IS NULL OR seq < %s)"
                " ORDER BY seq DESC LIMIT %s",
                (session_id, before_seq, before_seq, limit + 1),
            )
            newest_first = await rows.fetchall()
        has_more = len(newest_first) > limit
        return HistoryPage(session_id, list(reversed(newest_first[:limit])), has_more)
