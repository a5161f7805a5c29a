"""Migrations: applied in order, once, even when instances start together."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from app import db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_database(admin_database_url: str) -> Iterator[str]:
    name = f"chat_migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(admin_database_url, dbname=name)
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def recorded(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


async def test_instances_starting_together_apply_each_migration_once(empty_database: str) -> None:
    runs = await asyncio.gather(*[db.migrate(empty_database) for _ in range(4)])
    every_file = [p.name for p in db.migration_files()]
    applied = sorted(name for run in runs for name in run)
    assert applied == every_file
    assert recorded(empty_database) == every_file
    assert await db.migrate(empty_database) == []


def test_migrate_command_applies_then_has_nothing_left(empty_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database}

    def migrate() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first, second = migrate(), migrate()
    outputs = [proc.communicate(timeout=60) for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    counts = sorted(out.split()[1] for out, _ in outputs)
    assert counts == ["0", str(len(db.migration_files()))]
    assert recorded(empty_database) == [p.name for p in db.migration_files()]


def test_a_failing_migration_leaves_nothing_half_applied(empty_database: str,
                                                         tmp_path: Path) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT nonsense;")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        asyncio.run(db.migrate(empty_database, tmp_path))
    assert recorded(empty_database) == ["0001_good.sql"]
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)


@pytest.mark.parametrize("named", [None, "chat-replica-2"], ids=["default", "from-the-url"])
async def test_the_pool_names_its_connections_for_pg_stat_activity(
        database_url: str, named: str | None) -> None:
    url = database_url if named is None else make_conninfo(database_url, application_name=named)
    pool = db.create_pool(url, 2)
    await pool.open(wait=True, timeout=30)
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            row = await cur.fetchone()
    finally:
        await pool.close()
    assert row == (named or db.APPLICATION_NAME,)
    assert db.APPLICATION_NAME == "support-chat"
