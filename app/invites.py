"""An owner invites an agent (sql/0012): a one-time link that lets them set a password.

The link holds a random token; the table keeps only its SHA-256 (like sessions), so reading the
table invites nobody. A link works once, for INVITE_VALID, and only while no account has the
email. The agent joins the sites the owner chose, all of them among the owner's own.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import db
from .staff import StaffError, StaffMember, StaffStore, token_hash

INVITE_VALID = timedelta(days=3)


@dataclass(frozen=True)
class Invite:
    email: str
    site_ids: list[int]


class InviteStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(self, email: str, site_ids: Sequence[int], invited_by: int) -> str:
        """A new invitation; the token for the link (never stored). StaffError if the email
        already has an account."""
        if await StaffStore(self._pool).member(email) is not None:
            raise StaffError(f"there is already an account for {email}")
        token = secrets.token_urlsafe(32)
        try:
            async with db.connection(self._pool) as conn:
                await conn.execute(
                    "INSERT INTO staff_invites (token_hash, email, site_ids, invited_by,"
                    " expires_at) VALUES (%s, %s, %s, %s, now() + %s)",
                    (token_hash(token), email, list(site_ids), invited_by, INVITE_VALID))
        except psycopg.errors.CheckViolation:
            raise StaffError("the email is not valid") from None
        return token

    async def find(self, token: str) -> Invite | None:
        """The open invitation of this token: unused and not expired."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT email, site_ids FROM staff_invites WHERE token_hash = %s"
                " AND used_at IS NULL AND expires_at > now()", (token_hash(token),))
            row = await cur.fetchone()
        return None if row is None else Invite(row[0], list(row[1]))

    async def accept(self, token: str, display_name: str, password_hash: str
                     ) -> StaffMember | None:
        """Use the invitation once: the agent's account, or None if the link is not open (used,
        expired, unknown). StaffError if the email got an account meanwhile."""
        async with db.connection(self._pool) as conn:
            # One statement marks it used: two tabs submitting at once cannot both succeed.
            cur = await conn.execute(
                "UPDATE staff_invites SET used_at = now() WHERE token_hash = %s"
                " AND used_at IS NULL AND expires_at > now() RETURNING email, site_ids",
                (token_hash(token),))
            row = await cur.fetchone()
        if row is None:
            return None
        return await StaffStore(self._pool).create(row[0], display_name, "agent", password_hash,
                                                   list(row[1]))
