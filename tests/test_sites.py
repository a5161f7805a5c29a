"""Sites: the migration from a database made before sites, the default site that mirrors the
settings, the `sites` CLI (run as a real process), the in-memory directory and its
invalidation across instances, and knowledge that never crosses sites."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from app import db
from app.knowledge import KnowledgeChunk, sync_knowledge
from app.knowledge_search import KnowledgeSearch, SiteSearches
from app.sites import (
    DEFAULT_SITE_ID,
    SITE_KEY_PATTERN,
    SiteDirectory,
    SiteError,
    SiteNotFound,
    SiteStore,
    check_origin,
    ensure_default_site,
)
from app.store_profile import (
    DEFAULT_PROFILE_PATH,
    ProfileError,
    load_profile,
    profile_document,
    profile_from_document,
)

ROOT = Path(__file__).resolve().parent.parent
SITES_MIGRATION = "0004_sites.sql"

NORTHWIND_PROFILE = """
name = "Northwind Ceramics"
description = "a small studio selling stoneware mugs and bowls"
tone = "Friendly and brief."
[shipping]
regions = ["Canada"]
delivery_time = "3-4 business days"
[returns]
window_days = 30
[support]
hours = "Monday-Saturday 10am-4pm"
time_zone = "America/Toronto"
[contact]
email = "hello@northwind.example"
"""

NORTHWIND_ARTICLE = """# Glaze safety

## Are the mugs dishwasher safe

Every Northwind mug is glazed with a food-safe glaze and is dishwasher safe on the top rack.
"""


@pytest.fixture
def empty_database(admin_database_url: str) -> Iterator[str]:
    name = f"chat_sites_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(admin_database_url, dbname=name)
    with psycopg.connect(admin_database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_database(empty_database: str) -> str:
    asyncio.run(db.migrate(empty_database))
    return empty_database


@pytest.fixture
async def pool(migrated_database: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = db.create_pool(migrated_database, 4)
    await pool.open(wait=True)
    await ensure_default_site(pool, load_profile(DEFAULT_PROFILE_PATH), "knowledge", [])
    yield pool
    await pool.close()


@pytest.fixture
def northwind(tmp_path: Path) -> tuple[Path, Path]:
    """A second store: its profile file and its knowledge folder."""
    profile = tmp_path / "northwind.toml"
    profile.write_text(NORTHWIND_PROFILE)
    articles = tmp_path / "northwind-knowledge"
    articles.mkdir()
    (articles / "glaze.md").write_text(NORTHWIND_ARTICLE)
    return profile, articles


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


# -- the upgrade ----------------------------------------------------------------------------


def test_upgrade_from_a_database_made_before_sites_keeps_every_row(empty_database: str,
                                                                   tmp_path: Path) -> None:
    before = tmp_path / "before-sites"
    before.mkdir()
    for path in db.migration_files():
        if path.name < SITES_MIGRATION:
            shutil.copy(path, before / path.name)
    asyncio.run(db.migrate(empty_database, before))
    conversations = [uuid.uuid4() for _ in range(3)]
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for number, conversation in enumerate(conversations):
            conn.execute("INSERT INTO conversations (id) VALUES (%s)", (conversation,))
            conn.execute(
                "INSERT INTO messages (id, conversation_id, sender, text, status)"
                " VALUES (%s, %s, 'user', %s, 'complete'), (%s, %s, 'ai', %s, 'complete')",
                (uuid.uuid4(), conversation, f"question {number}", uuid.uuid4(), conversation,
                 f"answer {number}"))
        conn.execute("INSERT INTO knowledge_articles (path, title, content_hash)"
                     " VALUES ('returns.md', 'Returns', 'h')")
        conn.execute("INSERT INTO knowledge_chunks (article_path, position, article_title,"
                     " heading, body, content_hash) VALUES ('returns.md', 0, 'Returns',"
                     " 'Returns', 'Returns within 14 days.', 'h')")
    messages_before = rows(empty_database, "SELECT id, conversation_id, sender, text, seq"
                                           " FROM messages ORDER BY seq")

    # 0004 and every later migration (0005_retrieval re-derives the chunks' search vectors).
    assert asyncio.run(db.migrate(empty_database)) == [
        path.name for path in db.migration_files() if path.name >= SITES_MIGRATION]

    assert rows(empty_database, "SELECT id, seq FROM messages ORDER BY seq") == [
        (m[0], m[4]) for m in messages_before]
    assert rows(empty_database, "SELECT id, conversation_id, sender, text, seq FROM messages"
                                " ORDER BY seq") == messages_before
    assert rows(empty_database, "SELECT DISTINCT site_id FROM messages") == [(DEFAULT_SITE_ID,)]
    assert sorted(rows(empty_database, "SELECT id, site_id FROM conversations")) == sorted(
        (c, DEFAULT_SITE_ID) for c in conversations)
    assert rows(empty_database, "SELECT site_id, path FROM knowledge_articles") == [
        (DEFAULT_SITE_ID, "returns.md")]
    assert rows(empty_database, "SELECT site_id FROM knowledge_chunks") == [(DEFAULT_SITE_ID,)]
    # The statements written before sites still work: they land on the default site.
    newer = uuid.uuid4()
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("INSERT INTO conversations (id) VALUES (%s)", (newer,))
        conn.execute("INSERT INTO messages (id, conversation_id, sender, text, status)"
                     " VALUES (%s, %s, 'user', 'hi', 'complete')", (uuid.uuid4(), newer))
    assert rows(empty_database, "SELECT site_id FROM conversations WHERE id = %s", newer) == [
        (DEFAULT_SITE_ID,)]
    (key,) = rows(empty_database, "SELECT site_key FROM sites WHERE id = 1")[0]
    assert isinstance(key, str) and SITE_KEY_PATTERN.match(key)


def test_a_message_cannot_sit_on_another_site_than_its_conversation(
        migrated_database: str) -> None:
    with psycopg.connect(migrated_database, autocommit=True) as conn:
        (other,) = conn.execute("INSERT INTO sites (name) VALUES ('Other') RETURNING id"
                                ).fetchone() or (None,)
        conversation = uuid.uuid4()
        conn.execute("INSERT INTO conversations (id, site_id) VALUES (%s, %s)",
                     (conversation, other))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            # No site_id: the default site's, which is not the conversation's.
            conn.execute("INSERT INTO messages (id, conversation_id, sender, text, status)"
                         " VALUES (%s, %s, 'user', 'hi', 'complete')", (uuid.uuid4(),
                                                                         conversation))


# -- profiles stored as JSON ----------------------------------------------------------------


def test_a_profile_round_trips_through_its_document() -> None:
    profile = load_profile(DEFAULT_PROFILE_PATH)
    assert profile_from_document(profile_document(profile), "x") == profile


def test_a_stored_profile_is_checked_like_the_file() -> None:
    document = profile_document(load_profile(DEFAULT_PROFILE_PATH))
    document["returns"]["window_days"] = 0
    with pytest.raises(ProfileError, match="field 'returns.window_days' must be a whole number"):
        profile_from_document(document, "of site abc")
    document["returns"] = {"window_days": 14, "windows_days": 3}
    with pytest.raises(ProfileError, match="'returns.windows_days' is not a profile field"):
        profile_from_document(document, "of site abc")


@pytest.mark.parametrize("raw, expected", [
    ("https://Shop.Example.com/", "https://shop.example.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://shop.example.com:443", "https://shop.example.com"),  # what a browser sends
])
def test_origins_are_normalised(raw: str, expected: str) -> None:
    assert check_origin(raw) == expected


@pytest.mark.parametrize("raw", ["shop.example.com", "ftp://shop.example.com",
                                 "https://shop.example.com/path", "https://", "https://a:99999",
                                 "https://user@shop.example.com", "https://shop.example.com?x"])
def test_bad_origins_are_refused(raw: str) -> None:
    with pytest.raises(SiteError, match="origin must look like"):
        check_origin(raw)


# -- the directory --------------------------------------------------------------------------


async def test_the_default_site_mirrors_the_settings_and_changes_only_when_they_do(
        pool: AsyncConnectionPool) -> None:
    profile = load_profile(DEFAULT_PROFILE_PATH)
    assert await ensure_default_site(pool, profile, "knowledge", ["https://a.example"])
    assert not await ensure_default_site(pool, profile, "knowledge", ["https://a.example"])
    directory = SiteDirectory(SiteStore(pool))
    await directory.load()
    assert directory.default.id == DEFAULT_SITE_ID
    assert directory.default.allowed_origins == ("https://a.example",)
    assert directory.default.profile == profile
    assert directory.resolve(None) is directory.default
    assert directory.resolve(directory.default.key) is directory.default


async def test_resolving_a_site_needs_no_database(pool: AsyncConnectionPool) -> None:
    store = SiteStore(pool)
    created = await store.create("Northwind", ["https://northwind.example"], None)
    directory = SiteDirectory(store)
    await directory.load()
    await pool.close()  # any query now would fail
    site = directory.resolve(created.site_key)
    assert site.name == "Northwind" and site.profile == directory.default.profile
    with pytest.raises(SiteNotFound):
        directory.resolve("A" * 22)
    assert directory.every_origin == {"https://northwind.example"}


async def test_a_change_made_anywhere_reaches_every_instance_within_seconds(
        pool: AsyncConnectionPool, migrated_database: str) -> None:
    other_pool = db.create_pool(migrated_database, 2)
    await other_pool.open(wait=True)
    first = SiteDirectory(SiteStore(pool), refresh_s=0.1)
    second = SiteDirectory(SiteStore(other_pool), refresh_s=0.1)
    await first.open()
    await second.open()
    try:
        created = await SiteStore(pool).create("Northwind", ["https://n.example"], None)
        await SiteStore(pool).update(created.site_key, {"model": "gpt-4.1-mini"})
        deadline = time.monotonic() + 10
        while True:
            try:
                if second.resolve(created.site_key).model == "gpt-4.1-mini":
                    break
            except SiteNotFound:
                pass
            assert time.monotonic() < deadline, "the other instance never saw the change"
            await asyncio.sleep(0.05)
        assert not await second.refresh()  # nothing changed since: no reload
    finally:
        await first.aclose()
        await second.aclose()
        await other_pool.close()


# -- knowledge per site ---------------------------------------------------------------------


async def test_a_search_never_returns_another_sites_chunk(
        pool: AsyncConnectionPool, northwind: tuple[Path, Path], tmp_path: Path) -> None:
    store = SiteStore(pool)
    other = await store.create("Northwind", ["https://n.example"], None)
    _, articles = northwind
    # The same file name in both sites: a path is unique per site, not per deployment.
    default_articles = tmp_path / "default-knowledge"
    default_articles.mkdir()
    (default_articles / "glaze.md").write_text(
        "# Returns\n\nReturns are accepted within 14 days; the dishwasher is not involved.\n")
    await sync_knowledge(pool, default_articles)
    report = await sync_knowledge(pool, articles, other.id)
    assert report.added == ("glaze.md",)
    northwind_hits = await search_knowledge(pool, "are your mugs dishwasher safe?",
                                            site_id=other.id)
    assert northwind_hits and {c.title for c in northwind_hits} == {"Glaze safety"}
    default_hits = await search_knowledge(pool, "are your mugs dishwasher safe?")
    assert all(c.title == "Returns" for c in default_hits)
    # Syncing one site leaves the other's articles alone.
    again = await sync_knowledge(pool, default_articles)
    assert not again.changed
    assert (await sync_knowledge(pool, articles, other.id)).unchanged == 1


async def search_knowledge(pool: AsyncConnectionPool, question: str,
                           site_id: int = DEFAULT_SITE_ID) -> list[KnowledgeChunk]:
    search = KnowledgeSearch(pool, load_profile(DEFAULT_PROFILE_PATH), site_id=site_id)
    return list((await search.search(question)).chunks)


async def test_curated_answers_synonyms_and_words_are_the_sites_own(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    """answers.toml and synonyms.toml beside a site's folder are that site's alone, and typo
    correction only knows the words of the site's own articles."""
    store = SiteStore(pool)
    other = await store.create("Northwind", ["https://n.example"], None)
    northwind = tmp_path / "northwind"
    (northwind / "knowledge").mkdir(parents=True)
    (northwind / "knowledge" / "glaze.md").write_text(
        "# Glaze safety\n\nOur stoneware glaze is food safe and dishwasher safe.\n")
    (northwind / "answers.toml").write_text(
        '[[answer]]\nid = "kiln"\ntitle = "Kiln visits"\n'
        'questions = ["can I visit the kiln", "kiln tour"]\n'
        'answer = "Kiln tours run every Saturday at ten."\n')
    (northwind / "synonyms.toml").write_text('[synonyms]\n"pottery" = "stoneware"\n')
    default = tmp_path / "default"
    (default / "knowledge").mkdir(parents=True)
    (default / "knowledge" / "returns.md").write_text(
        "# Returns\n\nReturns are accepted within 14 days of delivery.\n")
    assert (await sync_knowledge(pool, northwind / "knowledge", other.id)).words_changed
    await sync_knowledge(pool, default / "knowledge")

    searches = SiteSearches(pool, load_profile(DEFAULT_PROFILE_PATH))
    theirs, ours = searches.for_site(other.id), searches.for_site()
    assert searches.for_site(other.id) is theirs and theirs is not ours
    kiln = await theirs.search("can i visit your kiln?")
    assert kiln.curated is not None and kiln.curated.path == "answers.toml#kiln"
    assert (await ours.search("can i visit your kiln?")).chunks == ()
    # The site's synonym and its words for typo correction ("dishwaser" -> "dishwasher").
    assert [c.title for c in (await theirs.search("is the pottery dishwaser safe"))
            .chunks][:1] == ["Glaze safety"]
    assert (await ours.search("is the pottery dishwaser safe")).chunks == ()
    assert [c.title for c in (await ours.search("how long do i have for retuns"))
            .chunks] == ["Returns"]
    assert (await theirs.search("how long do i have for retuns")).chunks == ()
    counts = rows(pool_url(pool), "SELECT site_id, count(*) FROM knowledge_synonyms"
                  " GROUP BY site_id ORDER BY site_id")
    assert counts == [(other.id, 1)]
    words = rows(pool_url(pool), "SELECT site_id FROM knowledge_words WHERE word = 'kiln'")
    assert words == [(other.id,)]


def pool_url(pool: AsyncConnectionPool) -> str:
    return pool.conninfo


# -- the CLI, as a real process -------------------------------------------------------------


def cli(database_url: str, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
                         **(env or {})})


def test_migrate_makes_the_default_site_from_the_settings(empty_database: str,
                                                          northwind: tuple[Path, Path]) -> None:
    profile, articles = northwind
    env = {"STORE_PROFILE": str(profile), "KNOWLEDGE_DIR": str(articles),
           "ALLOWED_ORIGINS": "https://shop.example.com"}
    done = cli(empty_database, "migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert rows(empty_database, "SELECT id, allowed_origins, profile->>'name', knowledge_dir"
                                " FROM sites") == [
        (1, ["https://shop.example.com"], "Northwind Ceramics", str(articles))]
    done = cli(empty_database, "migrate", env={**env, "ALLOWED_ORIGINS": "https://b.example",
                                               "STORE_PROFILE": ""})
    assert done.returncode == 0, done.stderr
    assert rows(empty_database, "SELECT allowed_origins, profile->>'name' FROM sites") == [
        (["https://b.example"], "Saffron Loom")]


def test_sites_cli_create_list_show_update_and_sync(migrated_database: str,
                                                    northwind: tuple[Path, Path]) -> None:
    profile, articles = northwind
    created = cli(migrated_database, "sites", "create", "--name", "Northwind",
                  "--origin", "https://northwind.example", "--origin", "https://www.northwind.example/",
                  "--profile", str(profile), "--knowledge", str(articles),
                  "--daily-token-budget", "5000")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[-1]
    assert SITE_KEY_PATTERN.match(key)
    assert "1 added" in created.stdout
    assert rows(migrated_database, "SELECT name, allowed_origins, daily_token_budget,"
                                   " profile->>'name' FROM sites WHERE site_key = %s", key) == [
        ("Northwind", ["https://northwind.example", "https://www.northwind.example"], 5000,
         "Northwind Ceramics")]
    assert rows(migrated_database, "SELECT k.path FROM knowledge_articles k JOIN sites s"
                                   " ON s.id = k.site_id WHERE s.site_key = %s", key) == [
        ("glaze.md",)]

    second = cli(migrated_database, "sites", "create", "--name", "Second",
                 "--origin", "https://second.example")
    assert second.returncode == 0, second.stderr
    second_key = second.stdout.splitlines()[-1]

    listed = cli(migrated_database, "sites", "list")
    assert listed.returncode == 0, listed.stderr
    (default_key,) = rows(migrated_database, "SELECT site_key FROM sites WHERE id = 1")[0]
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        default_key, key, second_key]

    shown = cli(migrated_database, "sites", "show", second_key)
    assert shown.returncode == 0, shown.stderr
    assert "profile: Saffron Loom (the default site's)" in shown.stdout
    assert f"key: {second_key}" in shown.stdout

    updated = cli(migrated_database, "sites", "update", key, "--model", "gpt-4.1-mini",
                  "--temperature", "0.2", "--max-tokens", "300",
                  "--rate-limit-session", "5/minute", "--daily-token-budget", "")
    assert updated.returncode == 0, updated.stderr
    assert rows(migrated_database, "SELECT model, temperature, max_tokens, rate_limit_session,"
                                   " daily_token_budget FROM sites WHERE site_key = %s", key) == [
        ("gpt-4.1-mini", 0.2, 300, "5/minute", None)]

    (articles / "care.md").write_text("# Care\n\nWash by hand.\n")
    synced = cli(migrated_database, "sites", "knowledge", "sync", key, str(articles))
    assert synced.returncode == 0, synced.stderr
    assert "1 added, 0 updated, 0 removed, 1 unchanged" in synced.stdout


@pytest.mark.parametrize("args, message", [
    (["create", "--name", "X", "--origin", "shop.example.com"], "origin must look like"),
    (["create", "--name", "X"], "give at least one --origin"),
    (["create", "--name", "X", "--origin", "https://x.example", "--temperature", "7"],
     "--temperature must be between"),
    (["create", "--name", "X", "--origin", "https://x.example", "--rate-limit-session",
      "lots"], "--rate-limit-session must look like"),
    (["create", "--name", "X", "--origin", "https://x.example", "--profile", "BADPROFILE"],
     "field 'returns.window_days' must be a whole number"),
    (["show", "nosuchkeynosuchkey"], "no site has the key"),
    (["update", "nosuchkeynosuchkey", "--name", "Y"], "no site has the key"),
    (["knowledge", "sync", "nosuchkeynosuchkey", "."], "no site has the key"),
    (["frobnicate"], "invalid choice"),
    (["create", "--origin", "https://x.example"], "the following arguments are required"),
])
def test_sites_cli_mistakes_are_one_line_and_status_2(migrated_database: str, tmp_path: Path,
                                                     args: list[str], message: str) -> None:
    bad_profile = tmp_path / "bad.toml"
    bad_profile.write_text(NORTHWIND_PROFILE.replace("window_days = 30", "window_days = 0"))
    args = [str(bad_profile) if arg == "BADPROFILE" else arg for arg in args]
    done = cli(migrated_database, "sites", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_no_new_site_key_starts_with_a_dash(database_url: str) -> None:
    # The CLI reads "-AbC…" as an option: `sites secret KEY` failed for one key in 64.
    with psycopg.connect(database_url) as conn:
        [(default,)] = conn.execute(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a"
            " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
            " WHERE d.adrelid = 'sites'::regclass AND a.attname = 'site_key'").fetchall()
        keys = [key for (key,) in conn.execute(
            f"SELECT {default} FROM generate_series(1, 2000)").fetchall()]
    assert len(set(keys)) == 2000
    assert not [key for key in keys if key.startswith("-")]
