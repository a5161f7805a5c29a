"""Knowledge gaps: the shoppers' questions the knowledge base did not answer, grouped.

A question is a gap when its answer (the next message) was not found in the knowledge base
(an assistant answer with no sources and no order looked up), came from the fallback (the model
failed), got a thumbs down, or when the shopper asked for a person after it
(sql/0010_feedback_and_curated_answers.sql). Questions are grouped by the article their answer
matched when it matched one (thumbs down and fallback), else by their normalised wording: the
stemmed words without stop words, in order (PostgreSQL's own `english` configuration, as the
search uses), so "Do you ship to Mars?" and "can you ship to mars" are one group. Newest first.

A group an owner closed with a curated answer (its `gap_key`) is left out, unless a shopper has
asked it again since. Small talk ("hello", "thanks!", app/small_talk.py) is never a gap:
it asks nothing, and with a model its answer cites no article.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from . import db
from .small_talk import SMALL_TALK_SQL, sql_params

REASONS = ("not_found", "fallback", "thumbs_down", "handoff")
# Bounds on a big site: the newest questions of the period looked at, and the newest gap
# questions among them read for one list (enough for many groups).
MAX_QUESTIONS_SCANNED = 20000
MAX_QUESTIONS_READ = 2000
EXAMPLES_PER_GROUP = 5

_GAPS_SQL = f"""
WITH asked AS (
    SELECT q.id, q.conversation_id, q.text, q.created_at, q.handoff_at IS NOT NULL AS handoff,
           a.sender AS answer_sender, a.status AS answer_status, a.sources, a.tools,
           coalesce(a.fallback, false) AS fallback, a.feedback_rating, a.feedback_comment
    FROM (SELECT id, conversation_id, seq, text, created_at, handoff_at FROM messages
          WHERE site_id = %(site)s AND sender = 'user'
            AND created_at >= now() - make_interval(days => %(days)s)
          ORDER BY created_at DESC LIMIT %(max_scan)s) q
    LEFT JOIN LATERAL (
        SELECT sender, status, sources, tools, fallback, feedback_rating, feedback_comment
        FROM messages a WHERE a.conversation_id = q.conversation_id AND a.seq > q.seq
        ORDER BY a.seq LIMIT 1
    ) a ON true
),
gap AS (
    SELECT *,
           answer_sender = 'ai' AND answer_status = 'complete' AND NOT fallback
               AND sources = '[]'::jsonb AND tools = '[]'::jsonb AS not_found,
           answer_sender = 'ai' AND feedback_rating = 'down' AS thumbs_down
    FROM asked
)
SELECT id, conversation_id, text, created_at, handoff, fallback, not_found, thumbs_down,
       feedback_comment,
       CASE WHEN sources <> '[]'::jsonb AND (fallback OR thumbs_down)
            THEN 'article:' || (sources -> 0 ->> 'path')
            ELSE 'words:' || coalesce(nullif(array_to_string(tsvector_to_array(
                to_tsvector('english', text)), ' '), ''), lower(text)) END AS key,
       CASE WHEN sources <> '[]'::jsonb THEN sources -> 0 ->> 'title' END AS article_title
FROM gap
WHERE (handoff OR fallback OR not_found OR thumbs_down)
  AND NOT coalesce({SMALL_TALK_SQL}, false)
ORDER BY created_at DESC
LIMIT %(max_read)s
"""

# A group is closed by a curated answer written from it after its latest question.
_CLOSED_SQL = ("SELECT gap_key, max(created_at) FROM curated_answers WHERE site_id = %s"
               " AND gap_key = ANY(%s) GROUP BY gap_key")


@dataclass
class GapGroup:
    key: str
    label: str
    article_title: str | None
    latest_at: datetime
    count: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    questions: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "articleTitle": self.article_title,
                "latestAt": self.latest_at.isoformat(), "count": self.count,
                "reasons": self.reasons, "questions": self.questions,
                "comments": self.comments, "conversationIds": self.conversation_ids}


class KnowledgeGaps:
    """One site's knowledge gaps, for the back office."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def groups(self, site_id: int, days: int, limit: int) -> list[GapGroup]:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_GAPS_SQL, {"site": site_id, "days": days,
                                          "max_read": MAX_QUESTIONS_READ,
                                          "max_scan": MAX_QUESTIONS_SCANNED,
                                          **sql_params()})
            rows = await cur.fetchall()
            groups: dict[str, GapGroup] = {}
            for row in rows:  # newest first, so a group's first row is its latest question
                group = groups.get(row["key"])
                if group is None:
                    group = groups[row["key"]] = GapGroup(
                        row["key"], row["article_title"] or row["text"], row["article_title"],
                        row["created_at"])
                group.count += 1
                for reason in REASONS:
                    group.reasons[reason] += bool(row[reason])
                text = " ".join(row["text"].split())
                if text not in group.questions and len(group.questions) < EXAMPLES_PER_GROUP:
                    group.questions.append(text)
                comment = row["feedback_comment"]
                if comment and len(group.comments) < EXAMPLES_PER_GROUP:
                    group.comments.append(comment)
                conversation = str(row["conversation_id"])
                if (conversation not in group.conversation_ids
                        and len(group.conversation_ids) < EXAMPLES_PER_GROUP):
                    group.conversation_ids.append(conversation)
            cur2 = await conn.execute(_CLOSED_SQL, (site_id, list(groups)))
            closed = dict(await cur2.fetchall())
        open_groups = [group for group in groups.values()
                       if group.key not in closed or closed[group.key] < group.latest_at]
        return open_groups[:limit]
