"""The connection pool and the migration runner over sql/.

Migrations are plain SQL files `sql/NNNN_name.sql`, applied in order, each in its own transaction,
recorded in `schema_migrations`. A session-level advisory lock serialises instances that start
together, so each file runs exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .errors import StoreUnavailable

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# An arbitrary constant shared by every instance of this service: the advisory lock key.
_MIGRATION_LOCK_KEY = 7_350_200_001

# How long a request waits for a pooled connection before answering 503, and how long a
# single statement may run: a frozen database must cost a shopper seconds, not a hang.
POOL_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_MS = 5000
# A frozen server (SIGSTOP, a hung VM) or a dead network path never answers, and its kernel (or
# the path) never says so: TCP keeps the connection, and statement_timeout runs in the server.
# So the client bounds the wait itself: a connection check gets this long...
CHECK_DEADLINE_S = 2.0
# ...and a request may hold a connection this long, a little more than statement_timeout so
# that a merely slow statement ends with the server's own error first.
HOLD_DEADLINE_S = STATEMENT_TIMEOUT_MS / 1000 + 1.0


# Start-up retries: the first wait, and the longest, between attempts to reach the database.
STARTUP_FIRST_DELAY_S = 0.5
STARTUP_MAX_DELAY_S = 10.0
# Server replies that mean "not yet": the server is up but busy starting, stopping or full.
# Any other reply from the server (a wrong password, no such database) will not fix itself.
_NOT_YET = ("the database system is starting up", "the database system is shutting down",
            "the database system is in recovery mode", "too many clients",
            "remaining connection slots")


def database_label(conninfo: str) -> str:
    """host:port/dbname, for logs: never the password."""
    params = conninfo_to_dict(conninfo)
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _worth_waiting_for(exc: psycopg.OperationalError) -> bool:
    reason = str(exc)
    # psycopg sets no sqlstate on a failed connection; the server's own refusals say FATAL.
    return "FATAL:" not in reason or any(phrase in reason for phrase in _NOT_YET)


async def wait_until_reachable(conninfo: str, timeout_s: float) -> None:
    """Return once PostgreSQL accepts a connection, retrying with backoff for up to `timeout_s`.

    A database that is still starting (or not resolvable yet, as in a compose stack coming up)
    is waited for and logged, instead of the service crashing and being restarted in a loop.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = STARTUP_FIRST_DELAY_S
    target = database_label(conninfo)
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=5)
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            remaining = deadline - loop.time()
            if not _worth_waiting_for(exc) or remaining <= 0:
                log.error("cannot reach the database at %s after %d attempts: %s",
                          target, attempt, reason)
                raise
            wait_s = min(delay, remaining)
            log.warning("waiting for the database at %s (attempt %d, next in %.1fs): %s",
                        target, attempt, wait_s, reason)
            await asyncio.sleep(wait_s)
            delay = min(delay * 2, STARTUP_MAX_DELAY_S)
            continue
        await conn.close()
        if attempt > 1:
            log.info("the database at %s is reachable (attempt %d)", target, attempt)
        return


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
                log.debug("applied migration %s", path.name)
                applied_now.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    # One line however many there are: a new database's first start stays a few lines long.
    if applied_now:
        log.info("applied %d migration%s: %s", len(applied_now),
                 "" if len(applied_now) == 1 else "s", ", ".join(applied_now))
    return applied_now


def _cut_off(conn: psycopg.AsyncConnection, waiting_for: str) -> None:
    """Shut down the socket of a connection whose server does not answer.

    libpq then reads end-of-file at once, psycopg raises OperationalError and marks the
    connection broken, and the pool discards it. Cancelling the waiting task instead would make
    psycopg first ask the unresponsive server to cancel the query, for up to ten seconds.
    """
    if conn.closed:
        return
    log.warning("the database did not answer a %s in time: dropping the connection", waiting_for)
    try:
        # A duplicate of the descriptor: shutdown() acts on the shared socket, close() only on
        # the duplicate, so psycopg's descriptor stays valid (and cannot be reused under it).
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.OperationalError):
        pass  # the connection is already lost: psycopg will say so to whoever waits on it


async def _within(seconds: float, conn: psycopg.AsyncConnection, waiting_for: str,
                  work: Callable[[psycopg.AsyncConnection], Awaitable[None]]) -> None:
    watchdog = asyncio.get_running_loop().call_later(seconds, _cut_off, conn, waiting_for)
    try:
        await work(conn)
    finally:
        watchdog.cancel()


async def _set_statement_timeout(conn: psycopg.AsyncConnection) -> None:
    # A statement that runs longer than this is a stuck database, not a slow query: fail it so
    # the request can answer 503 instead of holding the connection.
    await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    await conn.commit()


async def _configure(conn: psycopg.AsyncConnection) -> None:
    await _within(CHECK_DEADLINE_S, conn, "new connection", _set_statement_timeout)


def _heard_from_server(conn: psycopg.AsyncConnection) -> bool:
    """True if an idle connection has bytes to read, found without a round trip (one poll).

    Between transactions the server has nothing to say unless the connection is ending: a
    restart, a crash, a terminated backend or a reset all leave the socket readable (an error
    message, then end-of-file). The rare exception (a NOTICE, a changed parameter) only costs
    a round trip it did not need.
    """
    try:
        poller = select.poll()  # not select(): descriptors past 1024 under thousands of streams
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.OperationalError):
        return True


async def _check(conn: psycopg.AsyncConnection) -> None:
    # A healthy idle connection needs no round trip: three checkouts per answer made the check
    # the database's largest fixed cost (bench/RESULTS.md, short answers). A connection the
    # server closed is still found here, so a PostgreSQL restart costs no request a
    # "connection closed" error; one that looks unwell gets the real check, bounded so that a
    # frozen server costs seconds. A server frozen with healthy-looking connections is caught
    # by the hold deadline of BoundedPool instead (HOLD_DEADLINE_S).
    if (not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
            and not _heard_from_server(conn)):
        return
    await _within(CHECK_DEADLINE_S, conn, "connection check", AsyncConnectionPool.check_connection)


class BoundedPool(AsyncConnectionPool):
    """A pool whose connections are cut off when a request holds one past HOLD_DEADLINE_S
    waiting on a server that does not answer (whoever uses the pool: chat, knowledge, readyz)."""

    @asynccontextmanager
    async def connection(self, timeout: float | None = None  # noqa: ASYNC109 (the pool's API)
                         ) -> AsyncIterator[psycopg.AsyncConnection]:
        watchdog: asyncio.TimerHandle | None = None
        try:
            async with super().connection(timeout) as conn:
                watchdog = asyncio.get_running_loop().call_later(
                    HOLD_DEADLINE_S, _cut_off, conn, "statement")
                yield conn
        finally:
            # Only after the pool's exit, which commits: the commit is bounded too.
            if watchdog is not None:
                watchdog.cancel()


# The application_name of the service's connections, so that pg_stat_activity (and the
# server's logs with %a) tell them apart from other clients'. A DATABASE_URL that names one
# (`?application_name=...`) keeps its own.
APPLICATION_NAME = "support-chat"


def application_name(conninfo: str) -> str:
    """The name the service's connections to `conninfo` carry in pg_stat_activity."""
    return str(conninfo_to_dict(conninfo).get("application_name") or APPLICATION_NAME)


def create_pool(conninfo: str, max_size: int) -> AsyncConnectionPool:
    """A pool that is opened in the lifespan, never here."""
    return BoundedPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=POOL_TIMEOUT_S,
        check=_check,
        configure=_configure,
        kwargs={"connect_timeout": 3, "autocommit": False,
                "application_name": application_name(conninfo)},
        name="chat",
    )


@asynccontextmanager
async def autocommit(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    """Statements that each commit alone: no BEGIN and COMMIT round trips around them, which
    were most of an answer's database round trips (bench/analysis.md, short answers). The
    pool's connections are in transactions for everyone else, so the mode is put back."""
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)
        # Otherwise the connection is broken (or mid-statement), and the pool discards it.


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection in a transaction; database trouble becomes StoreUnavailable."""
    try:
        async with pool.connection() as conn:
            yield conn
    except (PoolTimeout, psycopg.OperationalError) as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise StoreUnavailable() from exc
