"""The Shopify connector, with respx answering in the Admin GraphQL API's response shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from app.identity import Customer
from app.orders import Authority, OrdersClient, StoreUnreachable

SHOP = "https://northwind.myshopify.com"
GRAPHQL = f"{SHOP}/admin/api/2025-01/graphql.json"
ANA = Customer("207119551", "ana@example.com")


def order_node(name: str, customer_id: str, email: str) -> dict[str, Any]:
    """An order node as Shopify sends it for ORDER_FIELDS."""
    return {
        "name": name, "email": email, "displayFulfillmentStatus": "FULFILLED",
        "customer": {"id": f"gid://shopify/Customer/{customer_id}", "email": email},
        "lineItems": {"edges": [{"node": {"title": "Stoneware mug", "quantity": 2}}]},
        "fulfillments": [{"estimatedDeliveryAt": "2026-12-04T17:00:00Z",
                          "trackingInfo": [{"company": "Canada Post", "number": "7316",
                                            "url": "https://www.canadapost-postescanada.ca/track?7316"}]}],
    }


def answer(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"orders": {"edges": [{"node": node} for node in nodes]}},
            "extensions": {"cost": {"requestedQueryCost": 32, "actualQueryCost": 8,
                                    "throttleStatus": {"maximumAvailable": 2000.0,
                                                       "currentlyAvailable": 1992,
                                                       "restoreRate": 100.0}}}}


@pytest.fixture
def shop() -> Iterator[tuple[respx.Route, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    with respx.mock(assert_all_called=False) as router:
        route = router.post(GRAPHQL)

        def record(request: httpx.Request) -> httpx.Response:
            seen.append({"body": json.loads(request.content),
                         "token": request.headers.get("x-shopify-access-token")})
            return route.return_value or httpx.Response(200, json=answer())

        route.side_effect = record
        yield route, seen


@pytest.fixture
async def orders() -> AsyncIterator[OrdersClient]:
    async with httpx.AsyncClient() as http:
        yield OrdersClient(http, default_url=SHOP, default_token="shpat_test")


async def test_an_order_is_searched_by_name_and_customer_and_summarised(
        shop: tuple[respx.Route, list[dict[str, Any]]], orders: OrdersClient) -> None:
    route, seen = shop
    route.return_value = httpx.Response(200, json=answer(
        order_node("#1042", "207119551", "ana@example.com")))
    order = await orders.lookup(None, "1042", Authority(customer=ANA))
    assert order == {"number": "1042", "status": "fulfilled",
                     "items": [{"name": "Stoneware mug", "quantity": 2}],
                     "carrier": "Canada Post",
                     "trackingUrl": "https://www.canadapost-postescanada.ca/track?7316",
                     "expectedDelivery": "2026-12-04"}
    assert seen[0]["token"] == "shpat_test"
    assert seen[0]["body"]["variables"]["query"] == "name:#1042 AND customer_id:207119551"


async def test_another_customers_order_is_not_found_even_if_shopify_returns_it(
        shop: tuple[respx.Route, list[dict[str, Any]]], orders: OrdersClient) -> None:
    route, _ = shop
    route.return_value = httpx.Response(200, json=answer(
        order_node("#1042", "999", "someone@example.com")))
    assert await orders.lookup(None, "1042", Authority(customer=ANA)) is None
    assert await orders.lookup(None, "1042", Authority(email="ana@example.com")) is None


async def test_an_anonymous_shopper_is_searched_by_email(
        shop: tuple[respx.Route, list[dict[str, Any]]], orders: OrdersClient) -> None:
    route, seen = shop
    route.return_value = httpx.Response(200, json=answer(
        order_node("#1042", "207119551", "ana@example.com")))
    assert await orders.lookup(None, "1042", Authority(email="ana@example.com"))
    assert seen[0]["body"]["variables"]["query"] == "name:#1042 AND email:ana@example.com"


async def test_a_term_that_could_change_the_search_is_never_sent(
        shop: tuple[respx.Route, list[dict[str, Any]]], orders: OrdersClient) -> None:
    _, seen = shop
    sneaky = Authority(email="x@example.com OR name:*")
    assert await orders.lookup(None, "1042", sneaky) is None
    assert seen == []


async def test_recent_orders_and_failures(
        shop: tuple[respx.Route, list[dict[str, Any]]], orders: OrdersClient) -> None:
    route, _ = shop
    route.return_value = httpx.Response(200, json=answer(
        order_node("#1042", "207119551", "ana@example.com"),
        order_node("#1001", "207119551", "ana@example.com")))
    assert [o["number"] for o in await orders.recent(None, ANA)] == ["1042", "1001"]
    for failure in (httpx.Response(503), httpx.Response(200, json={"errors": [
            {"message": "Throttled", "extensions": {"code": "THROTTLED"}}]})):
        route.return_value = failure
        with pytest.raises(StoreUnreachable):
            await orders.lookup(None, "1050", Authority(customer=ANA))
