"""The pure ASGI middleware, on a tiny app: who may call the chat API from a browser."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.clientip import parse_networks
from app.middleware import OriginGuard


def guarded_app(**options: object) -> Starlette:
    async def history(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/chat/history/{sessionId}", history)],
                     middleware=[Middleware(OriginGuard, **options)])


async def status_for(app: Starlette, origin: str, base_url: str = "http://localhost:8000",
                     headers: dict[str, str] | None = None,
                     client: tuple[str, int] = ("127.0.0.1", 5000)) -> int:
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        response = await http.get("/chat/history/x", headers={"Origin": origin, **(headers or {})})
    return response.status_code


async def test_the_same_origin_needs_the_same_scheme() -> None:
    """https://localhost:8000 is another origin than http://localhost:8000."""
    app = guarded_app(allowed_origins=())
    assert await status_for(app, "http://localhost:8000") == 200
    assert await status_for(app, "https://localhost:8000") == 403
    assert await status_for(app, "https://localhost:8000", base_url="https://localhost:8000") == 200


async def test_the_scheme_behind_our_proxy_is_the_forwarded_one() -> None:
    app = guarded_app(allowed_origins=(), trusted_proxies=parse_networks(["127.0.0.1"]))
    tls = {"X-Forwarded-Proto": "https"}
    assert await status_for(app, "https://localhost:8000", headers=tls) == 200
    assert await status_for(app, "http://localhost:8000", headers=tls) == 403
    # Anyone else's X-Forwarded-Proto is not believed.
    assert await status_for(app, "https://localhost:8000", headers=tls,
                            client=("198.51.100.7", 5000)) == 403
