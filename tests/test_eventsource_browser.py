"""The browser's own EventSource resumes an answer on another instance with Last-Event-ID.

A tiny proxy plays the load balancer: it serves the test page, sends the first GET of the stream
to instance A and cuts it after a few hundred bytes (a network change), and sends the reconnect
to instance B. EventSource reconnects by itself and resends the id of the last token it got.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from playwright.async_api import async_playwright

from tests.conftest import FakeUpstream, Reply, RunningApp, read_events
from tests.tcp_proxy import TcpProxy, Upstream

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
# Past the response headers, meta and a few tokens; the cut may fall inside a frame, which the
# browser discards, as it would on a real network.
CUT_AFTER_BYTES = 900

PAGE_HTML = b"<!doctype html><title>resume</title><link rel=icon href='data:,'>"
PAGE_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
                 b"content-length: " + str(len(PAGE_HTML)).encode() + b"\r\n\r\n" + PAGE_HTML)

FOLLOW_IN_PAGE = """(url) => new Promise((resolve) => {
  const tokens = [], ids = [];
  let opened = 0;
  const source = new EventSource(url);
  source.onopen = () => { opened += 1; };
  source.addEventListener("token", (e) => {
    ids.push(e.lastEventId);
    tokens.push(JSON.parse(e.data).text);
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

    def balance(head: bytes) -> Upstream | bytes:
        nonlocal stream_requests
        if head.startswith(b"GET /page "):
            return PAGE_RESPONSE
        if head.startswith(b"GET /chat/stream/"):
            stream_requests += 1
            if stream_requests == 1:
                return Upstream("127.0.0.1", port_of(a), cut_after_bytes=CUT_AFTER_BYTES)
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
                result = await page.evaluate(FOLLOW_IN_PAGE, stream_url)
        finally:
            await browser.close()
    await proxy.stop()

    assert result["opened"] == 2
    assert result["ids"] == [str(n) for n in range(1, 51)]
    assert "".join(result["tokens"]) == "".join(tokens)
    assert result["done"]["status"] == "complete" and result["done"]["text"] == "".join(tokens)
    stream_heads = [h.decode("latin-1") for h in proxy.heads if h.startswith(b"GET /chat/stream/")]
    assert len(stream_heads) == 2
    assert "last-event-id" not in stream_heads[0].lower()
    resent = re.search(r"^last-event-id: *(\d+)\r$", stream_heads[1], re.I | re.M)
    assert resent is not None
    # The reconnect asked for exactly the tokens after the last one the browser had.
    assert 1 <= int(resent.group(1)) < 50
