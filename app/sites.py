"""Sites: the unit of tenancy. One deployment serves many stores, each a site with its own
profile, knowledge, allowed origins, limits and model settings (sql/0004_sites.sql).

- `Site`: one site as the request path sees it, its profile already checked.
- `SiteStore`: the SQL, in one place.
- `SiteDirectory`: every site in memory, so resolving a request's site costs no database round
  trip. A background task re-reads the table's fingerprint (one tiny query) every
  SITES_REFRESH_S and reloads the sites when it changed, so a `sites update` made anywhere is
  seen by every instance within a few seconds.

The default site (id 1) serves requests that name no site, and mirrors the deployment's
STORE_PROFILE, KNOWLEDGE_DIR and ALLOWED_ORIGINS: `ensure_default_site` rewrites it at every
start and at `python -m app migrate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .errors import NotFoundError
from .store_profile import ProfileError, StoreProfile, profile_document, profile_from_document

log = logging.getLogger(__name__)

DEFAULT_SITE_ID = 1
# How often each instance looks for changed sites: the most a change takes to be seen.
SITES_REFRESH_S = 2.0
# What a site key may look like (the column's CHECK says the same): anything else is unknown
# without a lookup, and is never echoed into a log.
SITE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class SiteError(Exception):
    """A site's field has a value the service cannot use (one line, naming the field)."""


class SiteNotFound(NotFoundError):
    """The site key names no site (a 404 like an unknown conversation, app/errors.py)."""

    def __init__(self) -> None:
        super().__init__("site")


@dataclass(frozen=True)
class Site:
    id: int
    key: str
    name: str
    allowed_origins: tuple[str, ...]
    # The site's own profile, or the default site's when it has none.
    profile: StoreProfile
    own_profile: bool
    knowledge_dir: str | None
    # Overrides of the deployment's settings; None: the deployment's value.
    rate_limit_chat_ip: str | None = None
    rate_limit_chat_ip_daily: str | None = None
    rate_limit_session: str | None = None
    daily_token_budget: int | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    created_at: datetime | None = field(default=None, compare=False)
    updated_at: datetime | None = field(default=None, compare=False)

    @property
    def is_default(self) -> bool:
        return self.id == DEFAULT_SITE_ID


@dataclass(frozen=True)
class SiteRecord:
    """A row of `sites` as stored."""

    id: int
    site_key: str
    name: str
    allowed_origins: list[str]
    profile: dict[str, Any] | None
    knowledge_dir: str | None
    rate_limit_chat_ip: str | None
    rate_limit_chat_ip_daily: str | None
    rate_limit_session: str | None
    daily_token_budget: int | None
    model: str | None
    temperature: float | None
    max_tokens: int | None
    created_at: datetime
    updated_at: datetime


# -- checking what an operator types ---------------------------------------------------------


def check_origin(raw: str) -> str:
    """`https://shop.example.com[:port]`, normalised (lower case, no trailing slash)."""
    text = raw.strip().rstrip("/")
    parts = urlsplit(text)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password):
        raise SiteError(f"origin must look like https://shop.example.com, got {raw!r}")
    try:
        port = parts.port
    except ValueError:
        raise SiteError(f"origin must look like https://shop.example.com, got {raw!r}") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    # A browser's Origin leaves its scheme's default port out, so an entry with it would never
    # match (ALLOWED_ORIGINS refuses it, app/config.py); the CLI normalises it away instead.
    if port == {"http": 80, "https": 443}[parts.scheme]:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def check_name(raw: str) -> str:
    name = " ".join(raw.split())
    if not name:
        raise SiteError("name must not be empty")
    if len(name) > 200:
        raise SiteError("name must be at most 200 characters")
    return name


def check_rate(field_name: str, raw: str) -> str:
    from .ratelimit import parse_limit

    try:
        parse_limit(field_name, raw)
    except ValueError as exc:
        raise SiteError(str(exc)) from None
    return raw


def check_whole(field_name: str, raw: str, *, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SiteError(f"{field_name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SiteError(f"{field_name} must be between {low} and {high}, got {value}")
    return value


def check_number(field_name: str, raw: str, *, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SiteError(f"{field_name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise SiteError(f"{field_name} must be between {low} and {high}, got {raw}")
    return value


def site_from_record(record: SiteRecord, default_profile: StoreProfile | None) -> Site:
    """A stored site, its profile checked again (a row edited by hand is caught here)."""
    if record.profile is not None:
        profile = profile_from_document(record.profile, f"of site {record.site_key}")
    elif default_profile is not None:
        profile = default_profile
    else:
        raise SiteError("the default site has no store profile yet (run `python -m app migrate`)")
    return Site(
        id=record.id, key=record.site_key, name=record.name,
        allowed_origins=tuple(record.allowed_origins), profile=profile,
        own_profile=record.profile is not None and record.id != DEFAULT_SITE_ID,
        knowledge_dir=record.knowledge_dir,
        rate_limit_chat_ip=record.rate_limit_chat_ip,
        rate_limit_chat_ip_daily=record.rate_limit_chat_ip_daily,
        rate_limit_session=record.rate_limit_session,
        daily_token_budget=record.daily_token_budget, model=record.model,
        temperature=record.temperature, max_tokens=record.max_tokens,
        created_at=record.created_at, updated_at=record.updated_at)


def sites_from_records(records: Iterable[SiteRecord]) -> list[Site]:
    """Every site, the default first; the others inherit its profile when they have none."""
    ordered = sorted(records, key=lambda record: record.id)
    default = next((r for r in ordered if r.id == DEFAULT_SITE_ID), None)
    if default is None:
        raise SiteError("the default site is missing (run `python -m app migrate`)")
    default_site = site_from_record(default, None)
    return [default_site] + [site_from_record(r, default_site.profile)
                             for r in ordered if r.id != DEFAULT_SITE_ID]


# -- the SQL ---------------------------------------------------------------------------------

_COLUMNS = ("id, site_key, name, allowed_origins, profile, knowledge_dir, rate_limit_chat_ip,"
            " rate_limit_chat_ip_daily, rate_limit_session, daily_token_budget, model,"
            " temperature, max_tokens, created_at, updated_at")
# Every column `update` may set; the names never come from input, only from this tuple.
UPDATABLE = ("name", "allowed_origins", "profile", "knowledge_dir", "rate_limit_chat_ip",
             "rate_limit_chat_ip_daily", "rate_limit_session", "daily_token_budget", "model",
             "temperature", "max_tokens")


class SiteStore:
    """The sites table. Every change bumps the row's revision, which SiteDirectory watches."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def all(self) -> list[SiteRecord]:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SiteRecord))
            await cur.execute(f"SELECT {_COLUMNS} FROM sites ORDER BY id")
            return await cur.fetchall()

    async def fingerprint(self) -> tuple[int, int]:
        """Changes whenever a site is added or changed, whatever order updates commit in:
        every change raises one row's revision, so the sum grows."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT count(*), coalesce(sum(revision), 0) FROM sites")
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def find(self, site_key: str) -> SiteRecord:
        if not SITE_KEY_PATTERN.match(site_key):
            raise SiteError(f"no site has the key {site_key!r}")
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SiteRecord))
            await cur.execute(f"SELECT {_COLUMNS} FROM sites WHERE site_key = %s", (site_key,))
            record = await cur.fetchone()
        if record is None:
            raise SiteError(f"no site has the key {site_key!r}")
        return record

    async def create(self, name: str, allowed_origins: Sequence[str],
                     profile: StoreProfile | None, **overrides: Any) -> SiteRecord:
        """A new site with a fresh random key (made by the database: one source for keys)."""
        values = {"name": name, "allowed_origins": list(allowed_origins),
                  "profile": None if profile is None else Jsonb(profile_document(profile)),
                  **overrides}
        unknown = set(values) - set(UPDATABLE)
        assert not unknown, unknown
        columns = list(values)
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SiteRecord))
            await cur.execute(
                f"INSERT INTO sites ({', '.join(columns)})"
                f" VALUES ({', '.join(['%s'] * len(columns))}) RETURNING {_COLUMNS}",
                [values[column] for column in columns])
            record = await cur.fetchone()
        assert record is not None
        return record

    async def update(self, site_key: str, changes: dict[str, Any]) -> SiteRecord:
        record = await self.find(site_key)
        if not changes:
            return record
        unknown = set(changes) - set(UPDATABLE)
        assert not unknown, unknown
        if "profile" in changes and changes["profile"] is not None:
            changes = {**changes, "profile": Jsonb(profile_document(changes["profile"]))}
        assignments = ", ".join(f"{column} = %s" for column in changes)
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=class_row(SiteRecord))
            await cur.execute(
                f"UPDATE sites SET {assignments}, revision = nextval('sites_revision'),"
                f" updated_at = now() WHERE id = %s RETURNING {_COLUMNS}",
                [*changes.values(), record.id])
            updated = await cur.fetchone()
        assert updated is not None
        return updated


async def ensure_default_site(pool: AsyncConnectionPool, profile: StoreProfile,
                              knowledge_dir: str, allowed_origins: Sequence[str]) -> bool:
    """Make the default site mirror the deployment's settings; True when it changed.

    A restart with the same settings changes nothing, so it makes no instance reload.
    """
    document = Jsonb(profile_document(profile))
    origins = [origin.rstrip("/") for origin in allowed_origins]
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO sites (id, name) VALUES (%s, 'Default')"
                           " ON CONFLICT (id) DO NOTHING", (DEFAULT_SITE_ID,))
        cur = await conn.execute(
            "UPDATE sites SET profile = %(profile)s, knowledge_dir = %(dir)s,"
            " allowed_origins = %(origins)s, revision = nextval('sites_revision'),"
            " updated_at = now()"
            " WHERE id = %(id)s AND (profile IS DISTINCT FROM %(profile)s"
            " OR knowledge_dir IS DISTINCT FROM %(dir)s"
            " OR allowed_origins IS DISTINCT FROM %(origins)s::text[])",
            {"profile": document, "dir": knowledge_dir, "origins": origins,
             "id": DEFAULT_SITE_ID})
        return cur.rowcount > 0


# -- the in-memory directory -----------------------------------------------------------------


class SiteDirectory:
    """Every site, in memory, refreshed in the background when the table changes."""

    def __init__(self, store: SiteStore | None = None,
                 refresh_s: float = SITES_REFRESH_S) -> None:
        # None until the lifespan has a pool (the middleware holds the directory before that).
        self._store = store
        self._refresh_s = refresh_s
        self._by_key: dict[str, Site] = {}
        self._by_id: dict[int, Site] = {}
        self._origins: frozenset[str] = frozenset()
        self._fingerprint: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        # Called after each reload (the rate limits drop their per-site rules).
        self.on_reload: list[Callable[[], None]] = []

    @property
    def default(self) -> Site:
        return self._by_id[DEFAULT_SITE_ID]

    @property
    def sites(self) -> list[Site]:
        return list(self._by_id.values())

    @property
    def every_origin(self) -> frozenset[str]:
        """The origins some site allows: what CORS may answer before the site is known."""
        return self._origins

    def resolve(self, site_key: str | None) -> Site:
        """The site a request names; no key is the default site; an unknown key a 404."""
        if site_key is None or site_key == "":
            return self.default
        site = self._by_key.get(site_key)
        if site is None:
            raise SiteNotFound()
        return site

    def by_id(self, site_id: int) -> Site:
        return self._by_id[site_id]

    def _require_store(self) -> SiteStore:
        assert self._store is not None, "open the directory with a store first"
        return self._store

    async def load(self) -> None:
        """Read every site now (at start, and whenever the fingerprint moved)."""
        store = self._require_store()
        fingerprint = await store.fingerprint()
        sites = sites_from_records(await store.all())
        self._by_id = {site.id: site for site in sites}
        self._by_key = {site.key: site for site in sites}
        self._origins = frozenset(o for site in sites for o in site.allowed_origins)
        self._fingerprint = fingerprint
        for callback in self.on_reload:
            callback()

    async def refresh(self) -> bool:
        """Reload if any site changed since the last load; True when it did."""
        if await self._require_store().fingerprint() == self._fingerprint:
            return False
        await self.load()
        return True

    async def open(self, store: SiteStore | None = None) -> None:
        if store is not None:
            self._store = store
        await self.load()
        self._task = asyncio.create_task(self._watch(), name="sites-refresh")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                if await self.refresh():
                    log.info("sites changed: %d sites loaded", len(self._by_id))
            except (psycopg.Error, OSError, TimeoutError, SiteError, ProfileError) as exc:
                # Keep serving the sites we have; the next round tries again.
                log.warning("could not refresh the sites: %s", type(exc).__name__)
            except Exception:
                log.exception("could not refresh the sites")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
