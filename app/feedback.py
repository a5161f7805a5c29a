"""Shoppers' feedback: a thumbs up or down on an answer, and "did we solve your problem?".

A vote is kept on the message it rates (sql/0010_feedback_and_curated_answers.sql): one vote
per answer, and voting again replaces it. Only a finished answer can be rated: the assistant's
(status 'complete') or an agent's; a shopper's own message, or an answer still streaming or that
failed, cannot. Like every shopper lookup, a message is found only within its session and site,
so another session's message is not found, exactly like an unknown one.

Raises domain errors (NotFoundError, and NotRateable / NotResolved below); app/endpoints_feedback.py
turns them into HTTP.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import NotFoundError

RATINGS = ("up", "down")
# A comment says what was wrong in a sentence or two; the conversation itself is the detail.
MAX_COMMENT_CHARS = 500


class NotRateable(Exception):
    """The message exists in the session but is not a finished answer (a question, or an answer
    still streaming or that failed)."""


class NotResolved(Exception):
    """The conversation is not resolved, so whether it solved the problem cannot be asked yet."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Vote:
    message_id: uuid.UUID
    rating: str
    comment: str | None

    def to_json(self) -> dict[str, Any]:
        return {"messageId": str(self.message_id), "rating": self.rating,
                "comment": self.comment}


def feedback_json(rating: str | None, comment: str | None) -> dict[str, Any] | None:
    """A message's vote as the history and the transcript show it; None: not rated."""
    return None if rating is None else {"rating": rating, "comment": comment}


class FeedbackStore:
    """Votes on messages and the CSAT answer on conversations."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def vote(self, message_id: uuid.UUID, session_id: uuid.UUID, site_id: int,
                   rating: str, comment: str | None) -> Vote:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE messages SET feedback_rating = %s, feedback_comment = %s,"
                " feedback_at = now() WHERE id = %s AND conversation_id = %s AND site_id = %s"
                " AND (sender = 'agent' OR (sender = 'ai' AND status = 'complete'))"
                " RETURNING id", (rating, comment, message_id, session_id, site_id))
            if await cur.fetchone() is not None:
                return Vote(message_id, rating, comment)
            cur = await conn.execute(
                "SELECT 1 FROM messages WHERE id = %s AND conversation_id = %s AND site_id = %s",
                (message_id, session_id, site_id))
            if await cur.fetchone() is None:
                raise NotFoundError("message")
        raise NotRateable()

    async def answer_csat(self, session_id: uuid.UUID, site_id: int, solved: bool) -> str:
        """Record the answer ('yes' or 'no'); asking again replaces it."""
        answer = "yes" if solved else "no"
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE conversations SET csat = %s, csat_at = now()"
                " WHERE id = %s AND site_id = %s AND status = 'resolved' RETURNING id",
                (answer, session_id, site_id))
            if await cur.fetchone() is not None:
                return answer
            cur = await conn.execute(
                "SELECT status FROM conversations WHERE id = %s AND site_id = %s",
                (session_id, site_id))
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError("conversation")
        raise NotResolved(row[0])

    async def mark_handoff(self, session_id: uuid.UUID, site_id: int) -> None:
        """The shopper asked for a person: their latest question is one the knowledge base
        did not answer for them (a knowledge gap, app/knowledge_gaps.py)."""
        async with db.connection(self._pool) as conn:
            await conn.execute(
                "UPDATE messages SET handoff_at = now() WHERE id = (SELECT id FROM messages"
                " WHERE conversation_id = %s AND site_id = %s AND sender = 'user'"
                " ORDER BY seq DESC LIMIT 1)", (session_id, site_id))
