"""The Shopify connector: orders from the Shopify Admin GraphQL API instead of our contract.

A site uses it when its order API URL is a shop domain (`--orders-api-url
https://SHOP.myshopify.com --orders-api-token shpat_...`, an Admin API access token with
`read_orders`). The order is searched by name *and* by the shopper (the customer id, or the
email), and the answer is checked again here, so an order of another customer is not found,
exactly like one that does not exist. A verified shopper's `sub` is their Shopify customer id
(the number, or the `gid://shopify/Customer/…` id).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .orders import Authority, OrderSummary, summarise

API_VERSION = "2025-01"

ORDER_FIELDS = """
  name
  email
  displayFulfillmentStatus
  customer { id email }
  lineItems(first: 20) { edges { node { title quantity } } }
  fulfillments(first: 5) { estimatedDeliveryAt trackingInfo(first: 1) { company number url } }
"""
ORDERS_QUERY = ("query Orders($query: String!, $first: Int!) { orders(first: $first, query: $query,"
                " sortKey: CREATED_AT, reverse: true) { edges { node {" + ORDER_FIELDS + "} } } }")

# A search term goes into Shopify's query syntax: only characters that cannot end it.
_SAFE_TERM = re.compile(r"^[A-Za-z0-9@._+-]+$")


def is_shopify(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host.endswith(".myshopify.com")


def graphql_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/admin/api/{API_VERSION}/graphql.json"


def customer_number(customer_id: str) -> str:
    """`gid://shopify/Customer/207119551` or `207119551` -> `207119551`."""
    return customer_id.rsplit("/", 1)[-1]


def search_query(authority: Authority, number: str | None) -> str | None:
    """The orders search for this shopper (and order); None if a term is not safe to send."""
    if authority.customer is not None:
        term = f"customer_id:{customer_number(authority.customer.id)}"
        value = customer_number(authority.customer.id)
    else:
        assert authority.email is not None
        term = f"email:{authority.email}"
        value = authority.email
    if not _SAFE_TERM.match(value) or (number is not None and not _SAFE_TERM.match(number)):
        return None
    return term if number is None else f"name:#{number} AND {term}"


def owned_by(node: dict[str, Any], authority: Authority) -> bool:
    customer = node.get("customer") or {}
    if authority.customer is not None:
        return customer_number(str(customer.get("id", ""))) == \
            customer_number(authority.customer.id)
    emails = {str(node.get("email") or "").lower(), str(customer.get("email") or "").lower()}
    return authority.email in emails


def order_from_node(node: dict[str, Any]) -> OrderSummary:
    """A Shopify order as our contract's order, then the same shopper-safe summary."""
    items = [{"name": edge["node"]["title"], "quantity": edge["node"]["quantity"]}
             for edge in (node.get("lineItems") or {}).get("edges", [])
             if isinstance(edge, dict) and isinstance(edge.get("node"), dict)]
    fulfillments = node.get("fulfillments") or []
    latest = fulfillments[-1] if fulfillments else {}
    tracking = (latest.get("trackingInfo") or [{}])[0] if latest else {}
    status = str(node.get("displayFulfillmentStatus") or "unknown").replace("_", " ").lower()
    expected = latest.get("estimatedDeliveryAt") if latest else None
    return summarise({
        "number": str(node.get("name", "")).lstrip("#"), "status": status, "items": items,
        "carrier": tracking.get("company"), "trackingUrl": tracking.get("url"),
        "expectedDelivery": str(expected)[:10] if expected else None})


def request_body(authority: Authority, number: str | None, first: int) -> dict[str, Any] | None:
    query = search_query(authority, number)
    if query is None:
        return None
    return {"query": ORDERS_QUERY, "variables": {"query": query, "first": first}}


def orders_in(body: Any, authority: Authority) -> list[dict[str, Any]]:
    """The shopper's orders in a GraphQL answer (others dropped); ValueError if it is not one."""
    if not isinstance(body, dict) or body.get("errors") or not isinstance(body.get("data"), dict):
        raise ValueError("not an orders answer")
    edges = ((body["data"].get("orders") or {}).get("edges")) or []
    nodes = [edge["node"] for edge in edges if isinstance(edge, dict)
             and isinstance(edge.get("node"), dict)]
    return [node for node in nodes if owned_by(node, authority)]
