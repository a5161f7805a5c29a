"""Staff accounts and their sessions: every SQL statement about staff (sql/0006_staff.sql).

A session is an opaque random token in a cookie; the table keeps only its SHA-256, and every
use checks both expiries: idle (SESSION_IDLE) and absolute (SESSION_ABSOLUTE, from sign-in).
Disabling an account or changing its password ends all of its sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from . import db

SESSION_IDLE = timedelta(hours=12)
SESSION_ABSOLUTE = timedelta(days=7)
# A staff member counts as online while a session of theirs was used this recently: an open
# inbox re-reads its list at least every 15 s (web/admin/inbox.js), so this is a closed tab.
ONLINE_WINDOW = timedelta(minutes=2)
ROLES = ("owner", "agent")


class StaffError(ValueError):
    """A staff command cannot be done (a duplicate email, an unknown account): one line why."""


@dataclass(frozen=True)
class StaffMember:
    id: int
    email: str
    display_name: str
    role: str
    disabled: bool
    site_ids: list[int]


@dataclass(frozen=True)
class Credentials:
    id: int
    password_hash: str
    disabled: bool


@dataclass(frozen=True)
class StaffSession:
    staff: StaffMember
    csrf_token: str
    token_hash: bytes


@dataclass(frozen=True)
class NewSession:
    token: str  # for the cookie; never stored
    csrf_token: str


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


_MEMBER_SQL = ("SELECT s.id, s.email, s.display_name, s.role, s.disabled,"
               " coalesce(array_agg(m.site_id ORDER BY m.site_id)"
               " FILTER (WHERE m.site_id IS NOT NULL), '{}') AS site_ids"
               " FROM staff s LEFT JOIN staff_sites m ON m.staff_id = s.id")


class StaffStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(self, email: str, display_name: str, role: str, password_hash: str,
                     site_ids: list[int]) -> StaffMember:
        try:
            async with db.connection(self._pool) as conn:
                cur = await conn.execute(
                    "INSERT INTO staff (email, display_name, role, password_hash)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (email, display_name, role, password_hash))
                row = await cur.fetchone()
                assert row is not None
                for site_id in site_ids:
                    await conn.execute(
                        "INSERT INTO staff_sites (staff_id, site_id) VALUES (%s, %s)"
                        " ON CONFLICT DO NOTHING", (row[0], site_id))
        except psycopg.errors.UniqueViolation:
            raise StaffError(f"there is already an account for {email}") from None
        except psycopg.errors.CheckViolation:
            raise StaffError("the email or name is not valid") from None
        member = await self.member(email)
        assert member is not None
        return member

    async def add_site(self, staff_id: int, site_id: int) -> None:
        async with db.connection(self._pool) as conn:
            await conn.execute("INSERT INTO staff_sites (staff_id, site_id) VALUES (%s, %s)"
                               " ON CONFLICT DO NOTHING", (staff_id, site_id))

    async def member(self, email: str) -> StaffMember | None:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(StaffMember))
            await cur.execute(_MEMBER_SQL + " WHERE lower(s.email) = lower(%s) GROUP BY s.id",
                              (email,))
            return await cur.fetchone()

    async def members(self) -> list[StaffMember]:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(StaffMember))
            await cur.execute(_MEMBER_SQL + " GROUP BY s.id ORDER BY s.id")
            return await cur.fetchall()

    async def set_disabled(self, email: str, disabled: bool = True) -> None:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE staff SET disabled = %s WHERE lower(email) = lower(%s) RETURNING id",
                (disabled, email))
            row = await cur.fetchone()
            if row is None:
                raise StaffError(f"there is no account for {email}")
            await conn.execute("DELETE FROM staff_sessions WHERE staff_id = %s", (row[0],))

    async def set_password_hash(self, email: str, password_hash: str) -> None:
        """A new password (a reset): every session of the account ends."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE staff SET password_hash = %s WHERE lower(email) = lower(%s) RETURNING id",
                (password_hash, email))
            row = await cur.fetchone()
            if row is None:
                raise StaffError(f"there is no account for {email}")
            await conn.execute("DELETE FROM staff_sessions WHERE staff_id = %s", (row[0],))

    async def credentials(self, email: str) -> Credentials | None:
        async with db.connection(self._pool) as conn:
            cur = conn.cursor(row_factory=class_row(Credentials))
            await cur.execute("SELECT id, password_hash, disabled FROM staff"
                              " WHERE lower(email) = lower(%s)", (email,))
            return await cur.fetchone()

    async def rehash(self, staff_id: int, old_hash: str, new_hash: str) -> None:
        """The same password under new parameters; only if nobody changed it meanwhile."""
        async with db.connection(self._pool) as conn:
            await conn.execute("UPDATE staff SET password_hash = %s WHERE id = %s"
                               " AND password_hash = %s", (new_hash, staff_id, old_hash))

    async def start_session(self, staff_id: int) -> NewSession:
        token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        async with db.connection(self._pool) as conn:
            await conn.execute(
                "INSERT INTO staff_sessions (token_hash, staff_id, csrf_token, expires_at)"
                " VALUES (%s, %s, %s, now() + %s)",
                (token_hash(token), staff_id, csrf_token, SESSION_ABSOLUTE))
        return NewSession(token, csrf_token)

    async def session(self, token: str) -> StaffSession | None:
        """The live session of an enabled account for this token (its idle clock restarts)."""
        hashed = token_hash(token)
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE staff_sessions SET last_seen_at = now() WHERE token_hash = %s"
                " AND expires_at > now() AND last_seen_at > now() - %s"
                " RETURNING staff_id, csrf_token", (hashed, SESSION_IDLE))
            row = await cur.fetchone()
            if row is None:
                return None
            rows = conn.cursor(row_factory=class_row(StaffMember))
            await rows.execute(_MEMBER_SQL + " WHERE s.id = %s GROUP BY s.id", (row[0],))
            member = await rows.fetchone()
        if member is None or member.disabled:
            return None
        return StaffSession(member, row[1], hashed)

    async def anyone_online(self, site_id: int) -> bool:
        """Whether an enabled staff member of the site has used a session within ONLINE_WINDOW."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM staff_sessions ss"
                " JOIN staff_sites m ON m.staff_id = ss.staff_id JOIN staff s ON s.id = ss.staff_id"
                " WHERE m.site_id = %s AND NOT s.disabled AND ss.expires_at > now()"
                " AND ss.last_seen_at > now() - %s)", (site_id, ONLINE_WINDOW))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def end_session(self, hashed: bytes) -> None:
        async with db.connection(self._pool) as conn:
            await conn.execute("DELETE FROM staff_sessions WHERE token_hash = %s", (hashed,))

    async def end_every_session(self, staff_id: int) -> None:
        async with db.connection(self._pool) as conn:
            await conn.execute("DELETE FROM staff_sessions WHERE staff_id = %s", (staff_id,))
            # Expired rows of anyone go too: the table does not grow with every sign-in.
            await conn.execute("DELETE FROM staff_sessions WHERE expires_at < now()"
                               " OR last_seen_at < now() - %s", (SESSION_IDLE,))
