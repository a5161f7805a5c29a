"""The knowledge-gaps list on a large history: prints how long it takes, it asserts nothing.

    .venv/bin/python bench/gaps.py [MESSAGES]   (default 1,000,000; DATABASE_URL: the server)

Creates a scratch database, migrates it, fills it with MESSAGES messages (half questions, half
answers, over 30 days; one answer in 10 not found, one in 50 with a thumbs down, one question in
100 handed to a person), then times `KnowledgeGaps.groups` for 30 days, a few times.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from app import db  # noqa: E402
from app.knowledge_gaps import KnowledgeGaps  # noqa: E402

FILL_SQL = """
INSERT INTO conversations (id, site_id, created_at)
SELECT md5('c' || n)::uuid, 1, now() - (n % 43200) * interval '1 minute'
FROM generate_series(1, {conversations}) AS n;
INSERT INTO messages (id, conversation_id, site_id, sender, text, status, created_at, handoff_at)
SELECT md5('q' || n)::uuid, md5('c' || n)::uuid, 1, 'user',
       'question number ' || (n % 5000) || ' about topic ' || (n % 97), 'complete',
       now() - (n % 43200) * interval '1 minute',
       CASE WHEN n % 100 = 0 THEN now() END
FROM generate_series(1, {conversations}) AS n;
INSERT INTO messages (id, conversation_id, site_id, sender, text, status, created_at, sources,
                      feedback_rating)
SELECT md5('a' || n)::uuid, md5('c' || n)::uuid, 1, 'ai', 'an answer', 'complete',
       now() - (n % 43200) * interval '1 minute',
       CASE WHEN n % 10 = 0 THEN '[]'::jsonb
            ELSE '[{{"title": "Shipping", "path": "shipping.md"}}]'::jsonb END,
       CASE WHEN n % 50 = 0 THEN 'down' END
FROM generate_series(1, {conversations}) AS n;
ANALYZE conversations; ANALYZE messages;
"""


async def main(messages: int) -> None:
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"bench_gaps_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        await db.migrate(url)
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            # A whole number formatted in: a script of several statements takes no parameters.
            for statement in FILL_SQL.format(conversations=int(messages) // 2).split(";"):
                if statement.strip():
                    conn.execute(statement)  # type: ignore[call-overload]
        print(f"filled {messages:,} messages in {time.perf_counter() - started:.1f} s")
        pool = db.create_pool(url, 2)
        await pool.open(wait=True)
        gaps = KnowledgeGaps(pool)
        for attempt in range(1, 4):
            started = time.perf_counter()
            groups = await gaps.groups(1, 30, 50)
            print(f"gaps list, 30 days, run {attempt}: {(time.perf_counter() - started) * 1000:.0f}"
                  f" ms ({len(groups)} groups)")
        await pool.close()
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
