"""Curated answers written in the back office, beside the ones of the site's answers.toml.

The record is the `curated_answers` table (sql/0010_feedback_and_curated_answers.sql). Each one
is also indexed like an entry of answers.toml: a knowledge "article" of one chunk, kind 'answer',
path `back-office#<id>` (BACK_OFFICE_PREFIX), so the search finds it with no second code path.
A file sync never touches those paths, and a change here never touches the file's.

Publishing, editing and withdrawing happen in one transaction, under the knowledge sync's lock
(so a sync running meanwhile sees either all of it or none), and bump the site's row of
`knowledge_revisions`. Every search reads that row (app/knowledge_search.py), so the next
question on every instance sees the change at once, without a restart or a message bus.

Which wins: a back-office answer and a file answer that both match a question closely are
resolved in the back-office answer's favour (app/knowledge_search.py, `_close_curated`): the
owner wrote it later, from what shoppers actually asked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import NotFoundError
from .knowledge import (
    BACK_OFFICE_PREFIX,
    SYNC_LOCK_KEY,
    Article,
    ArticleSection,
    _index_article,
    _index_words,
    bump_revision,
)

MAX_TITLE_CHARS = 200
MAX_QUESTIONS = 20
MAX_QUESTION_CHARS = 300
MAX_ANSWER_CHARS = 4000
MAX_GAP_KEY_CHARS = 300


class InvalidCuratedAnswer(ValueError):
    """A field of a curated answer is missing, too long or not text; the message says which."""


@dataclass(frozen=True)
class CuratedAnswer:
    id: int
    site_id: int
    title: str
    questions: list[str]
    answer: str
    gap_key: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def path(self) -> str:
        return f"{BACK_OFFICE_PREFIX}{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "siteId": self.site_id, "title": self.title,
                "questions": self.questions, "answer": self.answer, "gapKey": self.gap_key,
                "path": self.path, "createdAt": self.created_at.isoformat(),
                "updatedAt": self.updated_at.isoformat()}


@dataclass(frozen=True)
class CuratedDraft:
    """What the owner wrote, checked."""

    title: str
    questions: tuple[str, ...]
    answer: str
    gap_key: str | None = None


def _text(raw: object, name: str, max_chars: int) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidCuratedAnswer(f"{name} must be non-empty text.")
    if len(raw) > max_chars:
        raise InvalidCuratedAnswer(f"{name} is too long (at most {max_chars} characters).")
    # PostgreSQL text cannot hold NUL, so refuse it here rather than fail in the INSERT.
    if "\x00" in raw:
        raise InvalidCuratedAnswer(f"{name} contains a NUL character.")
    return raw.strip()


def check_draft(body: object) -> CuratedDraft:
    """{"title", "questions": [...], "answer", "gapKey"?} -> CuratedDraft, or
    InvalidCuratedAnswer naming the field."""
    if not isinstance(body, dict):
        raise InvalidCuratedAnswer('The body must be a JSON object like {"title": "...",'
                                   ' "questions": ["..."], "answer": "..."}.')
    questions = body.get("questions")
    if not isinstance(questions, list) or not questions:
        raise InvalidCuratedAnswer("questions must be a list of example questions.")
    if len(questions) > MAX_QUESTIONS:
        raise InvalidCuratedAnswer(f"At most {MAX_QUESTIONS} example questions.")
    checked = tuple(dict.fromkeys(" ".join(_text(q, "Each question", MAX_QUESTION_CHARS).split())
                                  for q in questions))
    gap_key = body.get("gapKey")
    return CuratedDraft(
        _text(body.get("title"), "title", MAX_TITLE_CHARS), checked,
        _text(body.get("answer"), "answer", MAX_ANSWER_CHARS),
        None if gap_key is None else _text(gap_key, "gapKey", MAX_GAP_KEY_CHARS))


def as_article(answer: CuratedAnswer) -> Article:
    """The answer as the knowledge index holds it, exactly like an answers.toml entry."""
    examples = "\n".join(answer.questions)
    body = " ".join(answer.answer.split())
    content_hash = hashlib.sha256(f"{answer.title}\n{examples}\n{body}".encode()).hexdigest()
    return Article(answer.path, answer.title, content_hash,
                   (ArticleSection(answer.title, body, examples),), kind="answer")


_COLUMNS = "id, site_id, title, questions, answer, gap_key, created_at, updated_at"


class CuratedAnswers:
    """The back office's curated answers of some sites; another site's is not found."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def list(self, site_id: int) -> list[CuratedAnswer]:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(CuratedAnswer))
            await cur.execute(f"SELECT {_COLUMNS} FROM curated_answers WHERE site_id = %s"
                              " ORDER BY updated_at DESC, id DESC", (site_id,))
            return await cur.fetchall()

    async def publish(self, site_id: int, draft: CuratedDraft,
                      staff_id: int | None) -> CuratedAnswer:
        async with db.connection(self._pool) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK_KEY])
            cur = conn.cursor(row_factory=class_row(CuratedAnswer))
            await cur.execute(
                "INSERT INTO curated_answers (site_id, title, questions, answer, gap_key,"
                f" created_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (site_id, draft.title, list(draft.questions), draft.answer, draft.gap_key,
                 staff_id))
            answer = await cur.fetchone()
            assert answer is not None
            await self._index(conn, answer)
            return answer

    async def update(self, answer_id: int, site_ids: Sequence[int],
                     draft: CuratedDraft) -> CuratedAnswer:
        async with db.connection(self._pool) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK_KEY])
            cur = conn.cursor(row_factory=class_row(CuratedAnswer))
            await cur.execute(
                "UPDATE curated_answers SET title = %s, questions = %s, answer = %s,"
                " gap_key = coalesce(%s, gap_key), updated_at = now()"
                f" WHERE id = %s AND site_id = ANY(%s) RETURNING {_COLUMNS}",
                (draft.title, list(draft.questions), draft.answer, draft.gap_key, answer_id,
                 list(site_ids)))
            answer = await cur.fetchone()
            if answer is None:
                raise NotFoundError("curated answer")
            await self._index(conn, answer)
            return answer

    async def withdraw(self, answer_id: int, site_ids: Sequence[int]) -> None:
        async with db.connection(self._pool) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK_KEY])
            cur = await conn.execute(
                "DELETE FROM curated_answers WHERE id = %s AND site_id = ANY(%s)"
                " RETURNING site_id", (answer_id, list(site_ids)))
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError("curated answer")
            site_id = row[0]
            await conn.execute("DELETE FROM knowledge_articles WHERE site_id = %s AND path = %s",
                               (site_id, f"{BACK_OFFICE_PREFIX}{answer_id}"))
            await _index_words(conn, site_id)
            await bump_revision(conn, site_id)

    async def _index(self, conn: AsyncConnection[Any], answer: CuratedAnswer) -> None:
        await _index_article(conn, as_article(answer), answer.site_id)
        await _index_words(conn, answer.site_id)
        await bump_revision(conn, answer.site_id)
