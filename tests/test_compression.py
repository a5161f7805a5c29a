"""The widget script and the pages go out gzip-compressed when the client accepts it; the SSE
streams never do, and their tokens still arrive one at a time (the nginx side of this is in
tests/test_proxy.py)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningApp, read_events
from tests.fake_model import FakeModel

WEB = Path(__file__).resolve().parent.parent / "web"


async def raw_get(app: RunningApp, path: str, accept_encoding: str) -> httpx.Response:
    """The response as sent: httpx would otherwise decode the body and hide its encoding."""
    async with app.client() as http, http.stream(
            "GET", path, headers={"Accept-Encoding": accept_encoding}) as response:
        await response.aread()
        return response


async def raw_body(app: RunningApp, path: str, accept_encoding: str) -> tuple[httpx.Response,
                                                                               bytes]:
    async with app.client() as http, http.stream(
            "GET", path, headers={"Accept-Encoding": accept_encoding}) as response:
        return response, b"".join([chunk async for chunk in response.aiter_raw()])


@pytest.mark.parametrize("path, source", [("/widget.js", "widget.js"), ("/", "index.html")])
async def test_the_widget_and_the_page_are_gzipped_when_accepted(
        chat_app: RunningApp, path: str, source: str) -> None:
    original = (WEB / source).read_bytes()
    response, sent = await raw_body(chat_app, path, "gzip, deflate")
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    assert int(response.headers["content-length"]) == len(sent)
    assert gzip.decompress(sent) == original
    print(f"figure: {path} {len(original)} bytes, {len(sent)} gzip-compressed")
    assert len(sent) < len(original) / 2

    plain, plain_sent = await raw_body(chat_app, path, "identity")
    assert "content-encoding" not in plain.headers and plain_sent == original


async def test_answer_streams_are_never_compressed_and_tokens_arrive_one_by_one(
        start_app: Callable[..., Any]) -> None:
    """Token n+1 leaves the model only once the client has token n: a compressor on the way
    would hold token n back in its buffer, and the test would hang."""
    async with FakeModel() as model:
        app: RunningApp = await start_app(openai_base_url=model.base_url)
        answer = model.hold_default()
        async with app.client() as http, http.stream(
                "POST", "/chat/stream", json={"message": "Can I return shoes?"},
                headers={"Accept-Encoding": "gzip, deflate, br"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in response.headers
            events = read_events(response)
            meta = (await anext(events)).data
            for expected in answer.tokens:
                answer.release()
                token = await anext(events)
                assert (token.event, token.data["text"]) == ("token", expected)
            assert (await anext(events)).event == "done"
        resumed = await raw_get(
            app, f"/chat/stream/{meta['messageId']}?sessionId={meta['sessionId']}", "gzip")
        assert resumed.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in resumed.headers

