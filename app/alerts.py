"""The store's alerts: one `Alert` goes to every configured channel, the webhook
(ALERT_WEBHOOK_URL: a JSON POST with Slack-compatible `text`) and email (SMTP_URL to
ALERT_EMAIL_TO), whatever its kind: a conversation waiting for a person, a spend threshold, ...

Sent in the background, never in a request's way; each channel retries with backoff (1 s, 2 s,
4 s, ...) on a fault that may pass (a network error, a 5xx/429, an SMTP 4xx), gives up after
ATTEMPTS, and a refusal is not retried. The webhook URL usually holds a secret (a Slack webhook's
path is its key) and the SMTP URL a password: only hosts ever reach the log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from .mailer import Mailer, MailError

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_RETRY_S = 1.0
TIMEOUT_S = 5.0
QUOTE_CHARS = 200


@dataclass(frozen=True)
class Alert:
    kind: str  # "conversation.waiting", ...: the webhook's `event`
    site: str  # the site's name
    subject: str  # one line: the email's subject
    text: str  # for people: the webhook's `text`, the email's body
    fields: dict[str, Any] = field(default_factory=dict)  # more JSON for the webhook


class DeliveryFailed(Exception):
    """A channel could not deliver an alert; `retryable`: trying again later may work."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class Channel(Protocol):
    name: str  # for the log: what and where, never a secret

    async def deliver(self, alert: Alert) -> None: ...

    async def aclose(self) -> None: ...


class WebhookChannel:
    def __init__(self, url: str) -> None:
        self._url = url
        self.name = f"alert webhook at {urlsplit(url).hostname or '?'}"
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S)

    async def deliver(self, alert: Alert) -> None:
        payload = {"text": alert.text, "event": alert.kind, "site": alert.site, **alert.fields}
        try:
            response = await self._client.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(type(exc).__name__, retryable=True) from None
        if response.status_code >= 400:
            raise DeliveryFailed(f"HTTP {response.status_code}",
                                 retryable=response.status_code == 429
                                 or response.status_code >= 500)

    async def aclose(self) -> None:
        await self._client.aclose()


class EmailChannel:
    def __init__(self, mailer: Mailer, to: str) -> None:
        self._mailer = mailer
        self._to = to
        self.name = f"alert email through {mailer.server.where}"

    async def deliver(self, alert: Alert) -> None:
        try:
            await self._mailer.send(self._to, alert.subject, alert.text)
        except MailError as exc:
            raise DeliveryFailed(str(exc), retryable=exc.retryable) from None

    async def aclose(self) -> None:
        pass


class Alerts:
    """Sends each alert to every channel, each in a task of its own."""

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels
        # Keep a hard reference to each task: the event loop only keeps weak ones.
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, alert: Alert) -> None:
        for channel in self.channels:
            task = asyncio.create_task(self._deliver(channel, alert), name=f"alert-{alert.kind}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def conversation_waiting(self, site_name: str, conversation_id: uuid.UUID,
                             last_text: str | None, inbox_url: str,
                             nobody_available: str | None = None) -> None:
        """A shopper asked for a person; `nobody_available` says why nobody may see it soon
        ("outside support hours", "nobody is signed in"), None when someone is there."""
        quote = (last_text or "").strip().replace("\n", " ")
        if len(quote) > QUOTE_CHARS:
            quote = quote[:QUOTE_CHARS - 1] + "…"
        link = f"{inbox_url}#{conversation_id}"
        text = (f"A shopper on {site_name} is waiting for a person"
                + (f": “{quote}”" if quote else ".")
                + (f" Nobody is available ({nobody_available})." if nobody_available else "")
                + f" {link}")
        subject = (f"A shopper on {site_name} is waiting for a person"
                   + (" (nobody is available)" if nobody_available else ""))
        self.send(Alert("conversation.waiting", site_name, subject, text,
                        {"conversationId": str(conversation_id), "url": link,
                         "nobodyAvailable": nobody_available}))

    async def _deliver(self, channel: Channel, alert: Alert) -> None:
        delay = FIRST_RETRY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await channel.deliver(alert)
                return
            except DeliveryFailed as exc:
                if not exc.retryable:
                    log.error("%s refused the %s alert: %s", channel.name, alert.kind, exc)
                    return
                reason = str(exc)
            if attempt < ATTEMPTS:
                log.warning("%s: %s (attempt %d, next in %.0fs)", channel.name, reason,
                            attempt, delay)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("%s: gave up on the %s alert after %d attempts", channel.name, alert.kind,
                  ATTEMPTS)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.aclose()


def build_alerts(webhook_url: str, mailer: Mailer | None, email_to: str) -> Alerts | None:
    """The configured channels; None when there are none."""
    channels: list[Channel] = []
    if webhook_url:
        channels.append(WebhookChannel(webhook_url))
    if mailer is not None and email_to:
        channels.append(EmailChannel(mailer, email_to))
    return Alerts(channels) if channels else None
