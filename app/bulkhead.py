"""The lookups' own share of the database pool, so that cheap requests cannot starve answers.

History, resume and cancel are cheap one-shot reads that anyone can send by the hundred
(an unknown id costs the same query as a known one). Without a bound they can hold every pooled
connection at once, and a shopper's answer then waits for the pool. The bulkhead lets at most
DB_POOL_LOOKUPS of them use the database at a time; the others are refused at once with 503 and
Retry-After, and the rest of the pool always stays free for answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .errors import ServiceUnavailable

# A burst is queued this long for a free slot before it is refused.
SLOT_WAIT_S = 0.2
RETRY_AFTER_S = 1


class LookupsBusy(ServiceUnavailable):
    """Too many lookups at once: their share of the database is in use."""

    code = "lookups_busy"
    message = "Too many requests at once. Please try again in a moment."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(RETRY_AFTER_S)})


class Bulkhead:
    """At most `slots` lookups in the database at once; the rest get LookupsBusy quickly."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._semaphore = asyncio.Semaphore(slots)
        self.refused = 0

    @property
    def full(self) -> bool:
        """Every slot is in use: the next lookup waits, then is refused."""
        return self._semaphore.locked()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(SLOT_WAIT_S):
                await self._semaphore.acquire()
        except TimeoutError:
            self.refused += 1
            raise LookupsBusy() from None
        try:
            yield
        finally:
            self._semaphore.release()


def lookup_slots(pool_max: int, lookups: int) -> int:
    """The lookups' share, never the whole pool: one connection at least stays for answers."""
    return max(1, min(lookups, pool_max - 1))
