"""The layered rate limits, shared across instances through Redis, with an in-memory fallback.

Counters live in Redis (through the `limits` library) when REDIS_URL is set, so every instance
sees the same counts. Redis being down, slow or frozen never fails a request: every call is
bounded by short socket timeouts (app/redis_connection.py owns the client and the health state),
and while Redis is out each instance counts in its own memory (logged once per outage, shown in
/readyz), probing Redis again every few seconds.

Strategies, per limit:
- moving window for the small chat limits (per session, per IP per 15 minutes): exact, so the
  21st message is refused whatever the timing, and cheap at these sizes (one entry per hit);
- sliding-window counter for the large or hot ones (per IP per day, per IP on every endpoint):
  two counters per key whatever the limit, at the price of a small approximation at the edges.

The daily token budget is not a rate limit but a reservation: it lives in app/budget.py.

Per site: a site's chat limits may override the deployment's (app/sites.py), and every counter
but the per-IP ones on every endpoint and on lookups is the site's own, so one site's abuse
cannot exhaust another's. The default site keeps the keys used before sites, so an upgrade
keeps its counts. (A site's token budget is its own counter of app/budget.py, named the same
way: `site_budget_key`.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError

from .errors import RateLimited
from .redis_connection import SharedRedis

if TYPE_CHECKING:
    from .sites import Site

log = logging.getLogger(__name__)

T = TypeVar("T")

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving": MovingWindowRateLimiter,
    "sliding": SlidingWindowCounterRateLimiter,
    "fixed": FixedWindowRateLimiter,
}


def parse_limit(name: str, raw: str) -> RateLimitItem:
    """'20/15minutes' -> a limit; ValueError naming the variable otherwise."""
    try:
        item = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must look like 20/15minutes or 200/day, got {raw!r}") from None
    return item


@dataclass(frozen=True)
class Rule:
    name: str  # what a refusal names: which limit was hit
    item: RateLimitItem
    strategy: str


def site_scoped(site: Site | None, key: str) -> str:
    """A counter's key within its site: the default site's keys are those from before sites."""
    return key if site is None or site.is_default else f"site{site.id}:{key}"


def site_budget(site: Site | None, deployment_tokens: int) -> tuple[str, int]:
    """The site's token budget: the key part of its counter in app/budget.py ("" for the
    default site, whose counter is the deployment's from before sites; `site{id}` for another)
    and its daily limit (the site's override, else the deployment's; 0: no budget)."""
    if site is None:
        return "", deployment_tokens
    key_part = "" if site.is_default else f"site{site.id}"
    limit = deployment_tokens if site.daily_token_budget is None else site.daily_token_budget
    return key_part, limit


class RateLimits:
    """Checks the limits for one request; refusals raise RateLimited (429) with Retry-After."""

    def __init__(self, *, enabled: bool, every_request: Rule, chat_rules: tuple[Rule, ...],
                 session_rule: Rule, redis: SharedRedis | None, redis_prefix: str,
                 on_refusal: Callable[[str], None] | None = None,
                 login_rules: tuple[Rule, Rule] | None = None,
                 admin_rule: Rule | None = None, lookup_rule: Rule | None = None) -> None:
        self.enabled = enabled
        # Per client IP on the back office's API (/admin/api/...); None: not limited.
        self.admin_rule = admin_rule
        # (per client IP, per account) for back-office sign-in; None: not limited.
        self.login_rules = login_rules
        self.every_request = every_request
        self.chat_rules = chat_rules
        self.session_rule = session_rule
        self.lookup_rule = lookup_rule
        # A site's own rules, made once per combination of its overrides.
        self._site_rules: dict[tuple[str | None, ...], tuple[tuple[Rule, ...], Rule]] = {}
        self._memory = self._limiters(MemoryStorage())
        self._redis: dict[str, RateLimiter] | None = None
        if redis is not None:
            # The storage talks through our pool (bounded timeouts, any URL redis-py takes,
            # unix sockets included); the URI only tells `limits` which client to use.
            storage = RedisStorage(
                "async+redis://", implementation="redispy", wrap_exceptions=True,
                key_prefix=f"{redis_prefix}:limits",
                connection_pool=redis.limits.connection_pool)  # type: ignore[arg-type]
            self._redis = self._limiters(storage)
            self._health = redis.rate_limits_health
        # Called with the limit's name on every refusal (the metrics count them).
        self._on_refusal = on_refusal

    @staticmethod
    def _limiters(storage: Storage) -> dict[str, RateLimiter]:
        return {name: cls(storage) for name, cls in _STRATEGIES.items()}

    async def _run(self, operation: Callable[[dict[str, RateLimiter]], Awaitable[T]]) -> T:
        """Run against Redis while it answers; against this instance's memory while it does not."""
        if self._redis is not None and self._health.probe_due():
            try:
                result = await operation(self._redis)
            except StorageError as exc:
                self._health.failed(exc.storage_error, "counting a rate limit")
            else:
                self._health.ok()
                return result
        return await operation(self._memory)

    async def _hit(self, rule: Rule, key: str) -> tuple[bool, int, int]:
        """Count one request; return (allowed, remaining, seconds until the window resets)."""

        async def operation(limiters: dict[str, RateLimiter]) -> tuple[bool, int, int]:
            limiter = limiters[rule.strategy]
            allowed = await limiter.hit(rule.item, rule.name, key)
            stats = await limiter.get_window_stats(rule.item, rule.name, key)
            reset_in = max(1, math.ceil(stats.reset_time - time.time()))
            return allowed, stats.remaining, reset_in

        return await self._run(operation)

    async def check_request(self, client_key: str) -> None:
        """The per-IP limit on every endpoint."""
        if not self.enabled:
            return
        allowed, _, reset_in = await self._hit(self.every_request, client_key)
        if not allowed:
            raise self._refuse(self.every_request, reset_in)

    async def check_lookup(self, client_key: str) -> None:
        """The per-IP limit on history, resume and cancel lookups (apart from chat messages)."""
        if not self.enabled or self.lookup_rule is None:
            return
        allowed, _, reset_in = await self._hit(self.lookup_rule, client_key)
        if not allowed:
            raise self._refuse(self.lookup_rule, reset_in)

    def rules_for(self, site: Site | None) -> tuple[tuple[Rule, ...], Rule]:
        """The chat rules and the session rule, with the site's overrides."""
        if site is None:
            return self.chat_rules, self.session_rule
        overrides = (site.rate_limit_chat_ip, site.rate_limit_chat_ip_daily,
                     site.rate_limit_session)
        if overrides == (None, None, None):
            return self.chat_rules, self.session_rule
        rules = self._site_rules.get(overrides)
        if rules is None:
            by_name = {"chat_ip": site.rate_limit_chat_ip,
                       "chat_ip_daily": site.rate_limit_chat_ip_daily}
            chat_rules = tuple(
                rule if by_name.get(rule.name) is None
                else Rule(rule.name, parse_limit(rule.name, by_name[rule.name] or ""), rule.strategy)
                for rule in self.chat_rules)
            session = self.session_rule
            if site.rate_limit_session is not None:
                session = Rule(session.name, parse_limit(session.name, site.rate_limit_session),
                               session.strategy)
            rules = self._site_rules[overrides] = (chat_rules, session)
        return rules

    async def check_chat(self, client_key: str, session_id: str | None,
                         site: Site | None = None) -> dict[str, str]:
        """The chat limits of the site; returns the RateLimit-* headers of the tightest one."""
        if not self.enabled:
            return {}
        chat_rules, session_rule = self.rules_for(site)
        checks = [(rule, site_scoped(site, client_key)) for rule in chat_rules]
        if session_id is not None:
            checks.insert(0, (session_rule, site_scoped(site, session_id)))
        tightest: tuple[Rule, int, int] | None = None
        for rule, key in checks:
            allowed, remaining, reset_in = await self._hit(rule, key)
            if not allowed:
                raise self._refuse(rule, reset_in)
            if tightest is None or remaining < tightest[1]:
                tightest = (rule, remaining, reset_in)
        assert tightest is not None
        rule, remaining, reset_in = tightest
        return {"RateLimit-Limit": str(rule.item.amount), "RateLimit-Remaining": str(remaining),
                "RateLimit-Reset": str(reset_in)}

    async def check_login(self, client_key: str, email: str) -> None:
        """Count a sign-in attempt against the IP and the account (whether or not it exists,
        so the refusal says nothing about which emails have accounts)."""
        if not self.enabled or self.login_rules is None:
            return
        by_ip, by_account = self.login_rules
        for rule, key in ((by_ip, client_key), (by_account, email.strip().lower())):
            allowed, _, reset_in = await self._hit(rule, key)
            if not allowed:
                raise self._refuse(rule, reset_in)

    async def check_admin(self, client_key: str) -> None:
        """Count a back-office API request against its client IP (RATE_LIMIT_ADMIN_IP)."""
        if not self.enabled or self.admin_rule is None:
            return
        allowed, _, reset_in = await self._hit(self.admin_rule, client_key)
        if not allowed:
            raise self._refuse(self.admin_rule, reset_in)

    def _refuse(self, rule: Rule, reset_in: int) -> RateLimited:
        if self._on_refusal is not None:
            self._on_refusal(rule.name)
        return _refusal(rule, reset_in)


# What a shopper reads for each limit; the rule's name also goes out in RateLimit-Policy.
_REFUSALS = {
    "session": "You are sending messages very quickly in this conversation. "
               "Please wait {wait} and try again.",
    "chat_ip": "Too many messages from your network. Please wait {wait} and try again.",
    "chat_ip_daily": "You have reached today's message limit. Please try again in {wait}.",
    "ip": "Too many requests from your network. Please wait {wait} and try again.",
    "login_ip": "Too many sign-in attempts from your network. Please wait {wait}.",
    "login_account": "Too many sign-in attempts for this account. Please wait {wait}.",
    "admin_ip": "Too many back-office requests from your network. Please wait {wait}.",
    "lookup_ip": "Too many requests from your network. Please wait {wait} and try again.",
}


def _refusal(rule: Rule, reset_in: int) -> RateLimited:
    message = _REFUSALS[rule.name].format(wait=_human_wait(reset_in))
    policy = f'"{rule.name}";q={rule.item.amount};w={rule.item.get_expiry()}'
    return RateLimited(message, retry_after=reset_in, limit=rule.name,
                       headers={"RateLimit-Policy": policy, "RateLimit-Limit": str(rule.item.amount),
                                "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset_in)})


def _human_wait(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    if seconds < 90 * 60:
        return f"{math.ceil(seconds / 60)} minutes"
    return f"{math.ceil(seconds / 3600)} hours"
