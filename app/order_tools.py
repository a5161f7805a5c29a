"""The order tools of one answer: `lookup_order(order_number)` and `list_recent_orders()`.

Used two ways, with the same rules:
- by the model, through OpenAI tool calling (app/answer_run.py, app/llm.py): `TOOL_SPECS` are
  sent upstream, and each call comes back here;
- without a model (knowledge-only, or the model failed before its first token): a question that
  carries an order number gets the card directly (`direct_answer`).

Authority never comes from the model or from the order number: it is the verified customer of
this request (app/identity.py), else the email address the shopper typed in this very message.
An order of another customer is `not_found`, exactly like one that does not exist, so neither
the shopper nor the model ever learns it exists.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from . import answer_events
from .identity import Customer
from .orders import Authority, OrdersClient, OrderSummary, StoreUnreachable, email_in, order_number_in
from .sites import Site

MAX_TOOL_CALLS = 3

UNAVAILABLE_LINE = ("I can't reach our order system right now. Please try again in a few"
                    " minutes, or contact our team.")

# Added to the system prompt when the tools are offered.
ORDER_TOOLS_PROMPT = (
    "You can look up the shopper's orders with the tools. Only ever state order details a tool"
    " returned in this conversation; never guess them. A tool result of not_found means no such"
    " order for this shopper: say you could not find it, and do not speculate whether it exists."
    " A result of unavailable means the order system is down: apologise and suggest trying"
    " again later. If the shopper is not signed in, ask for the order number and the email"
    " address used for the order.")

TOOL_SPECS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "lookup_order",
        "description": "Look up one of the shopper's orders by its number: status, items,"
                       " carrier, tracking link, expected delivery. Only the shopper's own"
                       " orders are ever found.",
        "parameters": {"type": "object", "additionalProperties": False,
                       "required": ["order_number"],
                       "properties": {"order_number": {"type": "string",
                                                       "description": "e.g. 1042"}}}}},
    {"type": "function", "function": {
        "name": "list_recent_orders",
        "description": "The signed-in shopper's most recent orders (only when signed in).",
        "parameters": {"type": "object", "additionalProperties": False, "properties": {}}}},
]


@dataclass(frozen=True)
class ToolOutcome:
    """One tool call's result: the event for the stream and the JSON the model is given."""

    event: tuple[answer_events.Kind, answer_events.ToolPayload]
    for_model: dict[str, Any]


def describe(order: OrderSummary) -> str:
    """The one-line answer beside the card."""
    line = f"Order {order['number']} is {order['status']}"
    if order["carrier"]:
        line += f", with {order['carrier']}"
    if order["expectedDelivery"]:
        line += f", expected {order['expectedDelivery']}"
    return line + "."


class OrderTools:
    def __init__(self, orders: OrdersClient, site: Site | None, customer: Customer | None,
                 question: str) -> None:
        self._orders = orders
        self._site = site
        self._customer = customer
        # An anonymous shopper's only key: the email typed in this message.
        self._email = None if customer is not None else email_in(question)
        self.calls = 0

    @property
    def specs(self) -> list[dict[str, Any]]:
        """The tools the model may call: recent orders only for a verified customer."""
        if self._customer is None:
            return TOOL_SPECS[:1]
        return TOOL_SPECS

    @property
    def authority(self) -> Authority | None:
        if self._customer is not None:
            return Authority(customer=self._customer)
        if self._email is not None:
            return Authority(email=self._email)
        return None

    async def lookup_order(self, number: str) -> ToolOutcome:
        authority = self.authority
        if authority is None:
            return ToolOutcome(answer_events.tool("lookup_order", "not_found"),
                               {"result": "not_found", "note": "The shopper is not signed in:"
                                " ask for the email address used for the order."})
        try:
            async with asyncio.timeout(self._orders.timeout_s + 1):
                order = await self._orders.lookup(self._site, number.strip().lstrip("#"),
                                                  authority)
        except (StoreUnreachable, TimeoutError):
            return ToolOutcome(answer_events.tool("lookup_order", "unavailable"),
                               {"result": "unavailable"})
        if order is None:
            return ToolOutcome(answer_events.tool("lookup_order", "not_found"),
                               {"result": "not_found"})
        return ToolOutcome(answer_events.tool("lookup_order", "found", order=order),
                           {"result": "found", "order": order})

    async def list_recent_orders(self) -> ToolOutcome:
        if self._customer is None:
            return ToolOutcome(answer_events.tool("list_recent_orders", "not_found"),
                               {"result": "not_found", "note": "Only for signed-in shoppers."})
        try:
            async with asyncio.timeout(self._orders.timeout_s + 1):
                orders = await self._orders.recent(self._site, self._customer)
        except (StoreUnreachable, TimeoutError):
            return ToolOutcome(answer_events.tool("list_recent_orders", "unavailable"),
                               {"result": "unavailable"})
        result = "found" if orders else "not_found"
        return ToolOutcome(answer_events.tool("list_recent_orders", result, orders=orders),
                           {"result": result, "orders": orders})

    async def call(self, name: str, arguments: str) -> ToolOutcome:
        """A call the model made; its arguments are only ever an order number to look for."""
        self.calls += 1
        if name == "list_recent_orders":
            return await self.list_recent_orders()
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = {}
        number = parsed.get("order_number") if isinstance(parsed, dict) else None
        if name != "lookup_order" or not isinstance(number, str | int):
            return ToolOutcome(answer_events.tool("lookup_order", "not_found"),
                               {"result": "not_found", "note": "unknown tool or argument"})
        return await self.lookup_order(str(number))


async def direct_answer(orders: OrdersClient | None, site: Site | None,
                        customer: Customer | None, question: str
                        ) -> tuple[ToolOutcome | None, str] | None:
    """Without a model: for a question that names an order, the card (if any) and a one-line
    answer; None when it names none, or no order API is configured (the knowledge base answers)."""
    if orders is None or not orders.configured(site):
        return None
    number = order_number_in(question, orders.pattern(site))
    if number is None:
        return None
    tools = OrderTools(orders, site, customer, question)
    if tools.authority is None:
        return None, (f"To look up order {number}, please sign in, or tell me the email address"
                      f" you used for it together with the order number.")
    outcome = await tools.lookup_order(number)
    result = outcome.event[1]
    if result["result"] == "found":
        return outcome, describe(result["order"])
    if result["result"] == "unavailable":
        return outcome, UNAVAILABLE_LINE
    who = "your account" if customer is not None else "that email address"
    return outcome, (f"I couldn't find order {number} for {who}. Please check the number,"
                     f" or contact our team.")
