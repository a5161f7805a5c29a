"""Nobody took it: an alert when a conversation has waited for a person WAITING_ALERT_AFTER_S
without anyone taking it over, and the widget then asks the shopper for an email address.

Every instance checks; each wait is alerted once whatever their number, because the one
UPDATE that finds the conversation also marks it (`unclaimed_alert_for`, the `waiting_since`
it alerted for): a second instance's UPDATE waits for the first's row lock and then no longer
matches. A conversation that is taken, handed back and asked about again waits anew, and may be
alerted again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

from . import db
from .alerts import QUOTE_CHARS, Alert, Alerts
from .conversation_events import Feeds, conversation_key
from .sites import SiteDirectory

log = logging.getLogger(__name__)

CHECK_EVERY_MAX_S = 30.0


def quote(text: str | None) -> str:
    line = (text or "").strip().replace("\n", " ")
    return line if len(line) <= QUOTE_CHARS else line[:QUOTE_CHARS - 1] + "…"


class WaitingAlerts:
    def __init__(self, pool: AsyncConnectionPool, sites: SiteDirectory, alerts: Alerts | None,
                 feeds: Feeds, *, after_s: float, ask_email: bool) -> None:
        self._pool = pool
        self._sites = sites
        self._alerts = alerts
        self._feeds = feeds
        self._after_s = after_s
        self._ask_email = ask_email  # an SMTP server is there to send the reply

    async def check(self) -> list[uuid.UUID]:
        """Alert the waits that just passed the limit and that no instance alerted yet;
        returns the conversations this instance claimed."""
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "UPDATE conversations c SET unclaimed_alert_for = c.waiting_since"
                " WHERE c.status = 'waiting'"
                " AND c.waiting_since <= now() - make_interval(secs => %s)"
                " AND c.unclaimed_alert_for IS DISTINCT FROM c.waiting_since"
                " RETURNING c.id, c.site_id, c.waiting_since, c.inbox_url,"
                " c.shopper_email IS NOT NULL, (SELECT m.text FROM messages m"
                " WHERE m.conversation_id = c.id AND m.sender = 'user'"
                " ORDER BY m.seq DESC LIMIT 1)", (self._after_s,))
            rows = await cur.fetchall()
        sites = {site.id: site for site in self._sites.sites}
        for conversation, site_id, since, inbox_url, has_email, last_text in rows:
            site = sites.get(site_id)
            if site is None:
                continue
            if self._ask_email and not has_email:
                # The widget, still waiting, offers the email form (README "Out of hours").
                await self._feeds.publish(conversation_key(site_id, conversation), "status",
                                          {"status": "waiting", "agentName": None,
                                           "askEmail": True})
            if self._alerts is not None:
                self._alerts.send(self.alert(site.name, conversation, since, inbox_url,
                                             last_text))
        return [row[0] for row in rows]

    def alert(self, site_name: str, conversation: uuid.UUID, since: datetime,
              inbox_url: str | None, last_text: str | None) -> Alert:
        minutes = max(1, round(self._after_s / 60))
        said = quote(last_text)
        link = f"{inbox_url}#{conversation}" if inbox_url else None
        text = (f"A shopper on {site_name} has waited over {minutes} min and nobody has taken"
                " the conversation" + (f": “{said}”" if said else ".")
                + (f" {link}" if link else ""))
        return Alert("conversation.unclaimed", site_name,
                     f"Nobody has taken a waiting shopper on {site_name}", text,
                     {"conversationId": str(conversation), "url": link,
                      "waitingSince": since.isoformat(), "waitedSeconds": self._after_s})

    def check_every_s(self) -> float:
        return min(CHECK_EVERY_MAX_S, max(self._after_s / 4, 0.2))

    async def run(self) -> None:
        """Check until cancelled; a failed check (the database away) waits for the next."""
        every = self.check_every_s()
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("waiting alert check failed; trying again in %.0f s", every)
            await asyncio.sleep(every)
