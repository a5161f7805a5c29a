"""Staff notes on a conversation (sql/0012): for colleagues only.

A note never reaches the shopper: it is not a message (so not in the history, the prompt or
the conversation's stream, which the widget reads); it is read with the transcript by staff of
the conversation's site and announced on the site's inbox stream, which only staff can open.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import NotFoundError

_NOTE_SQL = ("SELECT n.id, n.conversation_id, n.site_id, n.text, n.created_at,"
             " s.display_name AS staff_name FROM conversation_notes n"
             " LEFT JOIN staff s ON s.id = n.staff_id")


@dataclass(frozen=True)
class Note:
    id: uuid.UUID
    conversation_id: uuid.UUID
    site_id: int
    text: str
    created_at: datetime
    staff_name: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "conversationId": str(self.conversation_id),
                "text": self.text, "createdAt": self.created_at.isoformat(),
                "staffName": self.staff_name}


class ConversationNotes:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def add(self, conversation_id: uuid.UUID, site_ids: Sequence[int], staff_id: int,
                  text: str) -> Note:
        """NotFoundError for a conversation of another site, exactly like an unknown one."""
        note_id = uuid.uuid4()
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "INSERT INTO conversation_notes (id, conversation_id, site_id, staff_id, text)"
                " SELECT %s, c.id, c.site_id, %s, %s FROM conversations c"
                " WHERE c.id = %s AND c.site_id = ANY(%s) RETURNING id",
                (note_id, staff_id, text, conversation_id, list(site_ids)))
            if await cur.fetchone() is None:
                raise NotFoundError("conversation")
            rows = conn.cursor(row_factory=class_row(Note))
            await rows.execute(_NOTE_SQL + " WHERE n.id = %s", (note_id,))
            note = await rows.fetchone()
        assert note is not None
        return note

    async def of(self, conversation_id: uuid.UUID, site_ids: Sequence[int]) -> list[Note]:
        async with db.connection(self._pool) as conn:
            rows = conn.cursor(row_factory=class_row(Note))
            await rows.execute(_NOTE_SQL + " WHERE n.conversation_id = %s"
                               " AND n.site_id = ANY(%s) ORDER BY n.created_at, n.id",
                               (conversation_id, list(site_ids)))
            return await rows.fetchall()
