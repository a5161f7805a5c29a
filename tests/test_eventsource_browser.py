"""The browser's own EventSource resumes an answer on another instance with Last-Event-ID, and
stops for good once it has the end (the reconnect after `done` is told 204).

A tiny proxy plays the load balancer: it serves the test page, sends the first GET of the stream
to instance A and cuts it after a few tokens (a network change), and sends the reconnect
to instance B. EventSource reconnects by itself and resends the id of the last token it got.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

from playwright.async_api import async_playwright

from app.services import services_of
from tests.conftest import FakeUpstream, Reply, RunningApp, read_events
from tests.tcp_proxy import TcpProxy, Upstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
# The first connection is cut just before token 4's frame, whatever the size of the headers and
# of `meta` before it (a cut after a fixed byte count fell before the first token once the
# headers grew): the browser has tokens 1-3 whole, and asks for what follows 3.
CUT_BEFORE_TOKEN = 4

PAGE_HTML = b"<!doctype html><title>resume</title><link rel=icon href='data:,'>"
PAGE_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
                 b"content-length: " + str(len(PAGE_HTML)).encode() + b"\r\n\r\n" + PAGE_HTML)
NO_CONTENT_RESPONSE = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"

# The page tells the proxy it has token 3 (a request to /has-token), and only then is the first
# connection closed: a close right behind the bytes can make Chromium drop them unread.
FOLLOW_IN_PAGE = """([url, cutAfterId]) => new Promise((resolve) => {
  const tokens = [], ids = [];
  let opened = 0;
  const source = new EventSource(url);
  source.onopen = () => { opened += 1; };
  source.addEventListener("token", (e) => {
    ids.push(e.lastEventId);
    tokens.push(JSON.parse(e.data).text);
    if (e.lastEventId === String(cutAfterId)) fetch("/has-token");  // the proxy may cut now
  });
  source.addEventListener("done", (e) => {
    source.close();
    resolve({tokens, ids, opened, done: JSON.parse(e.data)});
  });
  // Our `error` events carry data; the browser's own (a dropped connection) do not.
  source.addEventListener("error", (e) => {
    if (e.data) { source.close(); resolve({tokens, ids, opened, error: JSON.parse(e.data)}); }
  });
})"""


def port_of(app: RunningApp) -> int:
    return int(app.url.rsplit(":", 1)[1])


async def test_eventsource_reconnects_to_another_instance_and_continues(
        start_app: Callable[..., Any], upstream: FakeUpstream,
        shared_settings: dict[str, Any]) -> None:
    a, b = await start_app(**shared_settings), await start_app(**shared_settings)
    stream_requests = 0
    browser_has_tokens = asyncio.Event()

    def balance(head: bytes) -> Upstream | bytes:
        nonlocal stream_requests
        if head.startswith(b"GET /page "):
            return PAGE_RESPONSE
        if head.startswith(b"GET /has-token "):
            browser_has_tokens.set()
            return NO_CONTENT_RESPONSE
        if head.startswith(b"GET /chat/stream/"):
            stream_requests += 1
            if stream_requests == 1:
                return Upstream("127.0.0.1", port_of(a),
                                cut_before=b"id: %d\n" % CUT_BEFORE_TOKEN,
                                cut_when=browser_has_tokens)
            return Upstream("127.0.0.1", port_of(b))
        return Upstream("127.0.0.1", port_of(a))

    proxy = await TcpProxy(balance).start()
    tokens = [f"w{n} " for n in range(50)]
    upstream.queue(Reply(tokens=tokens, delay=0.1))
    async with a.client() as http, http.stream("POST", "/chat/stream",
                                               json={"message": "hi"}) as response:
        meta = (await anext(read_events(response))).data  # then the shopper closes the tab
    stream_url = f"/chat/stream/{meta['messageId']}?sessionId={meta['sessionId']}"

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://{proxy.url_host}/page")
            async with asyncio.timeout(60):
                result = await page.evaluate(FOLLOW_IN_PAGE,
                                             [stream_url, CUT_BEFORE_TOKEN - 1])
        finally:
            await browser.close()
    await proxy.stop()

    assert result["opened"] == 2
    assert result["ids"] == [str(n) for n in range(1, 51)], result
    assert "".join(result["tokens"]) == "".join(tokens)
    assert result["done"]["status"] == "complete" and result["done"]["text"] == "".join(tokens)
    assert browser_has_tokens.is_set()
    stream_heads = [h.decode("latin-1") for h in proxy.heads if h.startswith(b"GET /chat/stream/")]
    assert len(stream_heads) == 2
    assert "last-event-id" not in stream_heads[0].lower()
    resent = re.search(r"^last-event-id: *(\d+)\r$", stream_heads[1], re.I | re.M)
    assert resent is not None
    # The reconnect asked for exactly the tokens after the last one the browser had.
    assert int(resent.group(1)) == CUT_BEFORE_TOKEN - 1


# -- after the end: a reconnect is told 204, and a standard EventSource stops ------------------

RESUME_ROUTE = "/chat/stream/{message_id}"
# Chromium's and undici's reconnection time when the server sends no `retry:` is 3 s; the
# window after the 204 is measured in the reconnect gaps the client itself showed.
QUIET_RETRY_PERIODS = 3
# Lets a client stop after the page or script said so, whatever the reconnection time.
MAX_QUIET_WINDOW_S = 15.0

FOLLOW_UNTIL_CLOSED = """(url) => new Promise((resolve) => {
  const got = [], started = performance.now();
  let opened = 0, doneAt = null;
  const source = new EventSource(url);
  source.onopen = () => { opened += 1; };
  for (const kind of ["meta", "token", "done"]) {
    source.addEventListener(kind, (e) => {
      got.push([kind, e.lastEventId]);
      if (kind === "done") doneAt = performance.now();
    });
  }
  // Left open on purpose after `done`: the browser reconnects by itself, as for any stream.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      resolve({got, opened, reconnectGapMs: performance.now() - (doneAt ?? started)});
    }
  });
})"""

NODE_FOLLOW_UNTIL_CLOSED = """
const [url, holdMs] = [process.argv[1], Number(process.argv[2])];
const got = [];
let opened = 0, doneAt = null;
const source = new EventSource(url);
// undici does not keep the process alive while it waits to reconnect.
const alive = setInterval(() => {}, 1000);
source.onopen = () => { opened += 1; };
for (const kind of ["meta", "token", "done"]) {
  source.addEventListener(kind, (e) => {
    got.push([kind, e.lastEventId]);
    if (kind === "done") doneAt = performance.now();
  });
}
source.addEventListener("error", () => {
  if (source.readyState === EventSource.CLOSED) {
    clearInterval(alive);
    const reconnectGapMs = performance.now() - (doneAt ?? 0);
    console.log(JSON.stringify({got, opened, reconnectGapMs}));
    setTimeout(() => process.exit(0), holdMs);  // stay, so a reconnect would still be seen
  }
});
"""


def resume_requests(app: RunningApp) -> dict[str, int]:
    """The app's own count of GET /chat/stream/{id} requests, by status."""
    counts: dict[str, int] = {}
    for metric in services_of(app.app).metrics.requests.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (sample.name.endswith("_total") and labels["route"] == RESUME_ROUTE
                    and labels["method"] == "GET"):
                counts[labels["status"]] = int(sample.value)
    return counts


async def stays_quiet(app: RunningApp, expected: dict[str, int], window_s: float) -> None:
    """No request beyond `expected` arrives within the window (fails at the first one)."""
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        assert resume_requests(app) == expected
        await asyncio.sleep(0.2)
    assert resume_requests(app) == expected


def quiet_window(reconnect_gap_ms: float) -> float:
    return min(QUIET_RETRY_PERIODS * reconnect_gap_ms / 1000, MAX_QUIET_WINDOW_S)


async def live_answer(app: RunningApp, upstream: FakeUpstream, tokens: list[str]) -> str:
    """Start an answer, leave at its first event; the URL that follows it."""
    upstream.queue(Reply(tokens=tokens, delay=0.05))
    async with app.client() as http, http.stream("POST", "/chat/stream",
                                                 json={"message": "hi"}) as response:
        meta = (await anext(read_events(response))).data
    return f"/chat/stream/{meta['messageId']}?sessionId={meta['sessionId']}"


def assert_followed_once_then_stopped(result: dict[str, Any], tokens: list[str]) -> None:
    end_id = str(len(tokens) + 1)
    assert result["opened"] == 1  # the reconnect was answered 204, which fires no `open`
    assert result["got"] == [["meta", ""]] + [["token", str(n)] for n in
                                              range(1, len(tokens) + 1)] + [["done", end_id]]


async def test_chromium_eventsource_stops_after_the_end(
        start_app: Callable[..., Any], upstream: FakeUpstream) -> None:
    app = await start_app()

    def serve(head: bytes) -> Upstream | bytes:
        if head.startswith(b"GET /page "):
            return PAGE_RESPONSE
        return Upstream("127.0.0.1", port_of(app))

    proxy = await TcpProxy(serve).start()
    tokens = [f"w{n} " for n in range(20)]
    stream_url = await live_answer(app, upstream, tokens)
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://{proxy.url_host}/page")
            async with asyncio.timeout(60):
                result = await page.evaluate(FOLLOW_UNTIL_CLOSED, stream_url)
            assert_followed_once_then_stopped(result, tokens)
            # The page stays open: a browser that reconnected again would be counted here.
            await stays_quiet(app, {"200": 1, "204": 1}, quiet_window(result["reconnectGapMs"]))
        finally:
            await browser.close()
    await proxy.stop()


async def test_node_eventsource_stops_after_the_end(
        start_app: Callable[..., Any], upstream: FakeUpstream) -> None:
    """Node's own EventSource (undici's, WHATWG-conformant), as a store's backend might use."""
    app = await start_app()
    tokens = [f"w{n} " for n in range(20)]
    stream_url = await live_answer(app, upstream, tokens)
    hold_ms = int(MAX_QUIET_WINDOW_S * 1000) + 5000
    node = await asyncio.create_subprocess_exec(
        "node", "--experimental-eventsource", "--no-warnings", "-e", NODE_FOLLOW_UNTIL_CLOSED,
        app.url + stream_url, str(hold_ms),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert node.stdout is not None
        async with asyncio.timeout(60):
            line = await node.stdout.readline()
        assert line, (await node.stderr.read()).decode() if node.stderr else "no output"
        result = json.loads(line)
        assert_followed_once_then_stopped(result, tokens)
        await stays_quiet(app, {"200": 1, "204": 1}, quiet_window(result["reconnectGapMs"]))
    finally:
        if node.returncode is None:
            node.kill()
        await node.wait()
