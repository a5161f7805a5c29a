"""The connection pool and the migration runner over sql/.

Migrations are plain SQL files `sql/NNNN_name.sql`, applied in order, each in its own transaction,
recorded in `schema_migrations`. A session-level advisory lock serialises instances that start
together, so each file runs exactly once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# An arbitrary constant shared by every instance of this service: the advisory lock key.
_MIGRATION_LOCK_KEY = 7_350_200_001

# How long a request waits for a pooled connection before answering 503, and how long a
# single statement may run: a frozen database must cost a shopper seconds, not a hang.
POOL_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_MS = 5000


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    files = [p for p in sql_dir.iterdir() if _MIGRATION_NAME.match(p.name)]
    return sorted(files, key=lambda p: p.name)


async def migrate(conninfo: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the migrations not yet recorded; return the names applied by this call."""
    applied_now: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            for path in migration_files(sql_dir):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute(
                        "INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,)
                    )
                log.info("applied migration %s", path.name)
                applied_now.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # A statement that runs longer than this is a stuck database, not a slow query: fail it so
    # the request can answer 503 instead of holding the connection.
    await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    await conn.commit()


def create_pool(conninfo: str, max_size: int) -> AsyncConnectionPool:
    """A pool that is opened in the lifespan, never here."""
    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=POOL_TIMEOUT_S,
        # check_connection costs one round trip per checkout, and in exchange a PostgreSQL
        # restart costs no request a "connection closed" error.
        check=AsyncConnectionPool.check_connection,
        configure=_configure,
        kwargs={"connect_timeout": 3, "autocommit": False},
        name="chat",
    )


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection in a transaction; database trouble becomes a 503."""
    try:
        async with pool.connection() as conn:
            yield conn
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from exc
