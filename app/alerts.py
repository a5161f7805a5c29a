"""The alert webhook (ALERT_WEBHOOK_URL): a JSON POST with Slack-compatible `text` when a
conversation starts waiting for a person, so a small store hears of it without the inbox open,
and when a site's spend crosses a threshold (app/spend_alerts.py).

An `Alert` is what happened, whatever carries it; anything with `send(alert)` is an
`AlertChannel` (this webhook; email can be another), so the code that decides to alert does
not know how the owner hears of it.

Sent in the background, never in a request's way; retried with backoff (1 s, 2 s, 4 s, ...) on
a network error or a 5xx/429, given up on after ATTEMPTS. The URL usually holds a secret (a
Slack webhook's path is its key): only its host ever reaches the log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_RETRY_S = 1.0
TIMEOUT_S = 5.0
QUOTE_CHARS = 200


@dataclass(frozen=True)
class Alert:
    event: str  # e.g. 'conversation.waiting', 'spend.threshold', 'spend.jump'
    text: str  # one line for a person (Slack shows it)
    site_id: int  # whose owners it is for
    fields: dict[str, Any] = field(default_factory=dict)  # the rest of the JSON payload

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "event": self.event, **self.fields}


class AlertChannel(Protocol):
    def send(self, alert: Alert) -> None:
        """Deliver in the background; never raises, never waits for delivery."""


class AlertWebhook:
    def __init__(self, url: str) -> None:
        self._url = url
        self._host = urlsplit(url).hostname or "?"
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S)
        # Keep a hard reference to each task: the event loop only keeps weak ones.
        self._tasks: set[asyncio.Task[None]] = set()

    def conversation_waiting(self, site_name: str, conversation_id: uuid.UUID,
                             last_text: str | None, inbox_url: str, site_id: int) -> None:
        quote = (last_text or "").strip().replace("\n", " ")
        if len(quote) > QUOTE_CHARS:
            quote = quote[:QUOTE_CHARS - 1] + "…"
        text = (f"A shopper on {site_name} is waiting for a person"
                + (f": “{quote}”" if quote else ".") + f" {inbox_url}#{conversation_id}")
        self.send(Alert("conversation.waiting", text, site_id,
                        {"site": site_name, "conversationId": str(conversation_id),
                         "url": f"{inbox_url}#{conversation_id}"}))

    def send(self, alert: Alert) -> None:
        task = asyncio.create_task(self._send(alert.payload()), name=f"alert-{alert.event}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, payload: dict[str, Any]) -> None:
        delay = FIRST_RETRY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._client.post(self._url, json=payload)
                if response.status_code < 400:
                    return
                if response.status_code != 429 and response.status_code < 500:
                    log.error("alert webhook at %s refused the alert: HTTP %d", self._host,
                              response.status_code)
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt < ATTEMPTS:
                log.warning("alert webhook at %s: %s (attempt %d, next in %.0fs)", self._host,
                            reason, attempt, delay)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("alert webhook at %s: gave up after %d attempts", self._host, ATTEMPTS)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
