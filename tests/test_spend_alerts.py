"""Spend alerts: one alert per threshold per day, through a real webhook on a loopback port,
however many instances check at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from app import db
from app.alerts import Alerts, WebhookChannel
from app.knowledge import DEFAULT_KNOWLEDGE_DIR
from app.pricing import parse_prices
from app.sites import SiteDirectory, SiteStore, ensure_default_site
from app.spend_alerts import SpendAlerts
from app.store_profile import DEFAULT_PROFILE_PATH, load_profile
from tests.test_admin import make_site


class WebhookReceiver:
    """A plain HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self.url = ""
        self._arrived = asyncio.Event()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks/secret-path"
        return self.url

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        self.bodies.append(json.loads(await reader.readexactly(length)))
        self._arrived.set()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    def for_site(self, site_id: int) -> list[dict[str, Any]]:
        return [body for body in self.bodies if body.get("siteId") == site_id]

    async def wait_for(self, site_id: int, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(10):
            while len(self.for_site(site_id)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.for_site(site_id)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver()
    await server.start()
    yield server
    await server.close()


def spend_tokens(database_url: str, site_id: int, when: datetime, prompt: int,
                 completion: int = 0) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conversation_id = uuid.uuid4()
        conn.execute("INSERT INTO conversations (id, site_id, created_at) VALUES (%s, %s, %s)",
                     (conversation_id, site_id, when))
        conn.execute(
            "INSERT INTO messages (id, conversation_id, site_id, sender, status, model,"
            " prompt_tokens, completion_tokens, created_at)"
            " VALUES (%s, %s, %s, 'ai', 'complete', 'gpt-4o-mini', %s, %s, %s)",
            (uuid.uuid4(), conversation_id, site_id, prompt, completion, when))


@contextlib.asynccontextmanager
async def two_instances(database_url: str, url: str) -> AsyncIterator[list[SpendAlerts]]:
    """Two instances' spend checks: each its own pool, site directory and webhook client."""
    opened: list[tuple[Any, Alerts]] = []
    watches = []
    for _ in range(2):
        pool = db.create_pool(database_url, 2)
        await pool.open(wait=True)
        # As the app's start does: the default site takes the deployment's profile.
        await ensure_default_site(pool, load_profile(DEFAULT_PROFILE_PATH),
                                  str(DEFAULT_KNOWLEDGE_DIR), ())
        sites = SiteDirectory(SiteStore(pool))
        await sites.load()
        webhook = Alerts([WebhookChannel(url)])
        opened.append((pool, webhook))
        watches.append(SpendAlerts(pool, sites, webhook, thresholds=(50, 80, 100), jump=3,
                                   default_budget=0, prices=parse_prices("gpt-4o-mini=0.15/0.60")))
    try:
        yield watches
    finally:
        for pool, webhook in opened:
            await webhook.aclose()
            await pool.close()


async def test_each_threshold_alerts_once_a_day_across_instances(
        database_url: str, receiver: WebhookReceiver) -> None:
    site_id, _ = await make_site(database_url, f"Budget{uuid.uuid4().hex[:6]}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE sites SET daily_token_budget = 10000 WHERE id = %s", (site_id,))
    now = datetime.now(UTC)
    # A steady history (1,000,000 tokens a week): today's spend is no jump.
    for days_ago in range(1, 8):
        spend_tokens(database_url, site_id, now - timedelta(days=days_ago), 1_000_000 // 7)
    spend_tokens(database_url, site_id, now, 5500)
    async with two_instances(database_url, receiver.url) as (first, second):
        await asyncio.gather(first.check(), second.check(), first.check())
        alerts = await receiver.wait_for(site_id, 1)
        assert [(a["event"], a["threshold"]) for a in alerts] == [("spend.threshold", "50")]
        assert alerts[0]["tokens"] == 5500 and alerts[0]["budgetTokens"] == 10000
        assert "50% of today's token budget" in alerts[0]["text"]

        spend_tokens(database_url, site_id, now, 4000, 600)  # 10,100 tokens: past 80 and 100
        await asyncio.gather(second.check(), first.check())
        await second.check()
        alerts = await receiver.wait_for(site_id, 3)
        assert sorted(a["threshold"] for a in alerts) == ["100", "50", "80"]
        await asyncio.sleep(0.2)  # nothing more arrives
        assert len(receiver.for_site(site_id)) == 3

        # The next day starts again from nothing.
        tomorrow = now.date() + timedelta(days=1)
        spend_tokens(database_url, site_id, now + timedelta(days=1), 6000)
        sent = await first.check(today=tomorrow)
        assert [a.fields["threshold"] for a in sent if a.fields["siteId"] == site_id] == ["50"]


async def test_a_jump_over_the_recent_daily_average_alerts_once(
        database_url: str, receiver: WebhookReceiver) -> None:
    site_id, _ = await make_site(database_url, f"Jumpy{uuid.uuid4().hex[:6]}")  # no budget
    now = datetime.now(UTC)
    for days_ago in range(1, 8):
        spend_tokens(database_url, site_id, now - timedelta(days=days_ago), 100)
    spend_tokens(database_url, site_id, now, 250)  # 2.5 times the average: not yet
    async with two_instances(database_url, receiver.url) as (first, second):
        await asyncio.gather(first.check(), second.check())
        await asyncio.sleep(0.2)
        assert receiver.for_site(site_id) == []
        spend_tokens(database_url, site_id, now, 100)  # 350: over 3 times 100
        await asyncio.gather(first.check(), second.check())
        await first.check()
        alerts = await receiver.wait_for(site_id, 1)
        await asyncio.sleep(0.2)
        assert [(a["event"], a["threshold"]) for a in receiver.for_site(site_id)] == [
            ("spend.jump", "jump")]
        assert alerts[0]["recentDailyAverage"] == 100


