"""The origin guard: who may call the chat API from a browser; a refused browser origin is a 403,
and a warning the owner can act on."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.clientip import parse_networks
from app.middleware import REFUSED_ORIGIN_LOG_S, REFUSED_ORIGINS_KEPT, OriginGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked_app(clock: Clock) -> Starlette:
    async def history(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/chat/history/x", history)],
                     middleware=[Middleware(OriginGuard, allowed_origins=["https://shop.example"],
                                            clock=clock)])


async def get_from(app: Starlette, origin: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://chat.test") as client:
        return await client.get("/chat/history/x", headers={"Origin": origin})


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.middleware"]


async def test_a_refused_origin_is_logged_once_per_few_minutes(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    app = clocked_app(clock)
    caplog.set_level(logging.WARNING, logger="app.middleware")
    for _ in range(5):
        assert (await get_from(app, "https://shop.example.com")).status_code == 403
    assert (await get_from(app, "https://shop.example")).status_code == 200
    lines = refusal_lines(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert "'https://shop.example.com'" in message and "ALLOWED_ORIGINS" in message
    assert "https://shop.example)" in message  # what is allowed, so the typo shows

    await get_from(app, "https://other.example")  # another origin: its own line
    clock.now += REFUSED_ORIGIN_LOG_S - 1
    await get_from(app, "https://shop.example.com")
    assert len(refusal_lines(caplog)) == 2
    clock.now += 1
    await get_from(app, "https://shop.example.com")
    assert len(refusal_lines(caplog)) == 3


async def test_made_up_origins_cannot_grow_the_memory_or_flood_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    app = clocked_app(clock)
    caplog.set_level(logging.WARNING, logger="app.middleware")
    for n in range(REFUSED_ORIGINS_KEPT + 50):
        assert (await get_from(app, f"https://{n}.evil.example")).status_code == 403
    assert len(refusal_lines(caplog)) == REFUSED_ORIGINS_KEPT
    long_origin = "https://" + "a" * 10_000 + ".example"
    clock.now += REFUSED_ORIGIN_LOG_S
    await get_from(app, long_origin)
    assert len(refusal_lines(caplog)[-1].getMessage()) < 1000


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
