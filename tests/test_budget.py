"""The daily token budget is a guarantee: reserved before an answer starts, settled at its end,
and kept to a share per instance while Redis is unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast

import httpx
import redis.asyncio as redis_asyncio

from app.budget import TokenBudget, budget_day
from app.errors import BudgetExhausted
from app.ratelimit import site_budget
from app.redis_connection import SharedRedis
from app.services import services_of
from app.sites import DEFAULT_SITE_ID, Site
from app.store_profile import StoreProfile
from tests.conftest import FakeUpstream, Reply, RunningApp, read_events, stream_chat
from tests.tcp_proxy import TcpProxy
from tests.test_admin import make_staff

# Each answer may use up to MAX_TOKENS, and its prompt (a few hundred tokens) comes on top: three
# worst cases fit in the budget with room to spare for the prompts, a fourth does not.
MAX_TOKENS = 20_000
PROMPT_ROOM = 2_000
FITS_THREE = 3 * (MAX_TOKENS + PROMPT_ROOM)
USAGE = {"prompt_tokens": 500, "completion_tokens": 15_000, "total_tokens": 15_500}


def budget_key(app: RunningApp) -> str:
    return f"{services_of(app.app).settings.redis_prefix}:budget:{budget_day()}"


async def counter(redis_url: str, key: str) -> int:
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        return int(await client.get(key) or 0)
    finally:
        await client.aclose()


async def wait_for(condition: Callable[[], Any], what: str, tries: int = 400) -> None:
    """Poll `condition` until it holds; the deadline is a guard against a hang."""
    for _ in range(tries):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@contextlib.asynccontextmanager
async def peak_of(redis_url: str, key: str) -> AsyncIterator[list[int]]:
    """Watch the counter while the block runs; the list holds every value seen."""
    seen: list[int] = []
    client = redis_asyncio.Redis.from_url(redis_url)
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            seen.append(int(await client.get(key) or 0))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        # Told to stop, not cancelled: a cancel that lands inside redis-py's command timeout can
        # come out as a timeout it retries, and the watcher then never ended (a run hung here).
        stop.set()
        await asyncio.wait_for(watcher, 10)
        await client.aclose()


async def test_twelve_answers_at_once_against_a_budget_that_fits_three(
        start_app: Any, upstream: FakeUpstream, redis_url: str) -> None:
    app: RunningApp = await start_app(daily_token_budget=FITS_THREE, max_tokens=MAX_TOKENS)
    gate = asyncio.Event()
    upstream.default = Reply(gate=gate, usage=USAGE)
    statuses: list[int] = []
    refusals: list[str] = []
    answers: list[str] = []

    async def ask(http: httpx.AsyncClient) -> None:
        async with http.stream("POST", "/chat/stream",
                               json={"message": "Do you ship abroad?"}) as response:
            statuses.append(response.status_code)
            if len(statuses) == 12:
                gate.set()  # every request has its answer: the started ones may now go on
            if response.status_code != 200:
                refusals.append(json.loads(await response.aread())["error"]["code"])
                return
            async for event in read_events(response):
                if event.event in ("done", "error"):
                    answers.append(event.event)
                    return

    async with peak_of(redis_url, budget_key(app)) as seen, app.client() as http:
        # A guard against a hang, not a measurement. The timeout surfaces as TimeoutError only
        # where its block ends (inside it, the gather sees a cancellation): catch it out here.
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(ask(http) for _ in range(12)))
        except TimeoutError:
            raise AssertionError(f"stuck: {statuses=} {refusals=} {answers=}") from None
        finally:
            gate.set()  # whatever happened, no answer stays held
        expected = 3 * USAGE["total_tokens"]
        await wait_for(lambda: _equals(counter(redis_url, budget_key(app)), expected),
                       "the three answers settled")

    assert sorted(statuses) == [200] * 3 + [503] * 9
    assert refusals == ["budget_exhausted"] * 9
    assert answers == ["done"] * 3
    assert len(upstream.requests) == 3  # no paid call for a refused answer
    assert max(seen) <= FITS_THREE
    assert await counter(redis_url, budget_key(app)) == 3 * USAGE["total_tokens"]


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_a_failed_answer_gives_its_reservation_back(
        start_app: Any, upstream: FakeUpstream, redis_url: str) -> None:
    app: RunningApp = await start_app(daily_token_budget=FITS_THREE, max_tokens=MAX_TOKENS)
    # The model fails before its first token: the knowledge base answers, no tokens were paid.
    upstream.queue(*[Reply(status=500)] * 3)
    async with app.client() as http:
        response = await http.post("/chat/stream", json={"message": "Do you ship abroad?"})
    assert response.status_code == 200
    await wait_for(lambda: _equals(counter(redis_url, budget_key(app)), 0), "released")
    # And the whole budget is there for the next answers.
    upstream.default = Reply(usage=USAGE)
    async with app.client() as http:
        statuses = [(await http.post("/chat/stream", json={"message": "hi"})).status_code
                    for _ in range(3)]
    assert statuses == [200] * 3


async def test_spent_tokens_refuse_new_answers_once_the_budget_has_no_room(
        start_app: Any, upstream: FakeUpstream) -> None:
    # Each answer may use 2,000 tokens and uses them: two fit in 5,000, a third does not.
    app: RunningApp = await start_app(daily_token_budget=5000, max_tokens=2000)
    upstream.default = Reply(usage={"prompt_tokens": 1000, "completion_tokens": 1000,
                                    "total_tokens": 2000})
    async with app.client() as http:
        assert (await http.post("/chat/stream", json={"message": "hi"})).status_code == 200
        assert (await http.post("/chat/stream", json={"message": "hi"})).status_code == 200
        refused = await http.post("/chat/stream", json={"message": "hi"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert len(upstream.requests) == 2  # no paid call for the refused one


async def test_a_cancelled_answer_is_charged_an_estimate_and_gives_the_rest_back(
        start_app: Any, upstream: FakeUpstream, redis_url: str) -> None:
    app: RunningApp = await start_app(daily_token_budget=100_000, max_tokens=MAX_TOKENS)
    upstream.queue(Reply(tokens=[f"w{n} " for n in range(50)], delay=0.05))
    async with app.client() as http, http.stream("POST", "/chat/stream",
                                                  json={"message": "hi"}) as response:
        meta: dict[str, str] = {}
        async for event in read_events(response):
            if event.event == "meta":
                meta = event.data
            if event.event == "token":
                cancelled = await http.post(f"/chat/messages/{meta['messageId']}/cancel",
                                            params={"sessionId": meta["sessionId"]})
                assert cancelled.json()["status"] == "cancelled"
                break

    async def charged_an_estimate() -> bool:
        # The prompt and the few words streamed, estimated: far below the reservation.
        return 0 < await counter(redis_url, budget_key(app)) < MAX_TOKENS

    await wait_for(charged_an_estimate, "settled")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_instance_that_starts_without_redis_spends_only_its_share() -> None:
    """Not a fresh full budget per outage or restart: a small share of it."""
    redis = SharedRedis(f"redis://127.0.0.1:{closed_port()}/0")
    budget = TokenBudget(10_000, max_tokens=0, redis=redis, key_prefix="unused",
                         fallback_share=0.1)
    try:
        spent = [await budget.reserve(300) for _ in range(3)]
        try:
            await budget.reserve(300)
        except BudgetExhausted:
            pass
        else:
            raise AssertionError("a fourth reservation went past the instance's share")
        # Unused tokens come back to the share; used ones stay spent.
        await spent[0].settle(100)
        await budget.reserve(300)
        assert budget.outage_spent[budget_day()] == 1000 == budget.fallback_share
        # /readyz and the fallback gauge see the budget's use of Redis.
        assert redis.uses()["tokenBudget"] == "down"
        assert redis.fallback_level() == 1.0
    finally:
        await budget.aclose()
        await redis.aclose()


async def test_a_key_part_names_a_counter_of_its_own(redis_url: str) -> None:
    """A budget of its own (a site's, say) counts apart from the deployment's."""
    redis = SharedRedis(redis_url)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    budget = TokenBudget(1000, max_tokens=0, redis=redis, key_prefix=prefix, fallback_share=0.1)
    try:
        await budget.reserve(1000)
        await budget.reserve(1000, key_part="site-a")
        try:
            await budget.reserve(1, key_part="site-a")
        except BudgetExhausted:
            pass
        else:
            raise AssertionError("a counter went past its budget")
        assert await counter(redis_url, f"{prefix}:budget:{budget_day()}") == 1000
        assert await counter(redis_url, f"{prefix}:budget:site-a:{budget_day()}") == 1000
        assert redis.uses()["tokenBudget"] == "up"
    finally:
        await budget.aclose()
        await redis.aclose()


async def test_a_counter_may_have_a_limit_of_its_own(redis_url: str) -> None:
    """A site's own daily budget: the limit of its counter, in Redis and in the outage share."""
    redis = SharedRedis(redis_url)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    budget = TokenBudget(1000, max_tokens=0, redis=redis, key_prefix=prefix, fallback_share=0.1)
    try:
        held = await budget.reserve(200, key_part="site7", limit=300)
        assert held.limit == 300
        try:
            await budget.reserve(101, key_part="site7", limit=300)
        except BudgetExhausted:
            pass
        else:
            raise AssertionError("a counter went past its own limit")
        # Growing a reservation keeps to the same limit.
        assert await held.extend_to(300)
        assert not await held.extend_to(301)
        await held.settle(50)
        assert await counter(redis_url, f"{prefix}:budget:site7:{budget_day()}") == 50
        # The deployment's counter keeps the deployment's limit.
        await budget.reserve(1000)
    finally:
        await budget.aclose()
        await redis.aclose()


def test_a_sites_budget_counter_and_limit() -> None:
    """The default site's counter is the deployment's from before sites; another site's is its
    own, with its override as the limit (0: no budget)."""
    default = Site(id=DEFAULT_SITE_ID, key="default", name="Default", allowed_origins=(),
                   profile=cast(StoreProfile, None), own_profile=False, knowledge_dir=None)
    other = replace(default, id=7, key="other")
    assert site_budget(None, 1000) == ("", 1000)
    assert site_budget(default, 1000) == ("", 1000)
    assert site_budget(replace(default, daily_token_budget=50), 1000) == ("", 50)
    assert site_budget(other, 1000) == ("site7", 1000)
    assert site_budget(replace(other, daily_token_budget=300), 0) == ("site7", 300)
    assert site_budget(replace(other, daily_token_budget=0), 1000) == ("site7", 0)


async def test_an_outage_keeps_spend_within_the_share_and_is_reconciled_after(
        start_app: Any, upstream: FakeUpstream, redis_url: str) -> None:
    proxy = await TcpProxy.to_redis(redis_url).start()
    usage = {"prompt_tokens": 100, "completion_tokens": 900, "total_tokens": 1000}
    upstream.default = Reply(usage=usage)
    app: RunningApp = await start_app(redis_url=proxy.redis_url(), daily_token_budget=100_000,
                                      daily_token_budget_fallback_share=0.05, max_tokens=1000)
    budget = services_of(app.app).budget
    assert budget is not None
    key = budget_key(app)
    try:
        async with app.client() as http:
            assert (await http.post("/chat/stream", json={"message": "hi"})).status_code == 200
            await wait_for(lambda: _equals(counter(redis_url, key), 1000), "settled in Redis")

            await proxy.stop()  # Redis is gone
            statuses = []
            while len(statuses) < 20 and 503 not in statuses:
                response = await http.post("/chat/stream", json={"message": "hi"})
                statuses.append(response.status_code)
                assert budget.outage_spent[budget_day()] <= budget.fallback_share
            answered = statuses.count(200)
            assert statuses[-1] == 503 and response.json()["error"]["code"] == "budget_exhausted"
            assert answered >= 1 and answered * 1000 <= budget.fallback_share == 5000
            assert await counter(redis_url, key) == 1000  # nothing reached Redis meanwhile

            await proxy.start()  # Redis is back: the outage's spend is added to it
            await wait_for(lambda: _equals(counter(redis_url, key), 1000 + answered * 1000),
                           "reconciled")
            assert not budget.redis_down
            # The whole budget counts again, in Redis.
            assert (await http.post("/chat/stream", json={"message": "hi"})).status_code == 200
            await wait_for(lambda: _equals(counter(redis_url, key), 2000 + answered * 1000),
                           "settled in Redis again")
    finally:
        await proxy.stop()


async def test_a_message_a_person_answers_gives_its_reservation_back(
        start_app: Any, upstream: FakeUpstream, redis_url: str, database_url: str,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    """While a person has the conversation no answer starts: what was reserved for one before
    the endpoint knew it goes back at once, so the day's budget is not held by nothing."""
    app: RunningApp = await start_app(daily_token_budget=FITS_THREE, max_tokens=MAX_TOKENS)
    async with app.client() as http:
        events = await stream_chat(http, {"message": "Where is my order?"})
        session_id = events[0].data["sessionId"]
        await wait_for(lambda: _is(counter(redis_url, budget_key(app)), 19), "settled")
        agent = await make_staff(database_url, [DEFAULT_SITE_ID])
        query("UPDATE conversations SET status = 'human', agent_id = %s WHERE id = %s",
              agent.id, session_id)
        for _ in range(4):  # more than the budget fits worst cases of
            forwarded = await stream_chat(http, {"message": "Hello?", "sessionId": session_id})
            assert forwarded[-1].data["status"] == "forwarded"
    assert await counter(redis_url, budget_key(app)) == 19


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
