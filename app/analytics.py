"""The numbers of the back office's analytics page: every SQL statement it reads, per site and
period. Days are UTC days, the token budget's days.

Each query reads one site's period through an index that covers it (sql/0011_analytics.sql), so
its cost grows with the period, not with the whole history (bench/analytics_bench.py measures
them on 1,000,000 messages).

How a shopper's question counts: a question the assistant answered has its answer row written in
the same INSERT (app/messages.py `Turn.save`), so both rows have the same `created_at`. An answer
came from the model unless it is a fallback or was written with no model (knowledge-only mode),
when it came from the knowledge base alone; a question with no answer row was forwarded to the
person handling the conversation.

Feedback (thumbs, CSAT) is another module's columns: `FEEDBACK` names them, and the queries use
them only once they exist in the database (read once per process), so the page says "no votes
yet" until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from . import db
from .pricing import PriceTable

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_QUESTIONS = 20
# The model column of answers written without a model (knowledge-only mode), as shown.
NO_MODEL = "knowledge-only"


@dataclass(frozen=True)
class FeedbackColumns:
    """Where feedback lives once the feedback migration has run: the answer's vote
    ('up'/'down') on messages, the shopper's CSAT (true: solved) on conversations."""

    vote_table: str = "messages"
    vote_column: str = "feedback_rating"
    csat_table: str = "conversations"
    csat_column: str = "csat"


FEEDBACK = FeedbackColumns()


class PeriodError(ValueError):
    """The period asked for cannot be read: one line why, for a 400."""


@dataclass(frozen=True)
class Period:
    first: date  # both days included
    last: date

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(0), UTC)

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after the last day."""
        return datetime.combine(self.last + timedelta(days=1), time(0), UTC)


def today_utc() -> date:
    return datetime.now(UTC).date()


def parse_period(first: str | None, last: str | None, today: date | None = None) -> Period:
    """`from` and `to` as YYYY-MM-DD (both optional): by default the last 30 days to today."""
    today = today or today_utc()

    def read(raw: str | None, name: str) -> date | None:
        if raw is None or raw == "":
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise PeriodError(f"{name} must be a date like 2026-01-31.") from None

    end = read(last, "to") or today
    start = read(first, "from") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise PeriodError("from must be on or before to.")
    if (end - start).days + 1 > MAX_DAYS:
        raise PeriodError(f"The period can be at most {MAX_DAYS} days.")
    return Period(start, end)


@dataclass(frozen=True)
class Day:
    day: date
    conversations: int = 0
    questions: int = 0
    by_model: int = 0
    by_knowledge: int = 0
    by_person: int = 0
    handoffs: int = 0
    errors: int = 0
    cancelled: int = 0
    interrupted: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0


@dataclass(frozen=True)
class Summary:
    conversations: int
    questions: int
    by_model: int
    by_knowledge: int
    by_person: int
    handoffs: int
    errors: int
    cancelled: int
    interrupted: int
    median_first_token_ms: float | None
    median_person_join_s: float | None
    thumbs_up: int | None  # None: feedback is not stored in this database yet
    thumbs_down: int | None
    csat_yes: int | None
    csat_answers: int | None

    def share(self, part: int) -> float | None:
        return None if self.questions == 0 else part / self.questions

    @property
    def handoff_rate(self) -> float | None:
        return None if self.conversations == 0 else self.handoffs / self.conversations

    @property
    def thumbs_up_rate(self) -> float | None:
        if self.thumbs_up is None or self.thumbs_down is None:
            return None
        votes = self.thumbs_up + self.thumbs_down
        return None if votes == 0 else self.thumbs_up / votes

    @property
    def csat_rate(self) -> float | None:
        if not self.csat_answers or self.csat_yes is None:
            return None
        return self.csat_yes / self.csat_answers


@dataclass(frozen=True)
class ModelDay:
    day: date
    model: str
    answers: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: the model has no price in MODEL_PRICES

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Spend:
    """One day's spend of a site against its budget."""

    day: date
    tokens: int
    cost_usd: float | None
    budget_tokens: int | None  # None: no budget

    @property
    def budget_share(self) -> float | None:
        return None if not self.budget_tokens else self.tokens / self.budget_tokens


@dataclass(frozen=True)
class QuestionGroup:
    key: str  # 'source:<article path>' or 'words:<normalised question>'
    label: str  # the article's title, or an example of the question
    example: str
    questions: int
    thumbs_down: int | None
    votes: int | None

    @property
    def thumbs_down_rate(self) -> float | None:
        if not self.votes or self.thumbs_down is None:
            return None
        return self.thumbs_down / self.votes


@dataclass(frozen=True)
class Report:
    site_id: int
    period: Period
    days: list[Day]
    summary: Summary
    costs: list[ModelDay]
    today: Spend
    top_questions: list[QuestionGroup] = field(default_factory=list)

    @property
    def feedback_stored(self) -> bool:
        return self.summary.thumbs_up is not None


def _count(column: str | None, value: str) -> sql.Composable:
    """count(*) of the rows whose column has the value; 0 when the column does not exist."""
    if column is None:
        return sql.SQL("0")
    return sql.SQL("count(*) FILTER (WHERE {} = {})").format(sql.Identifier(column),
                                                          sql.Literal(value))


class Analytics:
    def __init__(self, pool: AsyncConnectionPool, prices: PriceTable) -> None:
        self._pool = pool
        self._prices = prices
        self._columns: set[tuple[str, str]] | None = None

    async def _feedback(self) -> tuple[str | None, str | None]:
        """The vote and CSAT columns, if the database has them (looked up once)."""
        if self._columns is None:
            async with db.connection(self._pool) as conn:
                cur = await conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND (table_name, column_name)"
                    " IN ((%s, %s), (%s, %s))",
                    (FEEDBACK.vote_table, FEEDBACK.vote_column, FEEDBACK.csat_table,
                     FEEDBACK.csat_column))
                found = {(row[0], row[1]) for row in await cur.fetchall()}
            if found:  # not cached while absent: a migration may add them while we run
                self._columns = found
            columns = found
        else:
            columns = self._columns
        vote = FEEDBACK.vote_column \
            if (FEEDBACK.vote_table, FEEDBACK.vote_column) in columns else None
        csat = FEEDBACK.csat_column \
            if (FEEDBACK.csat_table, FEEDBACK.csat_column) in columns else None
        return vote, csat

    async def report(self, site_id: int, period: Period, budget_tokens: int | None,
                     today: date | None = None) -> Report:
        days, summary = await self.days(site_id, period)
        return Report(site_id, period, days, summary, await self.costs(site_id, period),
                      await self.spend(site_id, today or today_utc(), budget_tokens),
                      await self.top_questions(site_id, period))

    async def days(self, site_id: int, period: Period) -> tuple[list[Day], Summary]:
        """Every day of the period (days with nothing are zeros), and the period's totals."""
        vote, csat = await self._feedback()
        bounds = {"site": site_id, "start": period.start, "end": period.end}
        # GROUPING SETS: the per-day rows and the period's row (day NULL) in one scan, the
        # median over the whole period included.
        messages_sql = sql.SQL(
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day,"
            " count(*) FILTER (WHERE sender = 'user'),"
            " count(*) FILTER (WHERE sender = 'ai' AND NOT fallback AND model IS NOT NULL),"
            " count(*) FILTER (WHERE sender = 'ai' AND (fallback OR model IS NULL)),"
            " count(*) FILTER (WHERE sender = 'ai' AND status = 'error'),"
            " count(*) FILTER (WHERE sender = 'ai' AND status = 'cancelled'),"
            " count(*) FILTER (WHERE sender = 'ai' AND status = 'interrupted'),"
            " {up}, {down},"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY first_token_ms)"
            "   FILTER (WHERE sender = 'ai'),"
            " grouping((created_at AT TIME ZONE 'UTC')::date)"
            " FROM messages WHERE site_id = %(site)s AND created_at >= %(start)s"
            " AND created_at < %(end)s"
            " GROUP BY GROUPING SETS ((created_at AT TIME ZONE 'UTC')::date, ())"
        ).format(up=_count(vote, "up"), down=_count(vote, "down"))
        csat_sql = (sql.SQL("count({c}) FILTER (WHERE {c}), count({c})").format(
            c=sql.Identifier(csat)) if csat else sql.SQL("0, 0"))
        conversations_sql = sql.SQL(
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*),"
            " count(*) FILTER (WHERE handoff_at IS NOT NULL OR agent_joined_at IS NOT NULL),"
            " percentile_cont(0.5) WITHIN GROUP"
            "   (ORDER BY extract(epoch FROM agent_joined_at - handoff_at))"
            "   FILTER (WHERE agent_joined_at >= handoff_at), {csat},"
            " grouping((created_at AT TIME ZONE 'UTC')::date)"
            " FROM conversations WHERE site_id = %(site)s AND created_at >= %(start)s"
            " AND created_at < %(end)s"
            " GROUP BY GROUPING SETS ((created_at AT TIME ZONE 'UTC')::date, ())"
        ).format(csat=csat_sql)
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(messages_sql, bounds)
            message_rows = await cur.fetchall()
            cur = await conn.execute(conversations_sql, bounds)
            conversation_rows = await cur.fetchall()
        per_day: dict[date, dict[str, Any]] = {}
        totals: dict[str, Any] = {}
        for row in message_rows:
            target = totals if row[-1] else per_day.setdefault(row[0], {})
            answered = row[2] + row[3]
            target.update(questions=row[1], by_model=row[2], by_knowledge=row[3],
                          by_person=max(0, row[1] - answered), errors=row[4], cancelled=row[5],
                          interrupted=row[6], thumbs_up=row[7], thumbs_down=row[8],
                          median_first_token_ms=row[9])
        for row in conversation_rows:
            target = totals if row[-1] else per_day.setdefault(row[0], {})
            target.update(conversations=row[1], handoffs=row[2], median_person_join_s=row[3],
                          csat_yes=row[4], csat_answers=row[5])
        days = [Day(day, **{name: value for name, value in per_day.get(day, {}).items()
                            if name in Day.__dataclass_fields__})
                for day in period.days]
        summary = Summary(
            conversations=totals.get("conversations", 0), questions=totals.get("questions", 0),
            by_model=totals.get("by_model", 0), by_knowledge=totals.get("by_knowledge", 0),
            by_person=totals.get("by_person", 0), handoffs=totals.get("handoffs", 0),
            errors=totals.get("errors", 0), cancelled=totals.get("cancelled", 0),
            interrupted=totals.get("interrupted", 0),
            median_first_token_ms=totals.get("median_first_token_ms"),
            median_person_join_s=totals.get("median_person_join_s"),
            thumbs_up=totals.get("thumbs_up", 0) if vote else None,
            thumbs_down=totals.get("thumbs_down", 0) if vote else None,
            csat_yes=totals.get("csat_yes", 0) if csat else None,
            csat_answers=totals.get("csat_answers", 0) if csat else None)
        return days, summary

    async def _model_tokens(self, site_id: int, start: datetime,
                            end: datetime) -> list[tuple[date, str, int, int, int]]:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(model, %(none)s),"
                " count(*), coalesce(sum(prompt_tokens), 0)::bigint,"
                " coalesce(sum(completion_tokens), 0)::bigint"
                " FROM messages WHERE site_id = %(site)s AND created_at >= %(start)s"
                " AND created_at < %(end)s AND sender = 'ai'"
                " AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)"
                " GROUP BY 1, 2 ORDER BY 1, 2",
                {"none": NO_MODEL, "site": site_id, "start": start, "end": end})
            return [(row[0], row[1], row[2], row[3], row[4]) for row in await cur.fetchall()]

    async def costs(self, site_id: int, period: Period) -> list[ModelDay]:
        """Tokens and cost per day and model, from the usage stored with each answer."""
        return [ModelDay(day, model, answers, prompt, completion,
                         self._prices.cost(model, prompt, completion))
                for day, model, answers, prompt, completion
                in await self._model_tokens(site_id, period.start, period.end)]

    async def spend(self, site_id: int, day: date, budget_tokens: int | None) -> Spend:
        one_day = Period(day, day)
        rows = await self.costs(site_id, one_day)
        costs = [row.cost_usd for row in rows]
        return Spend(day, sum(row.tokens for row in rows),
                     None if any(cost is None for cost in costs) else sum(
                         cost for cost in costs if cost is not None),
                     budget_tokens or None)

    async def top_questions(self, site_id: int, period: Period,
                            limit: int = TOP_QUESTIONS) -> list[QuestionGroup]:
        """The period's questions grouped by the article or curated answer their answer drew
        on first, else by their wording (lower case, punctuation and spacing folded)."""
        vote, _ = await self._feedback()
        rating = sql.Identifier(vote) if vote else sql.SQL("NULL::text")
        query = sql.SQL(
            "WITH q AS (SELECT conversation_id, created_at, text FROM messages"
            "   WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s"
            "   AND sender = 'user'),"
            " a AS (SELECT conversation_id, created_at, sources -> 0 AS source,"
            "   {rating} AS rating FROM messages"
            "   WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s"
            "   AND sender = 'ai'),"
            " grouped AS (SELECT coalesce('source:' || (a.source ->> 'path'), 'words:'"
            "   || btrim(regexp_replace(lower(q.text), '[^[:alnum:]]+', ' ', 'g'))) AS key,"
            "   a.source ->> 'title' AS title, q.text, a.rating"
            "   FROM q LEFT JOIN a USING (conversation_id, created_at))"
            " SELECT key, max(title), min(text), count(*),"
            " count(*) FILTER (WHERE rating = 'down'), count(rating)"
            " FROM grouped GROUP BY key ORDER BY count(*) DESC, key LIMIT %(limit)s"
        ).format(rating=rating)
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(query, {"site": site_id, "start": period.start,
                                             "end": period.end, "limit": limit})
            rows = await cur.fetchall()
        return [QuestionGroup(key, title or example, example, count,
                              down if vote else None, votes if vote else None)
                for key, title, example, count, down, votes in rows]
