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

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import BudgetExhausted

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


@dataclass
class Reservation:
    """Tokens set aside for one answer until it settles; settling twice does nothing."""

    budget: TokenBudget
    day: str
    tokens: int
    # The outage in which `local` of its tokens were counted against the instance's share.
    outage: int | None = None
    local: int = 0
    settled: bool = False

    async def extend_to(self, tokens: int) -> bool:
        """Grow the reservation to `tokens` (the real prompt is known); False if it would cross."""
        extra = tokens - self.tokens
        if extra <= 0 or self.settled:
            return not self.settled
        if not await self.budget._take(self.day, extra, self):
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

    def __init__(self, daily_tokens: int, *, max_tokens: int, redis: Redis | None,
                 key_prefix: str, fallback_share: float) -> None:
        self.daily_tokens = daily_tokens
        self.max_tokens = max_tokens
        self._redis = redis
        self._key_prefix = key_prefix
        self._share = math.floor(daily_tokens * fallback_share)
        self._script = redis.register_script(_RESERVE_LUA) if redis is not None else None
        self._down = False
        self._outage = 0
        # Tokens charged (or given back) while Redis was out, to add when it is back.
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
    def fallback_share(self) -> int:
        """Tokens one instance may spend while Redis is unreachable."""
        return self._share

    @property
    def redis_down(self) -> bool:
        return self._down

    def answer_estimate(self, prompt_chars: int) -> int:
        """The worst case of an answer to a prompt of `prompt_chars`: it plus MAX_TOKENS."""
        return estimate_tokens(prompt_chars) + self.max_tokens

    async def reserve(self, tokens: int) -> Reservation:
        day = budget_day()
        reservation = Reservation(self, day, 0)
        if not await self._take(day, tokens, reservation):
            if self.on_refusal is not None:
                self.on_refusal("token_budget")
            raise BudgetExhausted()
        reservation.tokens = tokens
        return reservation

    # -- the counters ------------------------------------------------------------------------

    def _key(self, day: str) -> str:
        return f"{self._key_prefix}:budget:{day}"

    async def _take(self, day: str, tokens: int, reservation: Reservation) -> bool:
        """Add `tokens` to the day's count unless that would cross the budget (or the share)."""
        if self._script is None:
            if self._memory[day] + tokens > self.daily_tokens:
                return False
            self._memory[day] += tokens
            return True
        if not self._down:
            try:
                allowed, used = await self._script(keys=[self._key(day)],
                                                   args=[tokens, self.daily_tokens, DAY_KEY_TTL_S])
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            else:
                self._last_seen[day] = int(used)
                return bool(allowed)
        # The outage: this instance's share, and never past the room Redis last showed.
        room = self._share - self.outage_spent[day]
        if day in self._last_seen:
            room = min(room, self.daily_tokens - self._last_seen[day] - self.unsynced[day])
        if tokens > room:
            return False
        if reservation.outage != self._outage:
            reservation.outage, reservation.local = self._outage, 0
        reservation.local += tokens
        self.outage_spent[day] += tokens
        self.unsynced[day] += tokens
        return True

    async def _adjust(self, reservation: Reservation, delta: int) -> None:
        """Add `delta` (negative: tokens given back) to the reservation's day, unconditionally."""
        day = reservation.day
        if self._down:
            if delta > 0:  # more than reserved (the upstream counted more): spent in the outage
                self.outage_spent[day] += delta
            elif reservation.outage == self._outage:
                self.outage_spent[day] -= min(reservation.local, -delta)
        if delta == 0:
            return
        if self._script is None:
            self._memory[day] += delta
            return
        if not self._down:
            assert self._redis is not None
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incrby(self._key(day), delta)
                    pipe.expire(self._key(day), DAY_KEY_TTL_S)
                    used, _ = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._went_down(exc)
            else:
                self._last_seen[day] = int(used)
                return
        self.unsynced[day] += delta

    # -- the outage --------------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        log.warning("Redis unreachable (%s): the token budget allows this instance %d tokens "
                    "until it is back", type(exc).__name__, self._share)
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
                for day, tokens in list(self.unsynced.items()):
                    if tokens:
                        async with self._redis.pipeline(transaction=True) as pipe:
                            pipe.incrby(self._key(day), tokens)
                            pipe.expire(self._key(day), DAY_KEY_TTL_S)
                            used, _ = await pipe.execute()
                        # Charges made while this one was on the wire stay for the next round.
                        self.unsynced[day] -= tokens
                        self._last_seen[day] = int(used)
                    if not self.unsynced[day]:
                        del self.unsynced[day]
                if any(self.unsynced.values()):
                    continue
            except (RedisError, OSError):
                continue
            # The outage is over: reservations made in it now live in Redis like any other.
            self._down = False
            self._outage += 1
            self.outage_spent.clear()
            log.warning("Redis reachable again: the token budget is shared again")
            return

    async def aclose(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._redis is not None:
            await self._redis.aclose()
