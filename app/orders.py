"""Orders at the store: the connector a site's order API is called through.

The contract a store implements (README "The store connector"; app/demo_orders.py is the
reference implementation):

    GET {ORDERS_API_URL}/orders/{number}?customer={id}   a verified customer's order
    GET {ORDERS_API_URL}/orders/{number}?email={email}   an anonymous shopper's, by its email
    GET {ORDERS_API_URL}/orders?customer={id}&limit=5    a verified customer's recent orders
    Authorization: Bearer {ORDERS_API_TOKEN}

200 with the order's JSON (`{"number", "status", "items": [{"name", "quantity"}], "carrier",
"trackingUrl", "expectedDelivery", "customer", "email"}`); 404 when there is no such order *or
it is not that customer's*: the store must answer both the same way. This side checks again
(`customer`/`email` in the body must match when present), and turns both into `None`, so an
order of another customer is never told apart from one that does not exist.

The authority for a lookup is always the verified identity or the email the shopper typed,
never a model's argument. Answers are cached per order and shopper for ORDERS_CACHE_S.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import quote

import httpx

from .identity import Customer
from .sites import Site

log = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000
RECENT_ORDERS = 5
# An order number as it goes into a URL path: nothing that could change the path.
_ORDER_NUMBER = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


class StoreUnreachable(Exception):
    """The store's order API failed, timed out or answered something unreadable."""


class OrderItem(TypedDict):
    name: str
    quantity: int


class OrderSummary(TypedDict):
    """What a shopper may see of an order (the `tool` event's `order`, the model's tool result)."""

    number: str
    status: str
    items: list[OrderItem]
    carrier: str | None
    trackingUrl: str | None
    expectedDelivery: str | None


@dataclass(frozen=True)
class Authority:
    """Whose orders a lookup may see: a verified customer, else the email the shopper gave."""

    customer: Customer | None = None
    email: str | None = None

    @property
    def params(self) -> dict[str, str]:
        if self.customer is not None:
            return {"customer": self.customer.id}
        assert self.email is not None
        return {"email": self.email}

    @property
    def cache_key(self) -> str:
        return f"c:{self.customer.id}" if self.customer is not None else f"e:{self.email}"

    def owns(self, body: dict[str, Any]) -> bool:
        """The store's answer is for this shopper (when it says whose it is)."""
        if self.customer is not None:
            owner = body.get("customer")
            return owner is None or str(owner) == self.customer.id
        email = body.get("email")
        return email is None or str(email).strip().lower() == self.email


def email_in(text: str) -> str | None:
    """The email address an anonymous shopper typed, if any."""
    found = _EMAIL.search(text)
    return None if found is None else found.group(0).lower()


def order_number_in(text: str, pattern: str) -> str | None:
    """The first order number in the shopper's message (the pattern's first group, or its
    whole match without '#')."""
    try:
        found = re.search(pattern, text)
    except re.error:
        return None
    if found is None:
        return None
    number = (found.group(1) if found.groups() else found.group(0)).lstrip("#")
    return number if _ORDER_NUMBER.match(number) else None


def _text(value: object, limit: int = 200) -> str | None:
    return None if value is None else str(value)[:limit]


def _http_url(value: object) -> str | None:
    """A tracking link the widget may open: http(s) only, never javascript:."""
    text = _text(value, 1000)
    return text if text is not None and re.match(r"^https?://", text) else None


def summarise(body: dict[str, Any]) -> OrderSummary:
    items: list[OrderItem] = []
    for item in body.get("items") or []:
        if isinstance(item, dict) and item.get("name"):
            quantity = item.get("quantity", 1)
            items.append({"name": str(item["name"])[:200],
                          "quantity": quantity if isinstance(quantity, int) else 1})
    return {"number": str(body["number"])[:40], "status": str(body.get("status", "unknown"))[:60],
            "items": items[:20], "carrier": _text(body.get("carrier")),
            "trackingUrl": _http_url(body.get("trackingUrl")),
            "expectedDelivery": _text(body.get("expectedDelivery"), 40)}


class OrdersClient:
    """Calls each site's order API (or the deployment's), with a short per-order cache."""

    def __init__(self, http: httpx.AsyncClient, *, default_url: str = "",
                 default_token: str = "", default_pattern: str = r"#?(\d{4,8})",
                 cache_s: float = 60.0, timeout_s: float = 5.0) -> None:
        self._http = http
        self._default_url = default_url.rstrip("/")
        self._default_token = default_token
        self._default_pattern = default_pattern
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._cache: OrderedDict[tuple[int, str, str], tuple[float, OrderSummary | None]] = \
            OrderedDict()
        self.store_calls = 0

    def _api(self, site: Site | None) -> tuple[str, str]:
        if site is not None and site.orders_api_url:
            return site.orders_api_url.rstrip("/"), site.orders_api_token or ""
        return self._default_url, self._default_token

    def configured(self, site: Site | None) -> bool:
        return bool(self._api(site)[0])

    def pattern(self, site: Site | None) -> str:
        return (site.order_number_pattern if site is not None and site.order_number_pattern
                else self._default_pattern)

    async def _get(self, site: Site | None, path: str, params: dict[str, str]) -> httpx.Response:
        base, token = self._api(site)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self._send("GET", f"{base}{path}", params=params, headers=headers)

    async def _send(self, method: str, url: str, **options: Any) -> httpx.Response:
        self.store_calls += 1
        try:
            response = await self._http.request(method, url, timeout=self.timeout_s, **options)
        except httpx.TimeoutException:
            log.warning("the store's order API timed out")
            raise StoreUnreachable("timeout") from None
        except httpx.HTTPError as exc:
            log.warning("the store's order API is unreachable: %s", type(exc).__name__)
            raise StoreUnreachable("unreachable") from None
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            log.warning("the store's order API answered HTTP %s", response.status_code)
            raise StoreUnreachable(f"HTTP {response.status_code}")
        return response

    async def lookup(self, site: Site | None, number: str, authority: Authority
                     ) -> OrderSummary | None:
        """The order if it is this shopper's; None if it does not exist or is someone else's."""
        if not _ORDER_NUMBER.match(number):
            return None
        site_id = 0 if site is None else site.id
        key = (site_id, number, authority.cache_key)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        base, token = self._api(site)
        if shopify.is_shopify(base):
            nodes = await self._shopify(base, token, authority, number, 1)
            order = shopify.order_from_node(nodes[0]) if nodes else None
            if order is not None and order["number"] != number:
                order = None
            self._remember(key, order, now)
            return order
        response = await self._get(site, f"/orders/{quote(number)}", authority.params)
        order = None
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                raise StoreUnreachable("not JSON") from None
            if (isinstance(body, dict) and str(body.get("number", "")) == number
                    and authority.owns(body)):
                order = summarise(body)
        elif response.status_code != 404:
            raise StoreUnreachable(f"HTTP {response.status_code}")
        self._remember(key, order, now)
        return order

    async def recent(self, site: Site | None, customer: Customer) -> list[OrderSummary]:
        """A verified customer's latest orders (never for an anonymous shopper)."""
        authority = Authority(customer=customer)
        base, token = self._api(site)
        if shopify.is_shopify(base):
            nodes = await self._shopify(base, token, authority, None, RECENT_ORDERS)
            return [shopify.order_from_node(node) for node in nodes]
        response = await self._get(site, "/orders",
                                   {**authority.params, "limit": str(RECENT_ORDERS)})
        if response.status_code != 200:
            return []
        try:
            body = response.json()
        except ValueError:
            raise StoreUnreachable("not JSON") from None
        orders = body.get("orders") if isinstance(body, dict) else None
        return [summarise(order) for order in (orders or [])[:RECENT_ORDERS]
                if isinstance(order, dict) and "number" in order and authority.owns(order)]

    async def _shopify(self, base: str, token: str, authority: Authority, number: str | None,
                       first: int) -> list[dict[str, Any]]:
        body = shopify.request_body(authority, number, first)
        if body is None:
            return []  # a term Shopify's search syntax could misread: nothing is looked up
        response = await self._send("POST", shopify.graphql_url(base), json=body,
                                    headers={"X-Shopify-Access-Token": token})
        if response.status_code != 200:
            log.warning("Shopify answered HTTP %s", response.status_code)
            raise StoreUnreachable(f"HTTP {response.status_code}")
        try:
            return shopify.orders_in(response.json(), authority)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("Shopify sent an answer that is not an orders list")
            raise StoreUnreachable("bad answer") from None

    def _remember(self, key: tuple[int, str, str], order: OrderSummary | None,
                  now: float) -> None:
        if self.cache_s <= 0:
            return
        self._cache[key] = (now + self.cache_s, order)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)


# At the end: app/shopify.py builds on this module's Authority and summarise.
from . import shopify  # noqa: E402
