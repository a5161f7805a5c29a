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
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

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


class RateLimits:
    """Checks the limits for one request; refusals raise RateLimited (429) with Retry-After."""

    def __init__(self, *, enabled: bool, every_request: Rule, chat_rules: tuple[Rule, ...],
                 session_rule: Rule, redis: SharedRedis | None, redis_prefix: str,
                 on_refusal: Callable[[str], None] | None = None,
                 lookup_rule: Rule | None = None) -> None:
        self.enabled = enabled
        self.every_request = every_request
        self.chat_rules = chat_rules
        self.session_rule = session_rule
        self.lookup_rule = lookup_rule
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

    async def check_chat(self, client_key: str, session_id: str | None) -> dict[str, str]:
        """The chat limits; returns the RateLimit-* headers of the tightest one."""
        if not self.enabled:
            return {}
        checks = [(rule, client_key) for rule in self.chat_rules]
        if session_id is not None:
            checks.insert(0, (self.session_rule, session_id))
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
