"""What relaying a token costs the producer's event loop: memory only vs copied to Redis.

    .venv/bin/python bench/relay_cost.py            # REDIS_URL, else redis://127.0.0.1:6379/0

For each scenario it prints, per token:
- `append`: the time of the synchronous `append` call the answer makes (mean and p99);
- `loop CPU`: the process's CPU time over the run divided by the tokens, so it includes the
  background flushes (building pipelines, parsing replies) and a local subscriber draining
  every event, which is what the event loop really spends per token. The Redis server's own
  CPU is another process and not counted.
- `flushes`: pipelines sent, and tokens per pipeline (how well appends are batched).

Figures only, no assertions: the machine is shared, so read them as orders of magnitude.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis  # noqa: E402

from app.eventlog import EventLog, MemoryEventLog  # noqa: E402
from app.redis_eventlog import RedisEventLog  # noqa: E402

TOKEN = {"text": " token"}


@dataclass(frozen=True)
class Scenario:
    name: str
    answers: int
    tokens_per_answer: int
    # Pause between two tokens of one answer; 0 means one token per event-loop turn.
    gap_s: float


SCENARIOS = [
    Scenario("1 answer, a token every loop turn", 1, 20_000, 0.0),
    Scenario("100 answers, a token every 5 ms each", 100, 200, 0.005),
    Scenario("500 answers, a token every 20 ms each", 500, 50, 0.02),
]


@dataclass
class Result:
    append_ns: list[int]
    cpu_s: float
    flushes: int


async def drain(events: Any) -> None:
    async for _ in events:
        pass


async def produce(log: EventLog, answer_id: str, scenario: Scenario, timings: list[int]) -> None:
    log.start(answer_id)
    log.append(answer_id, "meta", {"messageId": answer_id})
    for _ in range(scenario.tokens_per_answer):
        started = time.perf_counter_ns()
        log.append(answer_id, "token", TOKEN)
        timings.append(time.perf_counter_ns() - started)
        await asyncio.sleep(scenario.gap_s)
    log.append(answer_id, "done", {"text": "", "status": "complete"})


async def run(log: EventLog, scenario: Scenario) -> Result:
    flushes = 0
    if isinstance(log, RedisEventLog):
        flush_once = log._flush_once

        async def counted() -> None:
            nonlocal flushes
            flushes += 1 if log._pending else 0
            await flush_once()

        log._flush_once = counted  # type: ignore[method-assign]
    await log.open()
    timings: list[int] = []
    ids = [uuid.uuid4().hex for _ in range(scenario.answers)]
    cpu_before = time.process_time()
    producers = [asyncio.create_task(produce(log, answer_id, scenario, timings))
                 for answer_id in ids]
    await asyncio.sleep(0)  # each producer has started its answer
    subscribers = [asyncio.create_task(drain(log.subscribe(answer_id, 0))) for answer_id in ids]
    await asyncio.gather(*producers, *subscribers)
    await log.aclose()  # includes the last flush
    return Result(timings, time.process_time() - cpu_before, flushes)


def report(mode: str, scenario: Scenario, result: Result) -> None:
    tokens = len(result.append_ns)
    mean_us = statistics.fmean(result.append_ns) / 1000
    p99_us = statistics.quantiles(result.append_ns, n=100)[98] / 1000
    cpu_us = result.cpu_s / tokens * 1e6
    flushes = (f"{result.flushes:6d} flushes, {tokens / result.flushes:6.1f} tokens each"
               if result.flushes else "")
    print(f"  {mode:<7} append {mean_us:5.2f} us mean {p99_us:6.2f} us p99 | "
          f"loop CPU {cpu_us:6.1f} us/token | {flushes}")


async def main() -> None:
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    print(f"event loop: {type(asyncio.get_running_loop()).__module__}; Redis: {redis_url}")
    try:
        for scenario in SCENARIOS:
            tokens = scenario.answers * scenario.tokens_per_answer
            print(f"{scenario.name} ({tokens} tokens):")
            report("memory", scenario, await run(MemoryEventLog(), scenario))
            redis_log = RedisEventLog(redis_url, key_prefix=prefix, stream_ttl_s=60,
                                      stream_maxlen=10_000, lease_s=15)
            report("redis", scenario, await run(redis_log, scenario))
    finally:
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


if __name__ == "__main__":
    try:
        import uvloop  # what uvicorn runs the app on
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
