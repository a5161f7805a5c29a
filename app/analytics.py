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

import asyncio
import logging
import time as time_module
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from . import db
from .pricing import PriceTable
from .sites import SiteDirectory

log = logging.getLogger(__name__)

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_QUESTIONS = 20
# The model column of answers written without a model (knowledge-only mode), as shown.
NO_MODEL = "knowledge-only"


@dataclass(frozen=True)
class FeedbackColumns:
    """Where feedback lives once the feedback migration has run: the answer's vote
    ('up'/'down') on messages, the shopper's CSAT ('yes'/'no') on conversations."""

    vote_table: str = "messages"
    vote_column: str = "feedback_rating"
    csat_table: str = "conversations"
    csat_column: str = "csat"
    csat_yes: str = "yes"  # the column holds 'yes' or 'no' (sql/0010_feedback_and_curated_answers.sql)


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
class LanguageRow:
    """A question language's numbers over the period ('unknown': asked before detection)."""

    language: str
    questions: int
    answered: int  # by the assistant, complete
    in_language: int  # answered in the question's language
    in_english: int  # answered in English (the English articles) to a question in another

    def share(self, part: int) -> float | None:
        return None if self.answered == 0 else part / self.answered


@dataclass(frozen=True)
class Report:
    site_id: int
    period: Period
    days: list[Day]
    summary: Summary
    costs: list[ModelDay]
    today: Spend
    top_questions: list[QuestionGroup] = field(default_factory=list)
    languages: list[LanguageRow] = field(default_factory=list)

    @property
    def feedback_stored(self) -> bool:
        return self.summary.thumbs_up is not None


def _count(column: str | None, value: str) -> sql.Composable:
    """count(*) of the rows whose column has the value; 0 when the column does not exist."""
    if column is None:
        return sql.SQL("0")
    return sql.SQL("count(*) FILTER (WHERE {} = {})").format(sql.Identifier(column),
                                                          sql.Literal(value))


# The per-day numbers of a range of days [%(first)s, %(last)s] of one site, counted from the
# messages and conversations: what a rollup row holds, and what recent days are counted with.
_DAY_ROWS = """
SELECT d.day::date AS day, coalesce(c.conversations, 0), coalesce(c.handoffs, 0),
       coalesce(m.questions, 0), coalesce(m.by_model, 0), coalesce(m.by_knowledge, 0),
       coalesce(m.errors, 0), coalesce(m.cancelled, 0), coalesce(m.interrupted, 0),
       coalesce(m.up, 0), coalesce(m.down, 0), coalesce(c.csat_yes, 0),
       coalesce(c.csat_answers, 0), coalesce(t.histogram, '{{}}'::jsonb)
FROM generate_series(%(first)s::date, %(last)s::date, interval '1 day') AS d (day)
LEFT JOIN (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
           count(*) FILTER (WHERE sender = 'user') AS questions,
           count(*) FILTER (WHERE sender = 'ai' AND NOT fallback AND model IS NOT NULL)
               AS by_model,
           count(*) FILTER (WHERE sender = 'ai' AND (fallback OR model IS NULL)) AS by_knowledge,
           count(*) FILTER (WHERE sender = 'ai' AND status = 'error') AS errors,
           count(*) FILTER (WHERE sender = 'ai' AND status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE sender = 'ai' AND status = 'interrupted') AS interrupted,
           {up} AS up, {down} AS down
    FROM messages WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
    GROUP BY 1) m ON m.day = d.day
LEFT JOIN (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS conversations,
           count(*) FILTER (WHERE handoff_at IS NOT NULL OR agent_joined_at IS NOT NULL)
               AS handoffs, {csat}
    FROM conversations
    WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
    GROUP BY 1) c ON c.day = d.day
LEFT JOIN (
    SELECT day, jsonb_object_agg(bucket, answers) AS histogram FROM (
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
               first_token_ms / {bucket} * {bucket} AS bucket, count(*) AS answers
        FROM messages WHERE site_id = %(site)s AND created_at >= %(start)s
        AND created_at < %(end)s AND sender = 'ai' AND first_token_ms IS NOT NULL
        GROUP BY 1, 2) b GROUP BY day) t ON t.day = d.day
"""

_MODEL_ROWS = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, coalesce(model, %(none)s) AS model,
       count(*) AS answers, coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens
FROM messages WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
AND sender = 'ai' AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)
GROUP BY 1, 2
"""

# A question and its answer are written by one INSERT, so they share created_at: that is the
# join. Each day keeps its QUESTION_GROUPS_PER_DAY biggest groups.
_QUESTION_ROWS = """
SELECT day, key, max(title), mode() WITHIN GROUP (ORDER BY text), count(*)::int,
       (count(*) FILTER (WHERE rating = 'down'))::int, count(rating)::int
FROM (
    SELECT (q.created_at AT TIME ZONE 'UTC')::date AS day,
           coalesce('source:' || (a.source ->> 'path'), 'words:'
               || btrim(regexp_replace(lower(q.text), '[^[:alnum:]]+', ' ', 'g'))) AS key,
           a.source ->> 'title' AS title, q.text, a.rating
    FROM (SELECT conversation_id, created_at, text FROM messages
          WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
          AND sender = 'user') q
    LEFT JOIN (SELECT conversation_id, created_at, sources -> 0 AS source, {rating} AS rating
               FROM messages
               WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
               AND sender = 'ai') a USING (conversation_id, created_at)) grouped
GROUP BY day, key
"""
# Questions per day and question language, with how their answers were written (the answer
# row's language, sql/0017_analytics_languages.sql); joined like the questions above.
_LANGUAGE_ROWS = """
SELECT (q.created_at AT TIME ZONE 'UTC')::date AS day, coalesce(q.language, %(unknown)s),
       count(*)::int, count(a.language)::int,
       (count(*) FILTER (WHERE a.language = q.language))::int,
       (count(*) FILTER (WHERE a.language = 'en' AND q.language <> 'en'))::int
FROM (SELECT conversation_id, created_at, language FROM messages
      WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
      AND sender = 'user') q
LEFT JOIN (SELECT conversation_id, created_at, language FROM messages
           WHERE site_id = %(site)s AND created_at >= %(start)s AND created_at < %(end)s
           AND sender = 'ai' AND status = 'complete') a USING (conversation_id, created_at)
GROUP BY 1, 2
"""
UNKNOWN_LANGUAGE = "unknown"
_TOP_PER_DAY = """
SELECT day, key, title, example, questions, thumbs_down, votes FROM (
    SELECT *, row_number() OVER (PARTITION BY day ORDER BY questions DESC, key) AS place
    FROM ({rows}) AS r (day, key, title, example, questions, thumbs_down, votes)) ranked
WHERE place <= {keep}
"""

# A day is settled, and rolled up, once this many days have passed since it (UTC): answers
# end, people join and votes come in within minutes, very rarely days later.
SETTLE_DAYS = 2
FIRST_TOKEN_BUCKET_MS = 10
QUESTION_GROUPS_PER_DAY = 100
# The most days one rollup statement counts: a long first view is cut into short statements.
ROLLUP_CHUNK_DAYS = 31
FEEDBACK_RECHECK_S = 60.0
ROLL_UP_EVERY_S = 600.0


def median_of_histogram(histogram: dict[int, int]) -> float | None:
    """The middle of the bucket holding the median answer (to FIRST_TOKEN_BUCKET_MS)."""
    total = sum(histogram.values())
    if total == 0:
        return None
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen * 2 >= total:
            return bucket + FIRST_TOKEN_BUCKET_MS / 2
    return None  # not reached: the last bucket holds the rest


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Sorted days as runs of consecutive days, none longer than ROLLUP_CHUNK_DAYS."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and (day - runs[-1][1]).days == 1 \
                and (day - runs[-1][0]).days < ROLLUP_CHUNK_DAYS:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


# A period cut at the last settled day: (the settled days, the recent ones); either may be None.
Split = tuple[Period | None, Period | None]


async def roll_up_every(analytics: Analytics, sites: SiteDirectory,
                        every_s: float = ROLL_UP_EVERY_S) -> None:
    """Keep every site's settled days of the longest period the page shows (MAX_DAYS) rolled
    up, so no view, not even a year's first, counts a year of messages while the owner waits;
    a failed round (the database away) waits for the next one. The first round waits too: a
    start (or a test's short-lived app) is not slowed by it. Only the first round after a
    deploy has much to do (a year of a big site: seconds, once); the next ones find a day."""
    while True:
        await asyncio.sleep(every_s / 20)
        for site in sites.sites:
            try:
                await analytics.roll_up_recent(site.id, days=MAX_DAYS)
            except Exception:
                log.exception("analytics roll-up of site %d failed; next round in %.0f s",
                              site.id, every_s)
        await asyncio.sleep(every_s - every_s / 20)


class Analytics:
    def __init__(self, pool: AsyncConnectionPool, prices: PriceTable) -> None:
        self._pool = pool
        self._prices = prices
        self._columns: set[tuple[str, str]] = set()
        self._columns_read_at = -FEEDBACK_RECHECK_S

    async def _feedback(self) -> tuple[str | None, str | None]:
        """The vote and CSAT columns, if the database has them (read again while absent, at
        most every FEEDBACK_RECHECK_S: a migration may add them while this process runs)."""
        now = time_module.monotonic()
        if not self._columns and now - self._columns_read_at >= FEEDBACK_RECHECK_S:
            async with db.connection(self._pool) as conn:
                cur = await conn.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND (table_name, column_name)"
                    " IN ((%s, %s), (%s, %s))",
                    (FEEDBACK.vote_table, FEEDBACK.vote_column, FEEDBACK.csat_table,
                     FEEDBACK.csat_column))
                self._columns = {(row[0], row[1]) for row in await cur.fetchall()}
            self._columns_read_at = now
        vote = FEEDBACK.vote_column \
            if (FEEDBACK.vote_table, FEEDBACK.vote_column) in self._columns else None
        csat = FEEDBACK.csat_column \
            if (FEEDBACK.csat_table, FEEDBACK.csat_column) in self._columns else None
        return vote, csat

    async def _sql(self) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        """The day, model and question row queries, with the feedback columns there are."""
        vote, csat = await self._feedback()
        csat_sql = (sql.SQL("count({c}) FILTER (WHERE {c} = {yes}) AS csat_yes,"
                            " count({c}) AS csat_answers").format(
                                c=sql.Identifier(csat), yes=sql.Literal(FEEDBACK.csat_yes))
                    if csat else sql.SQL("0 AS csat_yes, 0 AS csat_answers"))
        day_rows = sql.SQL(_DAY_ROWS).format(
            up=_count(vote, "up"), down=_count(vote, "down"), csat=csat_sql,
            bucket=sql.Literal(FIRST_TOKEN_BUCKET_MS))
        question_rows = sql.SQL(_TOP_PER_DAY).format(
            rows=sql.SQL(_QUESTION_ROWS).format(
                rating=sql.Identifier(vote) if vote else sql.SQL("NULL::text")),
            keep=sql.Literal(QUESTION_GROUPS_PER_DAY))
        return day_rows, sql.SQL(_MODEL_ROWS).format(), question_rows

    @staticmethod
    def _bounds(site_id: int, first: date, last: date) -> dict[str, Any]:
        period = Period(first, last)
        return {"site": site_id, "first": first, "last": last, "start": period.start,
                "end": period.end, "none": NO_MODEL, "unknown": UNKNOWN_LANGUAGE}

    async def _settled_part(self, site_id: int, period: Period, today: date) -> Split:
        """The period's settled days (rolled up, rolling up the missing ones now) and its
        recent days (counted live); either may be None."""
        last_settled = today - timedelta(days=SETTLE_DAYS)
        settled = Period(period.first, min(period.last, last_settled)) \
            if period.first <= last_settled else None
        recent = Period(max(period.first, last_settled + timedelta(days=1)), period.last) \
            if period.last > last_settled else None
        if settled is not None:
            await self._roll_up(site_id, settled)
        return settled, recent

    async def _roll_up(self, site_id: int, period: Period) -> None:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT d::date FROM generate_series(%s::date, %s::date, interval '1 day') d"
                " WHERE NOT EXISTS (SELECT 1 FROM analytics_days a WHERE a.site_id = %s"
                " AND a.day = d::date) ORDER BY 1", (period.first, period.last, site_id))
            missing = [row[0] for row in await cur.fetchall()]
        if not missing:
            return
        day_rows, model_rows, question_rows = await self._sql()
        for first, last in _runs(missing):
            bounds = self._bounds(site_id, first, last)
            async with db.connection(self._pool) as conn, conn.transaction():
                # Several instances may roll up the same day at once: the first one's rows
                # stand; the numbers are the same.
                cur = await conn.execute(sql.SQL(
                    "INSERT INTO analytics_days (site_id, day, conversations, handoffs,"
                    " questions, by_model, by_knowledge, errors, cancelled, interrupted,"
                    " thumbs_up, thumbs_down, csat_yes, csat_answers, first_token_ms)"
                    " SELECT %(site)s, r.* FROM ({}) r ON CONFLICT DO NOTHING RETURNING day"
                ).format(day_rows), bounds)
                written = [row[0] for row in await cur.fetchall()]
                if not written:
                    continue
                bounds["days"] = written
                await conn.execute(sql.SQL(
                    "INSERT INTO analytics_model_days (site_id, day, model, answers,"
                    " prompt_tokens, completion_tokens) SELECT %(site)s, r.* FROM ({}) r"
                    " WHERE r.day = ANY(%(days)s) ON CONFLICT DO NOTHING").format(model_rows),
                    bounds)
                await conn.execute(sql.SQL(
                    "INSERT INTO analytics_question_days (site_id, day, key, title, example,"
                    " questions, thumbs_down, votes) SELECT %(site)s, r.* FROM ({}) r"
                    " WHERE r.day = ANY(%(days)s) ON CONFLICT DO NOTHING").format(question_rows),
                    bounds)
                await conn.execute(
                    "INSERT INTO analytics_language_days (site_id, day, language, questions,"
                    " answered, in_language, in_english) SELECT %(site)s, r.* FROM ("
                    + _LANGUAGE_ROWS + ") r WHERE r.day = ANY(%(days)s) ON CONFLICT DO NOTHING",
                    bounds)

    async def report(self, site_id: int, period: Period, budget_tokens: int | None,
                     today: date | None = None) -> Report:
        today = today or today_utc()
        split = await self._settled_part(site_id, period, today)
        days, summary = await self.days(site_id, period, today, split)
        return Report(site_id, period, days, summary,
                      await self.costs(site_id, period, today, split),
                      await self.spend(site_id, today, budget_tokens),
                      await self.top_questions(site_id, period, today=today, split=split),
                      await self.languages(site_id, period, today=today, split=split))

    async def roll_up_recent(self, site_id: int, today: date | None = None,
                             days: int = DEFAULT_DAYS) -> None:
        """Roll up the settled days of the last `days` ahead of a page's first view."""
        today = today or today_utc()
        await self._settled_part(site_id, Period(today - timedelta(days=days - 1), today), today)

    async def days(self, site_id: int, period: Period, today: date | None = None,
                   split: Split | None = None) -> tuple[list[Day], Summary]:
        """Every day of the period (days with nothing are zeros), and the period's totals."""
        vote, csat = await self._feedback()
        settled, recent = split or await self._settled_part(site_id, period, today or today_utc())
        day_rows, _, _ = await self._sql()
        rows: list[tuple[Any, ...]] = []
        async with db.connection(self._pool) as conn:
            settled_histogram: list[tuple[Any, ...]] = []
            if settled is not None:
                cur = await conn.execute(
                    "SELECT day, conversations, handoffs, questions, by_model, by_knowledge,"
                    " errors, cancelled, interrupted, thumbs_up, thumbs_down, csat_yes,"
                    " csat_answers, '{}'::jsonb FROM analytics_days WHERE site_id = %s"
                    " AND day BETWEEN %s AND %s", (site_id, settled.first, settled.last))
                rows += await cur.fetchall()
                # The days' histograms summed by the server: a year's are some 50,000
                # buckets, a few rows once added up.
                cur = await conn.execute(
                    "SELECT bucket::int, sum(answers::int)::bigint FROM analytics_days,"
                    " jsonb_each_text(first_token_ms) AS h (bucket, answers)"
                    " WHERE site_id = %s AND day BETWEEN %s AND %s GROUP BY 1",
                    (site_id, settled.first, settled.last))
                settled_histogram = await cur.fetchall()
            if recent is not None:
                cur = await conn.execute(day_rows, self._bounds(site_id, recent.first,
                                                                recent.last))
                rows += await cur.fetchall()
            # The wait for a person needs each conversation's times: the few with a handoff.
            cur = await conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM agent_joined_at - handoff_at))"
                " FROM conversations WHERE site_id = %s AND created_at >= %s"
                " AND created_at < %s AND handoff_at IS NOT NULL"
                " AND agent_joined_at >= handoff_at", (site_id, period.start, period.end))
            join_row = await cur.fetchone()
        by_day: dict[date, Day] = {}
        histogram: dict[int, int] = dict(settled_histogram)
        for (day, conversations, handoffs, questions, by_model, by_knowledge, errors, cancelled,
             interrupted, up, down, _csat_yes, _csat_answers, first_tokens) in rows:
            by_day[day] = Day(day, conversations, questions, by_model, by_knowledge,
                              max(0, questions - by_model - by_knowledge), handoffs, errors,
                              cancelled, interrupted, up, down)
            for bucket, answers in first_tokens.items():
                histogram[int(bucket)] = histogram.get(int(bucket), 0) + answers
        days = [by_day.get(day, Day(day)) for day in period.days]

        def total(name: str) -> int:
            return sum(getattr(day, name) for day in days)

        summary = Summary(
            conversations=total("conversations"), questions=total("questions"),
            by_model=total("by_model"), by_knowledge=total("by_knowledge"),
            by_person=total("by_person"), handoffs=total("handoffs"), errors=total("errors"),
            cancelled=total("cancelled"), interrupted=total("interrupted"),
            median_first_token_ms=median_of_histogram(histogram),
            median_person_join_s=None if join_row is None or join_row[0] is None
            else float(join_row[0]),
            thumbs_up=total("thumbs_up") if vote else None,
            thumbs_down=total("thumbs_down") if vote else None,
            csat_yes=sum(row[11] for row in rows) if csat else None,
            csat_answers=sum(row[12] for row in rows) if csat else None)
        return days, summary

    async def costs(self, site_id: int, period: Period, today: date | None = None,
                    split: Split | None = None) -> list[ModelDay]:
        """Tokens and cost per day and model, from the usage stored with each answer."""
        settled, recent = split or await self._settled_part(site_id, period, today or today_utc())
        _, model_rows, _ = await self._sql()
        rows: list[tuple[Any, ...]] = []
        async with db.connection(self._pool) as conn:
            if settled is not None:
                cur = await conn.execute(
                    "SELECT day, model, answers, prompt_tokens, completion_tokens"
                    " FROM analytics_model_days WHERE site_id = %s AND day BETWEEN %s AND %s",
                    (site_id, settled.first, settled.last))
                rows += await cur.fetchall()
            if recent is not None:
                cur = await conn.execute(model_rows, self._bounds(site_id, recent.first,
                                                                  recent.last))
                rows += await cur.fetchall()
        return [ModelDay(day, model, answers, prompt, completion,
                         self._prices.cost(model, prompt, completion))
                for day, model, answers, prompt, completion in sorted(rows)]

    async def spend(self, site_id: int, day: date, budget_tokens: int | None) -> Spend:
        rows = await self.costs(site_id, Period(day, day), today=day)
        costs = [row.cost_usd for row in rows]
        return Spend(day, sum(row.tokens for row in rows),
                     None if any(cost is None for cost in costs) else sum(
                         cost for cost in costs if cost is not None),
                     budget_tokens or None)

    async def top_questions(self, site_id: int, period: Period, limit: int = TOP_QUESTIONS,
                            today: date | None = None,
                            split: Split | None = None) -> list[QuestionGroup]:
        """The period's questions grouped by the article or curated answer their answer drew
        on first, else by their wording (lower case, punctuation and spacing folded); the
        example is the group's most frequent wording. Each day counts its
        QUESTION_GROUPS_PER_DAY biggest groups, so the long tail of one-off wordings is left
        out of the counts."""
        vote, _ = await self._feedback()
        settled, recent = split or await self._settled_part(site_id, period, today or today_utc())
        _, _, question_rows = await self._sql()
        parts: list[sql.Composable] = []
        params: dict[str, Any] = {"site": site_id, "none": NO_MODEL, "limit": limit}
        if settled is not None:
            parts.append(sql.SQL(
                "SELECT day, key, title, example, questions, thumbs_down, votes"
                " FROM analytics_question_days WHERE site_id = %(site)s"
                " AND day BETWEEN %(settled_first)s AND %(settled_last)s"))
            params.update(settled_first=settled.first, settled_last=settled.last)
        if recent is not None:
            parts.append(question_rows)
            params.update(self._bounds(site_id, recent.first, recent.last))
        # The example is the wording of the group's biggest day. Picked with max() over
        # "questions, zero-padded, then the wording" (in "C" order: byte order, digits first)
        # rather than an ordered array_agg, so a year's 36,000 rows are one hash aggregate
        # instead of a sort that spills to disk (bench/analytics_bench.py: about 2 to 4x faster).
        query = sql.SQL(
            "SELECT key, max(title),"
            " substr(max((lpad(questions::text, 10, '0') || example) COLLATE \"C\"), 11),"
            " sum(questions)::int, sum(thumbs_down)::int, sum(votes)::int"
            " FROM ({}) AS g (day, key, title, example, questions, thumbs_down, votes)"
            " GROUP BY key ORDER BY sum(questions) DESC, key LIMIT %(limit)s"
        ).format(sql.SQL(" UNION ALL ").join(parts))
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        return [QuestionGroup(key, title or example, example, count,
                              down if vote else None, votes if vote else None)
                for key, title, example, count, down, votes in rows]

    async def languages(self, site_id: int, period: Period, today: date | None = None,
                        split: Split | None = None) -> list[LanguageRow]:
        """The period's questions per question language, most asked first."""
        settled, recent = split or await self._settled_part(site_id, period, today or today_utc())
        rows: list[tuple[Any, ...]] = []
        async with db.connection(self._pool) as conn:
            if settled is not None:
                cur = await conn.execute(
                    "SELECT day, language, questions, answered, in_language, in_english"
                    " FROM analytics_language_days WHERE site_id = %s AND day BETWEEN %s AND %s",
                    (site_id, settled.first, settled.last))
                rows += await cur.fetchall()
            if recent is not None:
                cur = await conn.execute(_LANGUAGE_ROWS, self._bounds(site_id, recent.first,
                                                                      recent.last))
                rows += await cur.fetchall()
        totals: dict[str, list[int]] = {}
        for _, language, *counts in rows:
            total = totals.setdefault(language, [0, 0, 0, 0])
            for i, count in enumerate(counts):
                total[i] += count
        return sorted((LanguageRow(language, *counts) for language, counts in totals.items()),
                      key=lambda row: (-row.questions, row.language))
