"""The store connector against the demo store's order API served on loopback: lookups by
verified customer and by email, another customer's order exactly like a missing one, the
per-order cache, timeouts and failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.demo_orders import DEMO_TOKEN, create_demo_orders_app
from app.identity import Customer
from app.orders import Authority, OrdersClient, StoreUnreachable, email_in, order_number_in
from tests.orders_server import serve

DEMO = Customer("demo-customer", "demo@example.com")
OTHER = Customer("other-customer", "other@example.com")


@pytest.fixture
async def store_url() -> AsyncIterator[str]:
    async with serve(create_demo_orders_app()) as url:
        yield url


@pytest.fixture
async def orders(store_url: str) -> AsyncIterator[OrdersClient]:
    async with httpx.AsyncClient() as http:
        yield OrdersClient(http, default_url=store_url, default_token=DEMO_TOKEN)


async def test_a_verified_customer_sees_their_order(orders: OrdersClient) -> None:
    order = await orders.lookup(None, "1042", Authority(customer=DEMO))
    assert order is not None
    assert order["status"] == "shipped" and order["carrier"] == "Royal Mail"
    assert order["trackingUrl"] == "https://track.example.com/RM104200042GB"
    assert order["items"][1] == {"name": "Saffron cushion cover", "quantity": 2}
    # The summary carries nothing about who the customer is.
    assert "customer" not in order and "email" not in order


async def test_another_customers_order_looks_exactly_like_a_missing_one(
        orders: OrdersClient, store_url: str) -> None:
    assert await orders.lookup(None, "2001", Authority(customer=DEMO)) is None
    assert await orders.lookup(None, "9999", Authority(customer=DEMO)) is None
    # And at the store itself, byte for byte the same answer.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {DEMO_TOKEN}"}) as http:
        theirs = await http.get(f"{store_url}/orders/2001", params={"customer": "demo-customer"})
        missing = await http.get(f"{store_url}/orders/9999", params={"customer": "demo-customer"})
    assert (theirs.status_code, theirs.content) == (missing.status_code, missing.content)


async def test_an_anonymous_shopper_needs_the_orders_email(orders: OrdersClient) -> None:
    assert await orders.lookup(None, "1042", Authority(email="demo@example.com")) is not None
    assert await orders.lookup(None, "1042", Authority(email="other@example.com")) is None


async def test_a_store_that_answers_for_someone_else_is_not_believed() -> None:
    """Defence in depth: a store that ignores ?customer= still cannot leak an order."""
    async def careless(request: Request) -> Response:
        return JSONResponse({"number": "2001", "customer": "other-customer", "status": "x"})

    async with serve(Starlette(routes=[Route("/orders/{n}", careless)])) as url, \
            httpx.AsyncClient() as http:
        client = OrdersClient(http, default_url=url)
        assert await client.lookup(None, "2001", Authority(customer=DEMO)) is None


async def test_recent_orders_are_the_customers_own_newest_first(orders: OrdersClient) -> None:
    recent = await orders.recent(None, DEMO)
    assert [order["number"] for order in recent] == ["1042", "1037"]
    assert [order["number"] for order in await orders.recent(None, OTHER)] == ["2001"]


async def test_asking_twice_costs_one_store_call(orders: OrdersClient) -> None:
    for _ in range(3):
        await orders.lookup(None, "1042", Authority(customer=DEMO))
        await orders.lookup(None, "2001", Authority(customer=DEMO))
    assert orders.store_calls == 2



async def test_without_a_cache_every_question_asks_the_store(store_url: str) -> None:
    async with httpx.AsyncClient() as http:
        fresh = OrdersClient(http, default_url=store_url, default_token=DEMO_TOKEN, cache_s=0)
        await fresh.lookup(None, "1042", Authority(customer=DEMO))
        await fresh.lookup(None, "1042", Authority(customer=DEMO))
    assert fresh.store_calls == 2


async def test_a_slow_or_failing_store_is_store_unreachable() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return JSONResponse({})

    async def broken(request: Request) -> Response:
        return JSONResponse({"error": "boom"}, status_code=500)

    app = Starlette(routes=[Route("/slow/orders/{n}", slow), Route("/broken/orders/{n}", broken)])
    async with serve(app) as url, httpx.AsyncClient() as http:
        for base in (f"{url}/slow", f"{url}/broken"):
            client = OrdersClient(http, default_url=base, timeout_s=0.3)
            with pytest.raises(StoreUnreachable):
                await client.lookup(None, "1042", Authority(customer=DEMO))
        release.set()


async def test_a_wrong_bearer_token_is_refused_by_the_demo_store(store_url: str) -> None:
    async with httpx.AsyncClient() as http:
        client = OrdersClient(http, default_url=store_url, default_token="wrong")
        with pytest.raises(StoreUnreachable):
            await client.lookup(None, "1042", Authority(customer=DEMO))


def test_order_numbers_and_emails_are_found_in_a_message() -> None:
    pattern = r"#?(\d{4,8})"
    assert order_number_in("where is my order #1042?", pattern) == "1042"
    assert order_number_in("where is my order 1042?", pattern) == "1042"
    assert order_number_in("I ordered 3 mugs", pattern) is None
    assert order_number_in("order A-77", r"(A-\d+)") == "A-77"
    assert order_number_in("order ../../x", r"(\S+/\S+)") is None  # never a path
    assert email_in("order 1042, my email is Demo@Example.com thanks") == "demo@example.com"
    assert email_in("no address here") is None
