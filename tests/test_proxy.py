"""The production topology on loopback: Debian's nginx with app/deploy/nginx.conf in front of two
`python -m app` instances sharing one PostgreSQL and one Redis.

docker-compose.yml runs the same nginx.conf; only the listen port and the upstream servers are
substituted here (tests/proxy.py). Shoppers are told apart by their source address: each test's
client connects from its own loopback address (127.0.0.2, 127.0.0.3, ...), which is what nginx
sees and forwards in X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app_process import AppProcess
from tests.conftest import SSEEvent, parse_sse, read_events
from tests.fake_model import FakeModel, Script
from tests.proxy import running_nginx

CHAT_LIMIT_PER_IP = 3
WEB = Path(__file__).resolve().parent.parent / "web"


@dataclass
class Stack:
    proxy_url: str
    instances: list[AppProcess]
    model: FakeModel
    nginx_log: Path

    def client(self, source_address: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=source_address)
        return httpx.AsyncClient(base_url=self.proxy_url, transport=transport, timeout=30)

    def app_log_lines(self) -> list[dict[str, Any]]:
        return [line for instance in self.instances for line in instance.log_lines()]


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("proxy")
    with FakeModel() as model:
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
               # One prefix for both instances: they share their counters, as in production.
               "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}",
               "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": model.base_url,
               "TRUSTED_PROXIES": "127.0.0.1",
               "RATE_LIMIT_CHAT_IP": f"{CHAT_LIMIT_PER_IP}/15minutes"}
        instances = [AppProcess(env, directory / f"app-{n}.log") for n in range(2)]
        try:
            for instance in instances:
                instance.wait_healthy()
            upstreams = [f"127.0.0.1:{instance.port}" for instance in instances]
            with running_nginx(upstreams, directory) as port:
                yield Stack(f"http://127.0.0.1:{port}", instances, model,
                            directory / "nginx.log")
        finally:
            for instance in instances:
                instance.stop()


async def next_event(events: AsyncIterator[SSEEvent]) -> SSEEvent:
    async with asyncio.timeout(30):  # a guard against a hang, not a measurement
        return await anext(events)


async def test_tokens_arrive_through_the_proxy_as_they_are_made(stack: Stack) -> None:
    """The model sends token n+1 only after the client has received token n through nginx:
    a proxy that buffered the response would hold token n back and the test would hang."""
    answer = stack.model.hold_default()
    async with stack.client("127.0.0.2") as http, http.stream(
            "POST", "/chat/stream", json={"message": "Can I return shoes?"},
            headers={"X-Request-ID": "proxy-req-1",
                     "Accept-Encoding": "gzip, deflate"}) as response:
        assert response.status_code == 200
        assert "content-encoding" not in response.headers  # an event stream is never gzipped
        assert response.headers["x-request-id"] == "proxy-req-1"
        events = read_events(response)
        assert (await next_event(events)).event == "meta"
        received = []
        for expected in answer.tokens:
            answer.release()
            token = await next_event(events)
            assert (token.event, token.data["text"]) == ("token", expected)
            received.append(token.data["text"])
        done = await next_event(events)

    assert done.event == "done" and done.data["text"] == "".join(received)
    # The id nginx passed on is the one the app logged the request and the answer under (the
    # request line is written as the response ends, which may be just after the client's read).
    for _ in range(500):
        logged = {line["message"] for line in stack.app_log_lines()
                  if line.get("request_id") == "proxy-req-1"}
        if "request" in logged:
            break
        await asyncio.sleep(0.02)
    assert logged == {"request", "answer"}


async def test_the_page_served_through_the_proxy_may_use_the_chat(stack: Stack) -> None:
    """A browser on the demo page sends its Origin, port included; nginx must pass the Host
    with its port, or the app would take its own page for a foreign one."""
    stack.model.default = Script()
    async with stack.client("127.0.0.5") as http:
        response = await http.post("/chat/stream", json={"message": "hi"},
                                   headers={"Origin": stack.proxy_url})
        metrics = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert metrics.status_code == 404


@pytest.mark.parametrize("path, source", [("/widget.js", "widget.js"), ("/", "index.html")])
async def test_nginx_gzips_the_widget_and_the_page(stack: Stack, path: str, source: str) -> None:
    original = (WEB / source).read_bytes()
    async with stack.client("127.0.0.6") as http, http.stream(
            "GET", path, headers={"Accept-Encoding": "gzip"}) as response:
        sent = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    # nginx compressed it itself: it weakens the ETag of what it compresses (the app does not).
    assert response.headers["etag"].startswith("W/")
    assert gzip.decompress(sent) == original
    async with stack.client("127.0.0.6") as http:
        plain = await http.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == original


async def test_nginx_makes_a_request_id_when_the_client_sends_none(stack: Stack) -> None:
    async with stack.client("127.0.0.2") as http:
        response = await http.get("/healthz")
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert request_id in stack.nginx_log.read_text()


async def test_rate_limits_key_on_the_real_client_address(stack: Stack) -> None:
    stack.model.default = Script()

    async def ask(http: httpx.AsyncClient, forged: str) -> httpx.Response:
        # A client that writes its own X-Forwarded-For gains nothing: nginx appends the address
        # it really sees, and the app believes only what its trusted proxy added.
        return await http.post("/chat/stream", json={"message": "hi"},
                               headers={"X-Forwarded-For": forged})

    async with stack.client("127.0.0.3") as first, stack.client("127.0.0.4") as second:
        statuses = [(await ask(first, f"203.0.113.{n}")).status_code
                    for n in range(CHAT_LIMIT_PER_IP + 1)]
        refused = await ask(first, "198.51.100.7")
        other_shopper = await ask(second, "203.0.113.1")

    assert statuses == [200] * CHAT_LIMIT_PER_IP + [429]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    assert other_shopper.status_code == 200


async def test_an_answer_resumes_through_the_proxy_after_its_connection_is_cut(
        stack: Stack) -> None:
    answer = stack.model.hold_default()
    tokens = answer.tokens
    async with stack.client("127.0.0.5") as http:
        async with http.stream("POST", "/chat/stream",
                               json={"message": "Where is my parcel?"}) as response:
            events = read_events(response)
            meta = (await next_event(events)).data
            for _ in range(2):
                answer.release()
                last = await next_event(events)
        # The connection is gone: the shopper's train went into a tunnel. The answer goes on.
        assert last.id == "2"

        async with http.stream("GET", f"/chat/stream/{meta['messageId']}",
                               params={"sessionId": meta["sessionId"]},
                               headers={"Last-Event-ID": last.id}) as resumed:
            assert resumed.status_code == 200
            events = read_events(resumed)
            assert (await next_event(events)).event == "meta"
            rest = []
            for _ in tokens[2:]:
                answer.release()
                token = await next_event(events)
                assert token.event == "token"
                rest.append(token)
            done = await next_event(events)

    assert [token.id for token in rest] == [str(n) for n in range(3, len(tokens) + 1)]
    assert "".join(tokens[:2]) + "".join(token.data["text"] for token in rest) == "".join(tokens)
    assert done.event == "done" and done.data["text"] == "".join(tokens)


async def test_no_full_id_reaches_any_log_over_a_whole_conversation(stack: Stack) -> None:
    """A session id grants access to its conversation: nginx and the app log a prefix only."""
    stack.model.default = Script()
    async with stack.client("127.0.0.6") as http:
        first = await http.post("/chat/stream", json={"message": "Do you ship abroad?"})
        meta = [e for e in parse_sse(first.text) if e.event == "meta"][0].data
        session_id, answer_id = meta["sessionId"], meta["messageId"]
        second = await http.post("/chat/stream", json={"message": "And to Europe?",
                                                       "sessionId": session_id})
        assert second.status_code == 200
        resumed = await http.get(f"/chat/stream/{answer_id}", params={"sessionId": session_id},
                                 headers={"Last-Event-ID": "1"})
        assert resumed.status_code == 200
        history = await http.get(f"/chat/history/{session_id}")
        assert history.status_code == 200
        unknown = await http.get(f"/chat/history/{uuid.uuid4()}")
        assert unknown.status_code == 404

        # The conversation's own routes: the handoff, the shopper typing, its live stream.
        handoff = await http.post(f"/chat/conversations/{session_id}/handoff")
        assert handoff.status_code == 200
        typing = await http.post(f"/chat/conversations/{session_id}/typing")
        assert typing.status_code == 204
        async with http.stream("GET", f"/chat/conversations/{session_id}/stream") as live:
            assert live.status_code == 200

        held = stack.model.hold_default()  # an answer still running, to cancel
        async with http.stream("POST", "/chat/stream",
                               json={"message": "Stop", "sessionId": session_id}) as response:
            running = (await next_event(read_events(response))).data
            cancelled = await http.post(f"/chat/messages/{running['messageId']}/cancel",
                                        params={"sessionId": session_id})
        assert cancelled.status_code == 200
        held.release_all()  # the cancelled request's stream ends, so the model can stop
        stack.model.default = Script()
    ids = {session_id, answer_id, running["messageId"],
           *(m["id"] for m in history.json()["messages"])}

    def nginx_logged_cancel() -> bool:
        return f"/chat/messages/{running['messageId'][:8]}.../cancel" in stack.nginx_log.read_text()

    for _ in range(500):  # nginx writes its line as the response ends
        if nginx_logged_cancel():
            break
        await asyncio.sleep(0.02)
    nginx_log = stack.nginx_log.read_text()
    app_logs = "\n".join(instance.output() for instance in stack.instances)
    for full_id in ids:
        assert full_id not in nginx_log, full_id
        assert full_id not in app_logs, full_id
    # What is logged is still enough to follow a conversation through the logs.
    assert f"/chat/history/{session_id[:8]}..." in nginx_log
    assert f"/chat/stream/{answer_id[:8]}..." in nginx_log
    assert f"/chat/conversations/{session_id[:8]}.../handoff" in nginx_log
    assert nginx_logged_cancel()
