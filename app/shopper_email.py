"""Out of hours: the shopper leaves an email address, and an agent's later reply goes to it.

The rules, each in one place here:

- **Away.** A shopper's widget holds the conversation's stream while a person is asked for or
  involved; the stream marks `shopper_seen_at` when it opens, every HEARTBEAT_S and when it
  closes, and keeps `shopper_online_until` AWAY_S ahead while open (now() once closed; an
  instance that dies lets it lapse). An agent's reply newer than `shopper_seen_at` was not
  seen live; a shopper whose `shopper_online_until` has passed is away.
- **One email per burst.** An agent's reply (to a shopper who left an address) makes an email
  due REPLY_EMAIL_DELAY_S later, or REPLY_EMAIL_DELAY_S after the previous one, whichever is
  later. Replies meanwhile join that email. When it is due and the shopper is away, it carries
  every reply they have not seen; when they are back (connected), it waits until they leave,
  and replies they saw are never sent. Every instance checks for due emails; `FOR UPDATE SKIP
  LOCKED` gives each due email to one of them.
- **The link.** `<the store page the widget was on>#chat-reopen=<token>`: a fragment, so the
  token never reaches the store's server or its logs, nor a Referer. The token is random (256
  bits), only its SHA-256 is stored, and it works for LINK_VALID; each email has a new one. The
  widget trades it for the conversation at POST /chat/reopen. No log line carries a
  conversation id, a token or an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from psycopg_pool import AsyncConnectionPool

from . import db
from .errors import StoreUnavailable
from .eventlog import Event
from .mailer import Mailer, MailError
from .sites import SiteDirectory
from .staff import token_hash

log = logging.getLogger(__name__)

HEARTBEAT_S = 20.0
AWAY_S = 45.0  # over two heartbeats: a live stream is never taken for a shopper who left
LINK_VALID = timedelta(days=7)
REOPEN_FRAGMENT = "chat-reopen"
EMAIL_MAX_CHARS = 254  # RFC 5321's longest forward path, less its angle brackets
PAGE_URL_MAX_CHARS = 2000
TOKEN_MAX_CHARS = 100
SEND_ATTEMPTS = 3
BATCH = 20
# WHATWG HTML's "valid email address": exactly what the widget's <input type=email> accepts.
# The same pattern is the OpenAPI document's (app/openapi.py), so the two cannot drift apart.
EMAIL_PATTERN = (r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                 r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_EMAIL = re.compile(EMAIL_PATTERN)
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{20,100}$"
_TOKEN = re.compile(TOKEN_PATTERN)


def valid_email(raw: object) -> str | None:
    """The address, trimmed, if it is one a shopper can be written to; else None."""
    if not isinstance(raw, str) or len(raw) > EMAIL_MAX_CHARS + 20:
        return None
    address = raw.strip()
    if len(address) > EMAIL_MAX_CHARS or not _EMAIL.match(address) or "\n" in address:
        return None
    return address


def valid_token(raw: object) -> str | None:
    # `$` also matches before a final line break, which a token never has.
    return raw if isinstance(raw, str) and "\n" not in raw and _TOKEN.match(raw) else None


def page_origin(raw: str) -> str | None:
    """scheme://host[:port] of an http(s) page URL, or None."""
    url = urlsplit(raw)
    if url.scheme.lower() not in ("http", "https") or not url.hostname or url.username:
        return None
    return f"{url.scheme.lower()}://{url.netloc.lower()}"


def reopen_link(page_url: str, token: str) -> str:
    url = urlsplit(page_url)
    return urlunsplit((url.scheme, url.netloc, url.path or "/", url.query,
                       f"{REOPEN_FRAGMENT}={token}"))


@dataclass(frozen=True)
class ReplyEmail:
    to: str
    site_name: str
    subject: str
    body: str


class ShopperEmails:
    """The shopper's address on a conversation, their presence, and the replies emailed."""

    def __init__(self, pool: AsyncConnectionPool, sites: SiteDirectory, mailer: Mailer | None,
                 delay_s: float) -> None:
        self._pool = pool
        self._sites = sites
        self.mailer = mailer  # None: no SMTP_URL, and the widget offers no email form
        self._delay_s = delay_s
        # Keep a hard reference to each task: the event loop only keeps weak ones.
        self._tasks: set[asyncio.Task[None]] = set()

    async def leave(self, conversation_id: uuid.UUID, site_id: int, email: str | None,
                    page_url: str | None) -> bool:
        """Keep (or, with None, forget) the shopper's address; False: no such conversation."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE conversations SET shopper_email = %s,"
                " shopper_page_url = coalesce(%s, shopper_page_url), shopper_seen_at = now(),"
                " reply_email_due_at = CASE WHEN %s::text IS NULL THEN NULL"
                " ELSE reply_email_due_at END"
                " WHERE id = %s AND site_id = %s RETURNING 1",
                (email, page_url, email, conversation_id, site_id))
            return await cur.fetchone() is not None

    async def waiting(self, conversation_id: uuid.UUID, inbox_url: str) -> None:
        """A person was asked for; `inbox_url` (as the request reached the app) is for the
        alerts sent later, without a request (app/waiting_alerts.py)."""
        async with db.connection(self._pool) as conn:
            await conn.execute("UPDATE conversations SET inbox_url = %s WHERE id = %s",
                               (inbox_url, conversation_id))

    async def seen(self, conversation_id: uuid.UUID, *, still_open: bool) -> None:
        """The shopper's widget is live on this conversation (only noted where it matters):
        `still_open`, for the next AWAY_S; else it has just closed its stream."""
        async with db.connection(self._pool) as conn:
            await conn.execute(
                "UPDATE conversations SET shopper_seen_at = now(), shopper_online_until ="
                " now() + make_interval(secs => %s) WHERE id = %s AND shopper_email IS NOT NULL",
                (AWAY_S if still_open else 0, conversation_id))

    async def following(self, conversation_id: uuid.UUID,
                        events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """The shopper's conversation stream, marking them present while it is open (without
        SMTP_URL no reply is emailed, and presence is not kept)."""
        if self.mailer is None:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
            return
        beat = asyncio.create_task(self._heartbeat(conversation_id))
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event in events:
                    yield event
        finally:
            beat.cancel()
            # In a task of its own: the stream's task is being cancelled (the client left).
            self._in_background(self._quietly(self.seen(conversation_id, still_open=False)))

    async def _heartbeat(self, conversation_id: uuid.UUID) -> None:
        while True:
            await self._quietly(self.seen(conversation_id, still_open=True))
            await asyncio.sleep(HEARTBEAT_S)

    async def _quietly(self, work: Awaitable[None]) -> None:
        with contextlib.suppress(StoreUnavailable):  # best effort: the next beat tries again
            await work

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reply_written(self, conversation_id: uuid.UUID) -> None:
        """An agent wrote in the conversation: an email becomes due, if the shopper left an
        address and none is due yet (a later reply joins the email already due)."""
        if self.mailer is None:
            return
        async with db.connection(self._pool) as conn:
            await conn.execute(
                "UPDATE conversations SET reply_email_due_at = greatest("
                " now() + make_interval(secs => %(delay)s),"
                " reply_emailed_at + make_interval(secs => %(delay)s))"
                " WHERE id = %(id)s AND shopper_email IS NOT NULL AND reply_email_due_at IS NULL",
                {"delay": self._delay_s, "id": conversation_id})

    async def redeem(self, token: str, site_id: int) -> uuid.UUID | None:
        """The conversation a reopen link's token opens on this site; None: unknown, expired
        or another site's, all alike."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT conversation_id FROM conversation_links WHERE token_hash = %s"
                " AND site_id = %s AND expires_at > now()", (token_hash(token), site_id))
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def send_due(self) -> int:
        """Send the reply emails due now that no other instance took; returns how many."""
        if self.mailer is None:
            return 0
        emails = await self._claim_due()
        for reply in emails:
            await self._send(reply)
        return len(emails)

    async def _claim_due(self) -> list[ReplyEmail]:
        sites = {site.id: site for site in self._sites.sites}
        emails: list[ReplyEmail] = []
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT id, site_id, shopper_email, shopper_page_url, language,"
                " coalesce(shopper_online_until > now(), false), shopper_online_until"
                " FROM conversations WHERE reply_email_due_at <= now()"
                " ORDER BY reply_email_due_at LIMIT %s FOR UPDATE SKIP LOCKED", (BATCH,))
            for conversation, site_id, to, page_url, language, connected, away_at in \
                    await cur.fetchall():
                if connected:  # they are reading: ask again once they may have left
                    await conn.execute("UPDATE conversations SET reply_email_due_at = %s"
                                       " WHERE id = %s", (away_at, conversation))
                    continue
                replies = await conn.execute(
                    "SELECT coalesce(a.display_name, 'Our team'), m.text FROM messages m"
                    " JOIN conversations c ON c.id = m.conversation_id"
                    " LEFT JOIN staff a ON a.id = m.staff_id"
                    " WHERE m.conversation_id = %s AND m.sender = 'agent'"
                    " AND m.created_at > coalesce(greatest(c.shopper_seen_at, c.reply_emailed_at),"
                    " '-infinity')"
                    " ORDER BY m.seq", (conversation,))
                unseen = await replies.fetchall()
                await conn.execute(
                    "UPDATE conversations SET reply_email_due_at = NULL,"
                    " reply_emailed_at = CASE WHEN %s THEN now() ELSE reply_emailed_at END"
                    " WHERE id = %s", (bool(unseen), conversation))
                site = sites.get(site_id)
                if not unseen or to is None or not page_url or site is None:
                    continue
                token = secrets.token_urlsafe(32)
                await conn.execute(
                    "INSERT INTO conversation_links (token_hash, conversation_id, site_id,"
                    " expires_at) VALUES (%s, %s, %s, now() + %s)",
                    (token_hash(token), conversation, site_id, LINK_VALID))
                emails.append(compose(to, site.name, unseen, reopen_link(page_url, token),
                                      language))
        return emails

    async def _send(self, reply: ReplyEmail) -> None:
        assert self.mailer is not None
        delay = 1.0
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                await self.mailer.send(reply.to, reply.subject, reply.body)
                log.info("emailed an agent's reply to a shopper of %s", reply.site_name)
                return
            except MailError as exc:
                if not exc.retryable or attempt == SEND_ATTEMPTS:
                    log.error("could not email an agent's reply to a shopper through %s: %s",
                              self.mailer.server.where, exc)
                    return
            await asyncio.sleep(delay)
            delay *= 2

    def check_every_s(self) -> float:
        return min(10.0, max(self._delay_s / 4, 0.2))

    async def run(self) -> None:
        """Send due emails until cancelled; a failed round (the database away) waits."""
        every = self.check_every_s()
        while True:
            try:
                await self.send_due()
            except Exception:
                log.exception("reply email check failed; trying again in %.0f s", every)
            await asyncio.sleep(every)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# The email in the conversation's language (of the shopper's newest question), else English.
EMAIL_TEXTS: dict[str, dict[str, str]] = {
    "en": {"subject": "{who} from {site} replied",
           "intro": "{who} from {site} replied to your question:",
           "link": "Continue the conversation (the link works for {days} days):",
           "why": "You get this email because you left your address in {site}'s chat. If that"
                  " was not you, you can ignore it."},
    "de": {"subject": "{who} von {site} hat geantwortet",
           "intro": "{who} von {site} hat auf Ihre Frage geantwortet:",
           "link": "Gespräch fortsetzen (der Link gilt {days} Tage):",
           "why": "Sie erhalten diese E-Mail, weil Sie Ihre Adresse im Chat von {site}"
                  " hinterlassen haben. Waren Sie das nicht, können Sie sie ignorieren."},
    "fr": {"subject": "{who} de {site} a répondu",
           "intro": "{who} de {site} a répondu à votre question :",
           "link": "Reprendre la conversation (le lien est valable {days} jours) :",
           "why": "Vous recevez cet e-mail car vous avez laissé votre adresse dans le chat de"
                  " {site}. Si ce n'était pas vous, ignorez-le."},
    "es": {"subject": "{who} de {site} ha respondido",
           "intro": "{who} de {site} ha respondido a tu pregunta:",
           "link": "Continúa la conversación (el enlace vale {days} días):",
           "why": "Recibes este correo porque dejaste tu dirección en el chat de {site}. Si no"
                  " fuiste tú, puedes ignorarlo."},
    "hi": {"subject": "{site} से {who} ने जवाब दिया",
           "intro": "{site} से {who} ने आपके सवाल का जवाब दिया:",
           "link": "बातचीत जारी रखें (लिंक {days} दिन तक चलेगा):",
           "why": "आपको यह ईमेल इसलिए मिला क्योंकि आपने {site} की चैट में अपना पता छोड़ा था।"
                  " अगर वह आप नहीं थे, तो इसे अनदेखा करें।"},
}


def compose(to: str, site_name: str, replies: list[tuple[str, str]], link: str,
            language: str | None = None) -> ReplyEmail:
    texts = EMAIL_TEXTS.get(language or "en", EMAIL_TEXTS["en"])
    names = sorted({name for name, _ in replies})
    fill = {"who": ", ".join(names), "site": site_name, "days": LINK_VALID.days}
    quoted = "\n\n".join(f"{name}:\n" + "\n".join(f"> {line}" for line in text.splitlines())
                         for name, text in replies)
    body = (f"{texts['intro'].format(**fill)}\n\n{quoted}\n\n"
            f"{texts['link'].format(**fill)}\n{link}\n\n{texts['why'].format(**fill)}\n")
    # A header may not hold a line break (the email library refuses one): names are one line.
    subject = " ".join(texts["subject"].format(**fill).split())
    return ReplyEmail(to, site_name, subject, body)
