"""The daily token budget: a guarantee, not an estimate.

An answer reserves its worst case before it starts (the prompt's estimated tokens plus
MAX_TOKENS, which the model cannot exceed), atomically in Redis: one Lua script checks and adds,
so twelve answers that start together against a budget that fits three get three reservations
and nine refusals, and the counter never passes the budget. When the answer ends, the
reservation is settled to what it really used (the upstream's count, or an estimate when none
came); a cancelled or failed answer gives back what it did not use.

While Redis is unreachable each instance may spend at most its share of the budget
(DAILY_TOKEN_BUDGET_FALLBACK_SHARE, and never more than the room it last saw in Redis), not a
fresh full budget per outage or restart. What it spent meanwhile is added to Redis when Redis is
back, so the day's counter is whole again. Without REDIS_URL, one instance counts in memory.

Redis is reached through the app's one owner (app/redis_connection.py): the budget's client is
SharedRedis.commands, its outage state SharedRedis.budget_health(), so /readyz (`redisUses`:
`tokenBudget`) and the `chat_redis_fallback` gauge report it.

Each counter is named by `counter_name(day, key_part)`: the day alone for the deployment's
budget (and the default site's), `site{id}` before it for another site's, whose limit may be the
site's own daily budget (`reserve(..., limit=)`; app/sites.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from .errors import BudgetExhausted
from .redis_connection import RedisHealth, SharedRedis

log = logging.getLogger(__name__)

# A rough tokens-per-character ratio for text the upstream has not counted.
CHARS_PER_TOKEN = 4
# While Redis is out, it is tried again this often; the first success adds the outage's spend.
PROBE_EVERY_S = 2.0
# A day's counter outlives its day a little, for the reconciliation of a late outage.
DAY_KEY_TTL_S = 2 * 86400

# Check and reserve in one step: nothing can come between the check and the add.
_RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if used + want > tonumber(ARGV[2]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], want)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, used}
"""


def estimate_tokens(*chars: int) -> int:
    """Tokens for text the upstream did not count: about four characters each."""
    return math.ceil(sum(chars) / CHARS_PER_TOKEN)


def budget_day(now: float | None = None) -> str:
    """The budget's day (UTC), which names its counter."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def counter_name(day: str, key_part: str = "") -> str:
    """The name of one budget's counter for `day`: the day, after `key_part` when there is one
    (a budget of its own, e.g. a site's)."""
    return f"{key_part}:{day}" if key_part else day


@dataclass
class Reservation:
    """Tokens set aside for one answer until it settles; settling twice does nothing."""

    budget: TokenBudget
    counter: str  # counter_name(day, key_part): which count it is taken from
    tokens: int
    limit: int  # the counter's daily limit (the deployment's budget, or a site's own)
    # The outage in which `local` of its tokens were counted against the instance's share.
    outage: int | None = None
    local: int = 0
    settled: bool = False

    async def extend_to(self, tokens: int) -> bool:
        """Grow the reservation to `tokens` (the real prompt is known); False if it would cross."""
        extra = tokens - self.tokens
        if extra <= 0 or self.settled:
            return not self.settled
        if not await self.budget._take(self.counter, extra, self):
            return False
        self.tokens = tokens
        return True

    async def settle(self, used_tokens: int) -> None:
        """Charge what the answer really used; the rest of the reservation goes back."""
        if self.settled:
            return
        self.settled = True
        await self.budget._adjust(self, max(0, used_tokens) - self.tokens)

    async def release(self) -> None:
        """The answer made no paid call: give the whole reservation back."""
        await self.settle(0)


class TokenBudget:
    """The day's token budget, shared through Redis; `reserve` refuses with BudgetExhausted."""

    def __init__(self, daily_tokens: int, *, max_tokens: int, redis: SharedRedis | None,
                 key_prefix: str, fallback_share: float) -> None:
        self.daily_tokens = daily_tokens
        self.max_tokens = max_tokens
        self._redis = redis.commands if redis is not None else None
        # Asked of SharedRedis on first use, so /readyz reports the budget once there is one
        # (DAILY_TOKEN_BUDGET, or a site's own budget).
        self._shared = redis
        self._unused = RedisHealth("unused")
        self._key_prefix = key_prefix
        self._share_ratio = fallback_share
        self._share = math.floor(daily_tokens * fallback_share)
        self._script = (self._redis.register_script(_RESERVE_LUA) if self._redis is not None
                        else None)
        self._outage = 0
        # Per counter: tokens charged (or given back) while Redis was out, to add when it is back.
        self.unsynced: dict[str, int] = defaultdict(int)
        # Tokens this instance reserved during the current outage, against its share.
        self.outage_spent: dict[str, int] = defaultdict(int)
        # The day's counter as Redis last returned it; None: not seen since the start.
        self._last_seen: dict[str, int] = {}
        # Without Redis: the one instance's own count.
        self._memory: dict[str, int] = defaultdict(int)
        self._reconnect: asyncio.Task[None] | None = None
        # Called with "token_budget" on every refusal (the metrics count them).
        self.on_refusal: Callable[[str], None] | None = None

    @property
    def _health(self) -> RedisHealth:
        return self._shared.budget_health() if self._shared is not None else self._unused

    @property
    def fallback_share(self) -> int:
        """Tokens one instance may spend while Redis is unreachable."""
        return self._share

    @property
    def redis_down(self) -> bool:
        return self._health.down

    @property
    def _down(self) -> bool:
        return self._health.down

    def answer_estimate(self, prompt_chars: int, max_tokens: int | None = None) -> int:
        """The worst case of an answer to a prompt of `prompt_chars`: it plus MAX_TOKENS (or
        `max_tokens`, a site's own)."""
        return estimate_tokens(prompt_chars) + (self.max_tokens if max_tokens is None
                                                else max_tokens)

    async def reserve(self, tokens: int, key_part: str = "",
                      limit: int | None = None) -> Reservation:
        """Set `tokens` aside for one answer, from today's counter of the budget `key_part`
        names (the deployment's when empty), whose day allows `limit` tokens (None: the
        deployment's DAILY_TOKEN_BUDGET); BudgetExhausted when they would cross it."""
        counter = counter_name(budget_day(), key_part)
        reservation = Reservation(self, counter, 0, self.daily_tokens if limit is None else limit)
        if not await self._take(counter, tokens, reservation):
            if self.on_refusal is not None:
                self.on_refusal("token_budget")
            raise BudgetExhausted()
        reservation.tokens = tokens
        return reservation

    # -- the counters ------------------------------------------------------------------------

    def _key(self, counter: str) -> str:
        return f"{self._key_prefix}:budget:{counter}"

    def _share_of(self, limit: int) -> int:
        return self._share if limit == self.daily_tokens else math.floor(limit * self._share_ratio)

    async def _take(self, counter: str, tokens: int, reservation: Reservation) -> bool:
        """Add `tokens` to `counter` unless that would cross its limit (or the share)."""
        limit = reservation.limit
        if self._script is None:
            if self._memory[counter] + tokens > limit:
                return False
            self._memory[counter] += tokens
            return True
        if not self._down:
            try:
                allowed, used = await self._script(keys=[self._key(counter)],
                                                   args=[tokens, limit, DAY_KEY_TTL_S])
            except (RedisError, OSError) as exc:
                self._went_down(exc, "reserving tokens")
            else:
                self._last_seen[counter] = int(used)
                return bool(allowed)
        # The outage: this instance's share, and never past the room Redis last showed.
        room = self._share_of(limit) - self.outage_spent[counter]
        if counter in self._last_seen:
            room = min(room, limit - self._last_seen[counter] - self.unsynced[counter])
        if tokens > room:
            return False
        if reservation.outage != self._outage:
            reservation.outage, reservation.local = self._outage, 0
        reservation.local += tokens
        self.outage_spent[counter] += tokens
        self.unsynced[counter] += tokens
        return True

    async def _adjust(self, reservation: Reservation, delta: int) -> None:
        """Add `delta` (negative: tokens given back) to the reservation's counter, unconditionally."""
        counter = reservation.counter
        if self._down:
            if delta > 0:  # more than reserved (the upstream counted more): spent in the outage
                self.outage_spent[counter] += delta
            elif reservation.outage == self._outage:
                self.outage_spent[counter] -= min(reservation.local, -delta)
        if delta == 0:
            return
        if self._script is None:
            self._memory[counter] += delta
            return
        if not self._down:
            assert self._redis is not None
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incrby(self._key(counter), delta)
                    pipe.expire(self._key(counter), DAY_KEY_TTL_S)
                    used, _ = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._went_down(exc, "settling tokens")
            else:
                self._last_seen[counter] = int(used)
                return
        self.unsynced[counter] += delta

    # -- the outage --------------------------------------------------------------------------

    def _went_down(self, exc: BaseException, doing: str) -> None:
        if self._down:
            return
        self._health.failed(exc, doing)  # logs the outage, once
        log.warning("the token budget allows this instance %d tokens until Redis is back",
                    self._share)
        if self._reconnect is None or self._reconnect.done():
            # A hard reference: the loop keeps only weak ones to tasks.
            self._reconnect = asyncio.create_task(self._reconcile_when_back(),
                                                  name="token-budget-reconcile")

    async def _reconcile_when_back(self) -> None:
        """Try Redis every PROBE_EVERY_S; once it answers, add the outage's spend to it."""
        assert self._redis is not None
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                for counter, tokens in list(self.unsynced.items()):
                    if tokens:
                        async with self._redis.pipeline(transaction=True) as pipe:
                            pipe.incrby(self._key(counter), tokens)
                            pipe.expire(self._key(counter), DAY_KEY_TTL_S)
                            used, _ = await pipe.execute()
                        # Charges made while this one was on the wire stay for the next round.
                        self.unsynced[counter] -= tokens
                        self._last_seen[counter] = int(used)
                    if not self.unsynced[counter]:
                        del self.unsynced[counter]
                if any(self.unsynced.values()):
                    continue
            except (RedisError, OSError):
                continue
            # The outage is over: reservations made in it now live in Redis like any other.
            self._outage += 1
            self.outage_spent.clear()
            self._health.ok()  # logs the recovery, once
            return

    async def aclose(self) -> None:
        """Stop the reconciliation; the client is SharedRedis's to close."""
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
