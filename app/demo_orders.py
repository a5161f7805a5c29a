"""The example store's order API: the reference implementation of the connector contract
(app/orders.py, README "The store connector"), serving the orders in app/store/orders.json.

`make run` starts it beside the chat server (`python -m app.demo_orders`, port 8001). An order
of another customer gets the same 404 as one that does not exist: that is the contract.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ORDERS_PATH = Path(__file__).parent / "store" / "orders.json"
DEMO_TOKEN = "demo-orders-token"
NOT_FOUND = {"error": {"code": "not_found", "message": "No such order."}}


def load_orders(path: Path = ORDERS_PATH) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["orders"]
    return orders


def create_demo_orders_app(orders: list[dict[str, Any]] | None = None,
                           token: str = DEMO_TOKEN) -> Starlette:
    known = load_orders() if orders is None else orders

    def authorised(request: Request) -> bool:
        sent = request.headers.get("authorization", "")
        return secrets.compare_digest(sent.encode(), f"Bearer {token}".encode())

    def belongs(order: dict[str, Any], request: Request) -> bool:
        customer = request.query_params.get("customer")
        email = request.query_params.get("email")
        if customer:
            return bool(order.get("customer") == customer)
        if email:
            return bool(str(order.get("email", "")).lower() == email.strip().lower())
        return False  # who is asking must always be said

    async def one_order(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": {"code": "unauthorized", "message": "Bad token."}},
                                status_code=401)
        number = request.path_params["number"]
        for order in known:
            if order["number"] == number and belongs(order, request):
                return JSONResponse(order)
        return JSONResponse(NOT_FOUND, status_code=404)

    async def recent_orders(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"error": {"code": "unauthorized", "message": "Bad token."}},
                                status_code=401)
        if not request.query_params.get("customer"):
            return JSONResponse({"orders": []})
        raw_limit = request.query_params.get("limit", "5")
        limit = min(int(raw_limit), 20) if raw_limit.isascii() and raw_limit.isdigit() else 5
        mine = [order for order in known if belongs(order, request)]
        mine.sort(key=lambda order: str(order.get("placedAt", "")), reverse=True)
        return JSONResponse({"orders": mine[:limit]})

    return Starlette(routes=[Route("/orders/{number}", one_order, methods=["GET"]),
                             Route("/orders", recent_orders, methods=["GET"])])


def main() -> None:
    import uvicorn

    port = int(os.environ.get("DEMO_ORDERS_PORT", "8001"))
    uvicorn.run(create_demo_orders_app(token=os.environ.get("ORDERS_API_TOKEN") or DEMO_TOKEN),
                host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
