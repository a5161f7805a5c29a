"""The analytics page's numbers on a seeded site whose true values this test knows, who may
see them, the CSV tables, and the hand-off times the database records by itself."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app import db
from app.analytics import FIRST_TOKEN_BUCKET_MS, Analytics, Period, roll_up_every
from app.pricing import parse_prices
from app.sites import SiteDirectory, SiteStore, ensure_default_site
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile
from tests.conftest import RunningApp, stream_chat
from tests.test_admin import make_site, make_staff, signed_in

PRICES = "gpt-4o-mini=0.15/0.60,gpt-4o=2.5/10"
PERIOD = {"from": "2026-03-01", "to": "2026-03-02"}
SHIPPING = [{"title": "Shipping", "path": "shipping.md"}]


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


class Seeder:
    """Rows written straight into the database, with the times the test chooses."""

    def __init__(self, conn: psycopg.Connection[Any], site_id: int) -> None:
        self.conn = conn
        self.site_id = site_id

    def conversation(self, created: datetime, handoff: datetime | None = None,
                     joined: datetime | None = None) -> uuid.UUID:
        conversation_id = uuid.uuid4()
        self.conn.execute(
            "INSERT INTO conversations (id, site_id, created_at, handoff_at, agent_joined_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (conversation_id, self.site_id, created, handoff, joined))
        return conversation_id

    def turn(self, conversation_id: uuid.UUID, when: datetime, question: str,
             answer: dict[str, Any] | None) -> None:
        """A question and, unless forwarded to a person (None), its answer at the same time."""
        self._message(conversation_id, when, "user", question, {})
        if answer is not None:
            self._message(conversation_id, when, "ai", "an answer", answer)

    def _message(self, conversation_id: uuid.UUID, when: datetime, sender: str, text: str,
                 answer: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO messages (id, conversation_id, site_id, sender, text, status, model,"
            " prompt_tokens, completion_tokens, first_token_ms, fallback, sources, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (uuid.uuid4(), conversation_id, self.site_id, sender, text,
             answer.get("status", "complete"), answer.get("model"), answer.get("prompt"),
             answer.get("completion"), answer.get("ttft"), answer.get("fallback", False),
             json.dumps(answer.get("sources", [])), when))


def seed(database_url: str, site_id: int, other_site_id: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        s = Seeder(conn, site_id)
        # Day 1: a conversation handed to a person who joined 2 minutes later...
        a = s.conversation(at(1, 10), handoff=at(1, 10, 5), joined=at(1, 10, 7))
        s.turn(a, at(1, 10), "Where is my order?",
               {"model": "gpt-4o-mini", "prompt": 1000, "completion": 100, "ttft": 400,
                "sources": SHIPPING})
        s.turn(a, at(1, 10, 1), "How long does shipping take??",
               {"model": "gpt-4o-mini", "fallback": True, "ttft": 50, "sources": SHIPPING})
        s.turn(a, at(1, 10, 8), "thanks", None)  # the person has it: forwarded
        # ...and one the assistant kept: an error, and a knowledge-only answer.
        b = s.conversation(at(1, 11))
        s.turn(b, at(1, 11), "Return policy?",
               {"model": "gpt-4o-mini", "status": "error", "prompt": 500, "completion": 0})
        s.turn(b, at(1, 11, 2), "return   POLICY", {"model": None, "ttft": 30})
        # Day 2: a person joined after 10 minutes; a cancelled and an interrupted answer.
        c = s.conversation(at(2, 9), handoff=at(2, 9, 1), joined=at(2, 9, 11))
        s.turn(c, at(2, 9), "Where is my order?",
               {"model": "gpt-4o", "status": "cancelled", "prompt": 2000, "completion": 300,
                "ttft": 800, "sources": SHIPPING})
        s.turn(c, at(2, 9, 5), "hello",
               {"model": "gpt-4o-mini", "status": "interrupted", "prompt": 100,
                "completion": 10, "ttft": 600})
        # Outside the period, and another site's conversation in it: neither counts.
        d = s.conversation(datetime(2026, 2, 28, 23, 59, tzinfo=UTC))
        s.turn(d, datetime(2026, 2, 28, 23, 59, tzinfo=UTC), "Where is my order?",
               {"model": "gpt-4o-mini", "prompt": 9999, "completion": 9999})
        other = Seeder(conn, other_site_id)
        e = other.conversation(at(1, 12), handoff=at(1, 12, 1))
        other.turn(e, at(1, 12), "Where is my order?",
                   {"model": "gpt-4o-mini", "prompt": 7777, "completion": 7777})
        # Today: what the budget line reads.
        now = datetime.now(UTC)
        f = s.conversation(now)
        s.turn(f, now, "Do you ship to Spain?",
               {"model": "gpt-4o-mini", "prompt": 300, "completion": 30})
        conn.execute("UPDATE sites SET daily_token_budget = 1000 WHERE id = %s", (site_id,))


@pytest.fixture
async def seeded(database_url: str, start_app: Callable[..., Any]
                 ) -> tuple[RunningApp, int, int]:
    site_id, _ = await make_site(database_url, f"Seeded{uuid.uuid4().hex[:6]}")
    other_id, _ = await make_site(database_url, f"Other{uuid.uuid4().hex[:6]}")
    seed(database_url, site_id, other_id)
    app: RunningApp = await start_app(model_prices=parse_prices(PRICES))
    return app, site_id, other_id


async def test_the_numbers_of_a_seeded_period_are_its_true_values(
        seeded: tuple[RunningApp, int, int], database_url: str) -> None:
    app, site_id, _ = seeded
    owner = await make_staff(database_url, [site_id], role="owner", name="Olga")
    http, _ = await signed_in(app, owner)
    async with aclosing(http):
        response = await http.get(f"/admin/api/sites/{site_id}/analytics", params=PERIOD)
    assert response.status_code == 200, response.text
    body = response.json()
    summary = body["summary"]
    assert {key: summary[key] for key in (
        "conversations", "questions", "byModel", "byKnowledge", "byPerson", "handoffs",
        "errors", "cancelled", "interrupted")} == {
        "conversations": 3, "questions": 7, "byModel": 4, "byKnowledge": 2, "byPerson": 1,
        "handoffs": 2, "errors": 1, "cancelled": 1, "interrupted": 1}
    assert summary["handoffRate"] == pytest.approx(2 / 3)
    # Of 30, 50, 400, 600, 800, read from the days' histograms.
    assert summary["medianFirstTokenMs"] == pytest.approx(400, abs=FIRST_TOKEN_BUCKET_MS)
    assert summary["medianPersonJoinS"] == 360  # of 120 s and 600 s
    # Feedback is stored (sql/0010) but nobody voted: no rate, rather than a made-up 0%.
    assert body["feedbackStored"] is True
    assert (summary["thumbsUp"], summary["thumbsDown"]) == (0, 0)
    assert summary["thumbsUpRate"] is None and summary["csatRate"] is None

    days = {day["day"]: day for day in body["days"]}
    assert list(days) == ["2026-03-01", "2026-03-02"]
    assert (days["2026-03-01"]["questions"], days["2026-03-01"]["byPerson"],
            days["2026-03-01"]["conversations"]) == (5, 1, 2)
    assert (days["2026-03-02"]["questions"], days["2026-03-02"]["byModel"],
            days["2026-03-02"]["handoffs"]) == (2, 2, 1)

    costs = {(row["day"], row["model"]): row for row in body["costs"]}
    assert set(costs) == {("2026-03-01", "gpt-4o-mini"), ("2026-03-02", "gpt-4o"),
                          ("2026-03-02", "gpt-4o-mini")}
    mini = costs[("2026-03-01", "gpt-4o-mini")]
    assert (mini["answers"], mini["promptTokens"], mini["completionTokens"]) == (2, 1500, 100)
    assert mini["costUsd"] == pytest.approx((1500 * 0.15 + 100 * 0.60) / 1e6)
    assert costs[("2026-03-02", "gpt-4o")]["costUsd"] == pytest.approx(
        (2000 * 2.5 + 300 * 10) / 1e6)

    today = body["today"]
    assert (today["tokens"], today["budgetTokens"]) == (330, 1000)
    assert today["budgetShare"] == pytest.approx(0.33)
    assert today["costUsd"] == pytest.approx((300 * 0.15 + 30 * 0.60) / 1e6)

    top = [(group["key"], group["label"], group["questions"]) for group in body["topQuestions"]]
    assert top == [("source:shipping.md", "Shipping", 3),
                   ("words:return policy", "Return policy?", 2),
                   ("words:hello", "hello", 1), ("words:thanks", "thanks", 1)]


async def test_every_table_downloads_as_csv(seeded: tuple[RunningApp, int, int],
                                            database_url: str) -> None:
    app, site_id, _ = seeded
    owner = await make_staff(database_url, [site_id], role="owner", name="Olga")
    http, _ = await signed_in(app, owner)
    async with aclosing(http):
        daily = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                               params={**PERIOD, "table": "daily"})
        costs = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                               params={**PERIOD, "table": "costs"})
        top = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                             params={**PERIOD, "table": "top_questions"})
        summary = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                                 params={**PERIOD, "table": "summary"})
        unknown = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                                 params={**PERIOD, "table": "secrets"})
    assert daily.headers["content-type"] == "text/csv; charset=utf-8"
    assert daily.headers["content-disposition"].startswith("attachment; filename=")
    rows = list(csv.DictReader(io.StringIO(daily.text)))
    assert [(row["day"], row["questions"], row["answered_by_person"]) for row in rows] == [
        ("2026-03-01", "5", "1"), ("2026-03-02", "2", "0")]
    cost_rows = list(csv.DictReader(io.StringIO(costs.text)))
    assert [(row["model"], row["prompt_tokens"]) for row in cost_rows] == [
        ("gpt-4o-mini", "1500"), ("gpt-4o", "2000"), ("gpt-4o-mini", "100")]
    top_rows = list(csv.DictReader(io.StringIO(top.text)))
    assert (top_rows[0]["label"], top_rows[0]["questions"]) == ("Shipping", "3")
    metrics = dict(csv.reader(io.StringIO(summary.text)))
    assert (metrics["questions"], metrics["handoffs"]) == ("7", "2")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "bad_request"


async def test_a_shoppers_formula_is_text_in_the_csv(seeded: tuple[RunningApp, int, int],
                                                     database_url: str) -> None:
    app, site_id, _ = seeded
    with psycopg.connect(database_url, autocommit=True) as conn:
        s = Seeder(conn, site_id)
        s.turn(s.conversation(at(2, 20)), at(2, 20), '=HYPERLINK("http://evil.example")', None)
    owner = await make_staff(database_url, [site_id], role="owner", name="Olga")
    http, _ = await signed_in(app, owner)
    async with aclosing(http):
        top = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                             params={**PERIOD, "table": "top_questions"})
    examples = [row["example_question"] for row in csv.DictReader(io.StringIO(top.text))]
    assert "'=HYPERLINK(\"http://evil.example\")" in examples


async def test_only_the_sites_owners_see_its_analytics(
        seeded: tuple[RunningApp, int, int], database_url: str) -> None:
    app, site_id, other_id = seeded
    agent = await make_staff(database_url, [site_id], role="agent", name="Ada")
    owner = await make_staff(database_url, [site_id], role="owner", name="Olga")
    http, _ = await signed_in(app, agent)
    async with aclosing(http):
        as_agent = await http.get(f"/admin/api/sites/{site_id}/analytics")
        page = await http.get("/admin/analytics", params={"site": site_id})
    assert as_agent.status_code == 403
    assert as_agent.json()["error"]["code"] == "owners_only"
    assert page.status_code == 403
    http, _ = await signed_in(app, owner)
    async with aclosing(http):
        other = await http.get(f"/admin/api/sites/{other_id}/analytics")
        other_csv = await http.get(f"/admin/api/sites/{other_id}/analytics.csv")
        bad_dates = await http.get(f"/admin/api/sites/{site_id}/analytics",
                                   params={"from": "2026-03-05", "to": "2026-03-01"})
        not_a_date = await http.get(f"/admin/api/sites/{site_id}/analytics",
                                    params={"from": "yesterday"})
        too_long = await http.get(f"/admin/api/sites/{site_id}/analytics",
                                  params={"from": "2020-01-01", "to": "2026-01-01"})
    # Another site's numbers: exactly like a site that does not exist.
    assert other.status_code == 404 and other_csv.status_code == 404
    for refused in (bad_dates, not_a_date, too_long):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "bad_request"
    async with app.client() as anonymous:
        assert (await anonymous.get(f"/admin/api/sites/{site_id}/analytics")).status_code == 401
        page = await anonymous.get("/admin/analytics")
        assert page.status_code == 303 and page.headers["location"] == "/admin/login"


async def test_the_database_records_when_a_person_was_asked_for_and_when_one_joined(
        chat_app: RunningApp, database_url: str, query: Callable[..., list[tuple[Any, ...]]]
) -> None:
    conversation_id = uuid.uuid4()
    query("INSERT INTO conversations (id) VALUES (%s)", conversation_id)
    owner = await make_staff(database_url, [1], role="owner", name="Olga")
    http, csrf = await signed_in(chat_app, owner)
    async with aclosing(http), chat_app.client() as shopper:
        handoff = await shopper.post(f"/chat/conversations/{conversation_id}/handoff")
        assert handoff.status_code == 200, handoff.text
        takeover = await http.post(f"/admin/api/conversations/{conversation_id}/takeover",
                                   headers={"X-CSRF-Token": csrf})
        assert takeover.status_code == 200, takeover.text
        await http.post(f"/admin/api/conversations/{conversation_id}/handback",
                        headers={"X-CSRF-Token": csrf})
        await shopper.post(f"/chat/conversations/{conversation_id}/handoff")
    [(asked, joined, waiting_since)] = query(
        "SELECT handoff_at, agent_joined_at, waiting_since FROM conversations WHERE id = %s",
        conversation_id)
    assert asked is not None and joined is not None and asked <= joined
    # A second request for a person keeps the first time: the wait is measured from it.
    assert waiting_since > asked
    assert joined - asked < timedelta(minutes=1)


async def test_rolled_up_days_say_what_counting_the_messages_says(
        seeded: tuple[RunningApp, int, int], database_url: str,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    _, site_id, _ = seeded
    period = Period(date(2026, 3, 1), date(2026, 3, 2))
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        analytics = Analytics(pool, parse_prices(PRICES))
        # On 2 March both days are recent, counted live; long after, both are rolled up.
        live = await analytics.report(site_id, period, 1000, today=date(2026, 3, 2))
        rolled = await analytics.report(site_id, period, 1000, today=date(2026, 9, 1))
        again = await analytics.report(site_id, period, 1000, today=date(2026, 9, 1))
    finally:
        await pool.close()
    assert (rolled.days, rolled.summary, rolled.costs, rolled.top_questions) == (
        live.days, live.summary, live.costs, live.top_questions)
    assert again == rolled
    assert query("SELECT day FROM analytics_days WHERE site_id = %s AND day < '2026-04-01'"
                 " ORDER BY day", site_id) == [
        (date(2026, 3, 1),), (date(2026, 3, 2),)]


# The feedback columns exactly as the feedback migration adds them (sql/0010, another branch);
# in a scratch database of this test's own, so the shared test database keeps its schema.
FEEDBACK_COLUMNS = [
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS feedback_rating text"
    " CHECK (feedback_rating IN ('up', 'down'))",
    "ALTER TABLE conversations ADD COLUMN IF NOT EXISTS csat text CHECK (csat IN ('yes', 'no'))",
]


@pytest.fixture
def scratch_database(admin_database_url: str) -> Iterator[str]:
    name = f"chat_test_feedback_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_database_url, dbname=name)
    try:
        asyncio.run(db.migrate(url))
        yield url
    finally:
        with psycopg.connect(admin_database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_votes_and_csat_count_once_the_feedback_columns_exist(
        scratch_database: str) -> None:
    url = scratch_database
    site_id, _ = await make_site(url, "Voted")
    other_id, _ = await make_site(url, "Other")
    seed(url, site_id, other_id)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in FEEDBACK_COLUMNS:
            conn.execute(statement)
        for when, rating in ((at(1, 10), "up"), (at(1, 10, 1), "down"), (at(1, 11, 2), "up"),
                             (at(2, 9), "up")):
            conn.execute("UPDATE messages SET feedback_rating = %s WHERE site_id = %s"
                         " AND sender = 'ai' AND created_at = %s", (rating, site_id, when))
        for created, answer in ((at(1, 10), "yes"), (at(1, 11), "no"), (at(2, 9), "yes")):
            conn.execute("UPDATE conversations SET csat = %s WHERE site_id = %s"
                         " AND created_at = %s", (answer, site_id, created))
    period = Period(date(2026, 3, 1), date(2026, 3, 2))
    pool = db.create_pool(url, 2)
    await pool.open(wait=True)
    try:
        analytics = Analytics(pool, parse_prices(PRICES))
        live = await analytics.report(site_id, period, 1000, today=date(2026, 3, 2))
        rolled = await analytics.report(site_id, period, 1000, today=date(2026, 9, 1))
    finally:
        await pool.close()
    for report in (live, rolled):
        assert report.feedback_stored
        assert (report.summary.thumbs_up, report.summary.thumbs_down) == (3, 1)
        assert report.summary.thumbs_up_rate == pytest.approx(0.75)
        assert report.summary.csat_rate == pytest.approx(2 / 3)
        shipping = report.top_questions[0]
        assert (shipping.label, shipping.questions, shipping.votes) == ("Shipping", 3, 3)
        assert shipping.thumbs_down_rate == pytest.approx(1 / 3)
    assert rolled.days == live.days


async def test_questions_by_language_say_how_many_were_answered_in_the_shoppers_language(
        database_url: str, start_app: Callable[..., Any]) -> None:
    site_id, _ = await make_site(database_url, f"Languages{uuid.uuid4().hex[:6]}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        s = Seeder(conn, site_id)
        c = s.conversation(at(1, 10))
        # German: two answered in German (the German articles, or a model), one from the
        # English articles; one forwarded to a person. Hindi: from English. English: in English.
        for minute, answer_language in ((0, "de"), (1, "de"), (2, "en"), (3, None)):
            s.turn(c, at(1, 10, minute), "Wie lange dauert der Versand?",
                   None if answer_language is None else {"model": None})
            conn.execute("UPDATE messages SET language = CASE sender WHEN 'user' THEN 'de'"
                         " ELSE %s END WHERE conversation_id = %s AND created_at = %s",
                         (answer_language, c, at(1, 10, minute)))
        s.turn(c, at(2, 9), "Kya aap India mein deliver karte hain?", {"model": None})
        conn.execute("UPDATE messages SET language = CASE sender WHEN 'user' THEN 'hi'"
                     " ELSE 'en' END WHERE conversation_id = %s AND created_at = %s",
                     (c, at(2, 9)))
        s.turn(c, at(2, 9, 1), "Where is my order?", {"model": "gpt-4o-mini"})
        conn.execute("UPDATE messages SET language = 'en' WHERE conversation_id = %s"
                     " AND created_at = %s", (c, at(2, 9, 1)))
        s.turn(c, at(2, 9, 2), "asked before languages were detected", {"model": None})
    expected = [("de", 4, 3, 2, 1), ("en", 1, 1, 1, 0), ("hi", 1, 1, 0, 1),
                ("unknown", 1, 0, 0, 0)]

    period = Period(date(2026, 3, 1), date(2026, 3, 2))
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        analytics = Analytics(pool, parse_prices(PRICES))
        live = await analytics.report(site_id, period, None, today=date(2026, 3, 2))
        rolled = await analytics.report(site_id, period, None, today=date(2026, 9, 1))
    finally:
        await pool.close()
    for report in (live, rolled):
        assert [(r.language, r.questions, r.answered, r.in_language, r.in_english)
                for r in report.languages] == expected
    german = rolled.languages[0]
    assert german.share(german.in_language) == pytest.approx(2 / 3)

    app: RunningApp = await start_app()
    owner = await make_staff(database_url, [site_id], role="owner", name="Lena")
    http, _ = await signed_in(app, owner)
    async with aclosing(http):
        body = (await http.get(f"/admin/api/sites/{site_id}/analytics", params=PERIOD)).json()
        table = await http.get(f"/admin/api/sites/{site_id}/analytics.csv",
                               params={**PERIOD, "table": "languages"})
        page = await http.get("/admin/analytics", params={**PERIOD, "site": site_id})
    assert body["languages"][0] == {
        "language": "de", "questions": 4, "answered": 3, "inLanguage": 2, "inEnglish": 1,
        "inLanguageShare": pytest.approx(2 / 3), "inEnglishShare": pytest.approx(1 / 3)}
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [(r["language"], r["questions"], r["in_their_language"], r["in_english_instead"])
            for r in rows] == [(lang, str(q), str(i), str(e)) for lang, q, _, i, e in expected]
    assert rows[0]["share_in_their_language"] == "0.666667"
    assert "Questions by language" in page.text and "67% (2)" in page.text


async def test_an_answer_keeps_the_language_it_is_written_in(
        start_app: Callable[..., Any], client: Any,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    def answer_language(events: list[Any]) -> Any:
        answer_id = next(e.data for e in events if e.event == "meta")["messageId"]
        return query("SELECT language FROM messages WHERE id = %s", answer_id)[0][0]

    app = await start_app(openai_api_key="", openai_base_url="")
    async with app.client() as http:
        german = await stream_chat(http, {"message": "Wie lange habe ich Zeit für eine Rücksendung?"})
        hindi = await stream_chat(http, {"message": "मेरा रिफंड कब आएगा?"})  # no Hindi articles
    assert answer_language(german) == "de"
    assert answer_language(hindi) == "en"  # from the English articles, with the note
    # With a model, the prompt asks for the shopper's language.
    assert answer_language(await stream_chat(client, {"message": "मेरा रिफंड कब आएगा?"})) == "hi"


async def test_the_background_roll_up_covers_a_years_view_before_anyone_opens_it(
        database_url: str, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    site_id, _ = await make_site(database_url, f"Yearly{uuid.uuid4().hex[:6]}")
    long_ago = datetime.now(UTC) - timedelta(days=300)
    with psycopg.connect(database_url, autocommit=True) as conn:
        s = Seeder(conn, site_id)
        s.turn(s.conversation(long_ago), long_ago, "Where is my order?", {"model": None})
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    await ensure_default_site(pool, load_profile(DEFAULT_PROFILE_PATH), "", ())
    sites = SiteDirectory(SiteStore(pool))
    await sites.load()
    rounds = asyncio.create_task(roll_up_every(Analytics(pool, parse_prices(PRICES)), sites,
                                               every_s=0.2))
    try:
        for _ in range(600):  # a minute at most
            if query("SELECT 1 FROM analytics_days WHERE site_id = %s AND day = %s", site_id,
                     long_ago.date()):
                break
            await asyncio.sleep(0.1)
    finally:
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)
        await pool.close()
    assert query("SELECT questions FROM analytics_days WHERE site_id = %s AND day = %s",
                 site_id, long_ago.date()) == [(1,)]
