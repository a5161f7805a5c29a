"""What the analytics page costs on a large history: 1,000,000 messages in a scratch database.

Generates the history in SQL (generate_series: 250,000 conversations of two turns, over the
last 365 days, 80 % of them on one big site), then times each query of app/analytics.py and the
whole page (queries and HTML) for the last 30 days and for the whole year, and the spend alerts'
check. It first does what every instance does in the background after its start: roll up the
settled days of the last MAX_DAYS (timed, once). "first" is then the first view; median and
worst are of the 7 views after it. Prints figures; asserts nothing (a
timed assertion in a test is flaky).

    .venv/bin/python bench/analytics_bench.py [--conversations 250000] [--keep]

DATABASE_URL (default: the local server's postgres database) is only used to create and drop
the scratch database `analytics_bench_<random>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import db  # noqa: E402
from app.analytics import MAX_DAYS, Analytics, Period, today_utc  # noqa: E402
from app.analytics_page import render  # noqa: E402
from app.pricing import parse_prices  # noqa: E402
from app.sites import SiteDirectory, SiteStore, ensure_default_site  # noqa: E402
from app.spend_alerts import SpendAlerts  # noqa: E402
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile  # noqa: E402

RUNS = 7

GENERATE = [
    "INSERT INTO sites (id, name, daily_token_budget) VALUES (2, 'Second store', 2000000),"
    " (3, 'Third store', NULL)",
    # Conversations: 80 % on site 1; one in six asks for a person, most of those get one.
    "INSERT INTO conversations (id, site_id, created_at, handoff_at, agent_joined_at)"
    " SELECT gen_random_uuid(), site, created, handoff,"
    "   CASE WHEN handoff IS NOT NULL AND random() < 0.8"
    "   THEN handoff + random() * interval '20 minutes' END"
    " FROM (SELECT CASE WHEN n %% 10 < 8 THEN 1 WHEN n %% 10 = 8 THEN 2 ELSE 3 END AS site,"
    "   now() - random() * interval '365 days' AS created, random() AS r"
    "   FROM generate_series(1, %(conversations)s) AS n) g,"
    " LATERAL (SELECT CASE WHEN g.r < 0.16 THEN g.created + interval '2 minutes' END"
    "   AS handoff) h",
    # Two turns each: a question and its answer share a created_at, as Turn.save writes them.
    "INSERT INTO messages (id, conversation_id, site_id, sender, text, status, model,"
    " prompt_tokens, completion_tokens, first_token_ms, fallback, sources, created_at)"
    " SELECT gen_random_uuid(), c.id, c.site_id, s.sender,"
    "   CASE WHEN s.sender = 'user' THEN (ARRAY['Where is my order?', 'where is my order',"
    "     'How long does shipping take?', 'Do you ship to Spain?', 'What is your return policy?',"
    "     'Can I return a gift?', 'How do I track my parcel?', 'Do you have this in blue?',"
    "     'Is the silk scarf washable?', 'hello'])[1 + (abs(hashtext(c.id::text || t)) %% 10)]"
    "   || CASE WHEN random() < 0.3 THEN ' ' || (random() * 1000)::int ELSE '' END"
    "   ELSE 'An answer of the assistant, a few sentences long, as answers are.' END,"
    "   CASE WHEN s.sender = 'user' THEN 'complete' ELSE (ARRAY['complete', 'complete',"
    "     'complete', 'complete', 'complete', 'complete', 'complete', 'complete', 'complete',"
    "     'complete', 'complete', 'complete', 'complete', 'complete', 'complete', 'complete',"
    "     'complete', 'error', 'cancelled', 'interrupted'])[1 + (random() * 19)::int] END,"
    "   CASE WHEN s.sender = 'ai' THEN CASE WHEN random() < 0.03 THEN NULL"
    "     WHEN random() < 0.2 THEN 'gpt-4o' ELSE 'gpt-4o-mini' END END,"
    "   CASE WHEN s.sender = 'ai' THEN 800 + (random() * 1200)::int END,"
    "   CASE WHEN s.sender = 'ai' THEN 40 + (random() * 300)::int END,"
    "   CASE WHEN s.sender = 'ai' THEN 150 + (random() * 1500)::int END,"
    "   s.sender = 'ai' AND random() < 0.05,"
    "   CASE WHEN s.sender = 'ai' AND random() < 0.6 THEN jsonb_build_array(jsonb_build_object("
    "     'title', 'Article ' || (abs(hashtext(c.id::text)) %% 20),"
    "     'path', 'article-' || (abs(hashtext(c.id::text)) %% 20) || '.md')) ELSE '[]' END,"
    "   c.created_at + t * interval '1 minute'"
    " FROM conversations c CROSS JOIN generate_series(0, 1) AS t"
    " CROSS JOIN (VALUES ('user'), ('ai')) AS s (sender)",
]


async def timed(run: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """The first run (which rolls up the settled days it needs), then the median and worst of
    RUNS more, in milliseconds."""
    started = time.perf_counter()
    await run()
    first = (time.perf_counter() - started) * 1000
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    return first, statistics.median(times), max(times)


async def bench(url: str, conversations: int) -> None:
    started = time.perf_counter()
    await db.migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in GENERATE:
            conn.execute(statement, {"conversations": conversations})  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE conversations")
        conn.execute("VACUUM ANALYZE messages")
        count = conn.execute("SELECT count(*) FROM messages").fetchone()
        site_one = conn.execute("SELECT count(*) FROM messages WHERE site_id = 1").fetchone()
    assert count is not None and site_one is not None
    print(f"generated {count[0]:,} messages ({site_one[0]:,} on site 1) over 365 days"
          f" in {time.perf_counter() - started:.1f} s")

    pool = db.create_pool(url, 4)
    await pool.open(wait=True)
    try:
        await ensure_default_site(pool, load_profile(DEFAULT_PROFILE_PATH), "", ())
        analytics = Analytics(pool, parse_prices("gpt-4o-mini=0.15/0.60,gpt-4o=2.5/10"))
        today = today_utc()
        # What every instance does in the background after its start (roll_up_every): the
        # settled days of the longest period the page shows, so no view's first pays for it.
        started = time.perf_counter()
        await analytics.roll_up_recent(1, days=MAX_DAYS)
        print(f"background roll-up of site 1's last {MAX_DAYS} days (once, after a deploy):"
              f" {time.perf_counter() - started:.1f} s")
        print(f"\n{'query (site 1)':<34}{'period':>8}{'first ms':>10}{'median ms':>11}"
              f"{'worst ms':>10}")
        for days in (30, 365):
            period = Period(today - timedelta(days=days - 1), today)
            cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("per day + summary (days)", lambda p=period: analytics.days(1, p)),
                ("tokens and cost (costs)", lambda p=period: analytics.costs(1, p)),
                ("today's spend (spend)", lambda: analytics.spend(1, today, 1_000_000)),
                ("top questions", lambda p=period: analytics.top_questions(1, p)),
                ("questions by language", lambda p=period: analytics.languages(1, p)),
                ("the whole page (report + HTML)",
                 lambda p=period: page(analytics, p)),
            ]
            for name, run in cases:
                first, median, worst = await timed(run)
                print(f"{name:<34}{days:>6} d{first:>10.1f}{median:>11.1f}{worst:>10.1f}")
        sites = SiteDirectory(SiteStore(pool))
        await sites.load()
        alerts = SpendAlerts(pool, sites, [], thresholds=(50, 80, 100), jump=3,
                             default_budget=0, prices=parse_prices("gpt-4o-mini=0.15/0.60"))
        first, median, worst = await timed(lambda: alerts.spend([1, 2, 3], today))
        print(f"{'spend alert check (3 sites)':<34}{'8':>6} d{first:>10.1f}{median:>11.1f}"
              f"{worst:>10.1f}")
    finally:
        await pool.close()


async def page(analytics: Analytics, period: Period) -> str:
    report = await analytics.report(1, period, 1_000_000)
    return render(report, [(1, "Default")], "Default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=250_000,
                        help="conversations to generate (4 messages each)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"analytics_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        asyncio.run(bench(make_conninfo(admin, dbname=name), args.conversations))
    finally:
        if args.keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
