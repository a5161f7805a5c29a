"""Redis clients that fail fast, and an outage tracker that logs once per outage.

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

log = logging.getLogger(__name__)

# One command, or one pipeline of a few hundred, takes well under a millisecond on a healthy
# Redis; half a second means it is gone or overloaded, and memory serves instead.
COMMAND_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5


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
    """Whether Redis is in an outage; the first failure and the recovery are logged, once each."""

    def __init__(self) -> None:
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Redis unreachable (%s while %s): answers stream from this instance's "
                        "memory until it is back", type(exc).__name__, doing)

    def ok(self) -> None:
        if self._down_since is not None:
            log.warning("Redis reachable again after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
