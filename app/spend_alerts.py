"""Spend alerts: a site's owner hears when the day's tokens cross a share of its daily budget
(SPEND_ALERT_THRESHOLDS, default 50, 80 and 100 %) or jump well above its recent daily
average (SPEND_ALERT_JUMP times the average of the previous 7 days).

Every instance checks every minute; each alert goes out once per site, threshold and UTC day
whatever the number of instances, because an instance sends only the alerts whose row it
inserted into `spend_alerts` (sql/0011_analytics.sql): the primary key decides, in one
statement, which instance that is. The row is written before the send, so a delivery that
fails after the channel's own retries is not tried again the next minute.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from psycopg_pool import AsyncConnectionPool

from . import db
from .alerts import Alert, Alerts
from .pricing import PriceTable
from .sites import Site, SiteDirectory

log = logging.getLogger(__name__)

CHECK_EVERY_S = 60.0
RECENT_DAYS = 7  # the days whose average a jump is measured against
JUMP = "jump"


@dataclass(frozen=True)
class DaySpend:
    site_id: int
    tokens_today: int
    cost_today_usd: float | None
    recent_daily_average: float  # tokens, over the RECENT_DAYS before today (zero days count)


def budget_of(site: Site, default_budget: int) -> int:
    """The site's own daily token budget, else the deployment's; 0: no budget."""
    return default_budget if site.daily_token_budget is None else site.daily_token_budget


class SpendAlerts:
    def __init__(self, pool: AsyncConnectionPool, sites: SiteDirectory,
                 alerts: Alerts, *, thresholds: Sequence[int], jump: float,
                 default_budget: int, prices: PriceTable) -> None:
        self._pool = pool
        self._sites = sites
        self._alerts = alerts
        self._thresholds = sorted(thresholds)
        self._jump = jump
        self._default_budget = default_budget
        self._prices = prices

    async def spend(self, site_ids: Sequence[int], today: date) -> dict[int, DaySpend]:
        start = datetime.combine(today - timedelta(days=RECENT_DAYS), time(0), UTC)
        midnight = datetime.combine(today, time(0), UTC)
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "SELECT site_id, model, created_at >= %(midnight)s AS today,"
                " coalesce(sum(prompt_tokens), 0)::bigint,"
                " coalesce(sum(completion_tokens), 0)::bigint"
                " FROM messages WHERE site_id = ANY(%(sites)s) AND created_at >= %(start)s"
                " AND created_at < %(midnight)s + interval '1 day' AND sender = 'ai'"
                " GROUP BY 1, 2, 3",
                {"sites": list(site_ids), "start": start, "midnight": midnight})
            rows = await cur.fetchall()
        tokens: dict[int, int] = {}
        costs: dict[int, float | None] = {}
        earlier: dict[int, int] = {}
        for site_id, model, is_today, prompt, completion in rows:
            if not is_today:
                earlier[site_id] = earlier.get(site_id, 0) + prompt + completion
                continue
            tokens[site_id] = tokens.get(site_id, 0) + prompt + completion
            cost = self._prices.cost(model, prompt, completion)
            known = costs.get(site_id, 0.0)
            costs[site_id] = None if cost is None or known is None else known + cost
        return {site_id: DaySpend(site_id, tokens.get(site_id, 0), costs.get(site_id, 0.0),
                                  earlier.get(site_id, 0) / RECENT_DAYS)
                for site_id in site_ids}

    def due(self, site: Site, spent: DaySpend) -> list[tuple[str, str]]:
        """(threshold, sentence) for every alert the spend calls for today."""
        found: list[tuple[str, str]] = []
        budget = budget_of(site, self._default_budget)
        cost = "" if spent.cost_today_usd is None else f", about ${spent.cost_today_usd:.2f}"
        if budget:
            for percent in self._thresholds:
                if spent.tokens_today * 100 >= percent * budget:
                    found.append((str(percent), (
                        f"{site.name} has used {percent}% of today's token budget:"
                        f" {spent.tokens_today:,} of {budget:,} tokens{cost}.")))
        average = spent.recent_daily_average
        if self._jump and average > 0 and spent.tokens_today > self._jump * average:
            found.append((JUMP, (
                f"{site.name} has spent {spent.tokens_today:,} tokens today{cost}, over"
                f" {self._jump:g} times its daily average of the last {RECENT_DAYS} days"
                f" ({average:,.0f}).")))
        return found

    async def check(self, today: date | None = None) -> list[Alert]:
        """Send the alerts due now that no instance has sent yet; returns those sent here."""
        today = today or datetime.now(UTC).date()
        sites = {site.id: site for site in self._sites.sites}
        spent = await self.spend(list(sites), today)
        sent: list[Alert] = []
        for site_id, day_spend in spent.items():
            site = sites[site_id]
            for threshold, sentence in self.due(site, day_spend):
                if not await self._claim(site_id, today, threshold, day_spend.tokens_today):
                    continue
                budget = budget_of(site, self._default_budget)
                alert = Alert(
                    "spend.jump" if threshold == JUMP else "spend.threshold", site.name,
                    f"Spend alert for {site.name}", f"Spend alert: {sentence}",
                    {"siteId": site_id, "day": today.isoformat(),
                     "threshold": threshold, "tokens": day_spend.tokens_today,
                     "budgetTokens": budget or None, "costUsd": day_spend.cost_today_usd,
                     "recentDailyAverage": round(day_spend.recent_daily_average)})
                self._alerts.send(alert)
                sent.append(alert)
        return sent

    async def _claim(self, site_id: int, day: date, threshold: str, tokens: int) -> bool:
        async with db.connection(self._pool) as conn:
            cur = await conn.execute(
                "INSERT INTO spend_alerts (site_id, day, threshold, tokens)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                (site_id, day, threshold, tokens))
            return await cur.fetchone() is not None

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        """Check until cancelled; a failed check (the database away) waits for the next."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("spend alert check failed; trying again in %.0f s", every_s)
            await asyncio.sleep(every_s)
