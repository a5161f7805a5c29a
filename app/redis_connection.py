"""The app's one owner of Redis: its clients, and the health of each use of it.

Three parts of the app use Redis, the rate limits (app/ratelimit.py), the shared event log
(app/redis_eventlog.py) and, when one is set, the daily token budget (app/budget.py).
`SharedRedis` builds every client they talk through and closes them, and keeps one `RedisHealth`
per use, so /readyz and the `chat_redis_fallback` gauge see each of them.

Redis is never allowed to stall a request or an answer: every command has a socket timeout well
under a second and no retries (redis-py retries three times with backoff by default, which turns
a dead server into seconds of waiting). A caller that gets an error falls back and moves on.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# One command, or one pipeline of a few hundred, takes well under a millisecond on a healthy
# Redis; half a second means it is gone or overloaded, and memory serves instead.
COMMAND_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5
# A rate-limit call slower than this is an outage, not a slow request: every request waits on it.
LIMITS_TIMEOUT_S = 0.25
# While Redis is out, one rate-limit check every this often tries it again.
LIMITS_PROBE_EVERY_S = 2.0


def connect(url: str, *, read_timeout_s: float = COMMAND_TIMEOUT_S) -> Redis:
    """A client for `url`; `read_timeout_s` above COMMAND_TIMEOUT_S for blocking reads only."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=read_timeout_s,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    return client


class RedisHealth:
    """Whether one use of Redis is in an outage; the first failure and the recovery are logged,
    once each. With `probe_every_s`, a use in an outage tries Redis only that often."""

    def __init__(self, fallback: str, *, probe_every_s: float = 0.0) -> None:
        self._fallback = fallback  # what the use does meanwhile, for the log line
        self._probe_every_s = probe_every_s
        self._down_since: float | None = None
        self._next_probe = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def state(self) -> str:
        return "down" if self.down else "up"

    def probe_due(self) -> bool:
        """Whether to try Redis now: always while it is up, every `probe_every_s` while down."""
        return self._down_since is None or time.monotonic() >= self._next_probe

    def failed(self, exc: BaseException, doing: str) -> None:
        now = time.monotonic()
        self._next_probe = now + self._probe_every_s
        if self._down_since is None:
            self._down_since = now
            log.warning("Redis unreachable (%s while %s): %s until it is back",
                        type(exc).__name__, doing, self._fallback)

    def ok(self) -> None:
        if self._down_since is not None:
            log.warning("Redis reachable again after %.1f s (%s no more)",
                        time.monotonic() - self._down_since, self._fallback)
            self._down_since = None


class SharedRedis:
    """The Redis clients of one app, and the health of each use; nothing connects until used."""

    def __init__(self, url: str) -> None:
        self.url = url
        # The event log's commands (pipelines of writes, reads of a stream).
        self.commands = connect(url)
        # The rate limits' client: tighter timeouts, and no health checks of idle connections.
        self.limits = Redis.from_url(
            url, socket_timeout=LIMITS_TIMEOUT_S, socket_connect_timeout=LIMITS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._blocking: list[Redis] = []
        self.rate_limits_health = RedisHealth("rate limits count per instance",
                                              probe_every_s=LIMITS_PROBE_EVERY_S)
        self.event_log_health = RedisHealth("answers stream from this instance's memory")
        # Only with a DAILY_TOKEN_BUDGET (see budget_health()).
        self._budget_health: RedisHealth | None = None

    def budget_health(self) -> RedisHealth:
        """The token budget's use of Redis (through `commands`); reported once asked for."""
        if self._budget_health is None:
            self._budget_health = RedisHealth(
                "the token budget allows this instance its DAILY_TOKEN_BUDGET_FALLBACK_SHARE")
        return self._budget_health

    def _healths(self) -> dict[str, RedisHealth]:
        healths = {"rateLimits": self.rate_limits_health, "eventLog": self.event_log_health}
        if self._budget_health is not None:
            healths["tokenBudget"] = self._budget_health
        return healths

    def blocking(self, read_timeout_s: float) -> Redis:
        """A client for blocking reads (XREAD BLOCK, pub/sub) that wait up to `read_timeout_s`."""
        client = connect(self.url, read_timeout_s=read_timeout_s)
        self._blocking.append(client)
        return client

    def uses(self) -> dict[str, str]:
        """Each use's state as it last saw Redis: 'up', or 'down' while it falls back."""
        return {use: health.state for use, health in self._healths().items()}

    def fallback_level(self) -> float:
        """The `chat_redis_fallback` gauge: 1 while any use falls back to memory."""
        return 1.0 if any(health.down for health in self._healths().values()) else 0.0

    async def ping(self) -> str:
        """'up' or 'down', bounded by the socket timeouts."""
        try:
            await self.limits.ping()
        except (RedisError, OSError):
            return "down"
        return "up"

    async def aclose(self) -> None:
        for client in (self.commands, self.limits, *self._blocking):
            await client.aclose()
