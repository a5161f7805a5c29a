"""Upstream failures: each becomes a friendly `error` event and a saved status, never a 500."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai._streaming import SSEDecoder

from app import answer_run
from app.llm import sse_data
from tests.conftest import FakeUpstream, Reply, stream_chat


def saved(query: Any, message_id: str) -> tuple[str, str]:
    rows = query("SELECT status, text FROM messages WHERE id = %s", message_id)
    return rows[0]


# 429, 5xx, timeouts and network failures before the first token are answered from the
# knowledge base instead (tests/test_knowledge_answers.py); these are configuration faults.
@pytest.mark.parametrize("reply, code, retryable, attempts", [
    (Reply(status=401), "upstream_auth", False, 1),
    (Reply(status=400), "upstream_rejected", False, 1),
])
async def test_failure_before_the_first_token(client: httpx.AsyncClient, upstream: FakeUpstream,
                                              query: Any, reply: Reply, code: str,
                                              retryable: bool, attempts: int) -> None:
    upstream.default = reply
    events = await stream_chat(client, {"message": "hi"})
    assert [e.event for e in events] == ["meta", "error"]
    error = events[-1].data
    assert error["code"] == code and error["retryable"] is retryable
    assert "Traceback" not in error["message"] and "upstream" not in error["message"].lower()
    # Retries happen only before the first token, and only for failures worth retrying.
    assert len(upstream.requests) == attempts
    assert saved(query, events[0].data["messageId"]) == ("error", "")


async def test_rejected_key_is_logged_as_a_configuration_problem(
        client: httpx.AsyncClient, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    upstream.default = Reply(status=401)
    with caplog.at_level(logging.ERROR, logger="app.llm"):
        await stream_chat(client, {"message": "hi"})
    assert any("OPENAI_API_KEY" in record.getMessage() for record in caplog.records)


async def test_no_first_chunk_in_time_is_a_timeout(
        start_app: Any, upstream: FakeUpstream, query: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    app = await start_app(llm_timeout_s=0.3)
    upstream.default = Reply(first_delay=2.0)
    async with app.client() as http:
        with caplog.at_level(logging.WARNING, logger="app.chat"):
            events = await stream_chat(http, {"message": "hi"})
    assert any("upstream_timeout" in record.getMessage() for record in caplog.records)
    # Nothing was shown yet, so the knowledge base answered instead.
    assert events[-1].event == "done" and events[-1].data["fallback"] is True
    assert saved(query, events[0].data["messageId"])[0] == "complete"


@pytest.mark.parametrize("reply, code", [
    (Reply(tokens=["Part", "ial"], stall_after_tokens=True), "upstream_timeout"),
    (Reply(tokens=["Part", "ial"], tail=b"data: {not json\n\n"), "upstream_bad_response"),
    (Reply(tokens=["Part", "ial"], tail=b'data: {"error": {"message": "overloaded"}}\n\n'),
     "upstream_error"),
])
async def test_failure_mid_stream_keeps_the_partial_text(start_app: Any, upstream: FakeUpstream,
                                                         query: Any, reply: Reply,
                                                         code: str) -> None:
    app = await start_app(llm_timeout_s=0.5)
    upstream.queue(reply)
    async with app.client() as http:
        events = await stream_chat(http, {"message": "hi"})
    assert [e.event for e in events] == ["meta", "token", "token", "error"]
    assert events[-1].data["code"] == code
    # Text was already shown to the shopper: never retried, kept as an error with its text.
    assert len(upstream.requests) == 1
    assert saved(query, events[0].data["messageId"]) == ("error", "Partial")


async def test_connection_reset_mid_stream_keeps_the_partial_text(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any) -> None:
    upstream.queue(Reply(tokens=["Half"], reset_after_tokens=True))
    events = await stream_chat(client, {"message": "hi"})
    assert [e.event for e in events] == ["meta", "token", "error"]
    assert events[-1].data["code"] == "upstream_unreachable"
    assert len(upstream.requests) == 1
    assert saved(query, events[0].data["messageId"]) == ("error", "Half")


async def pieces_of(parts: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_the_upstream_stream_is_read_as_the_sdk_reads_server_sent_events() -> None:
    # Our reader replaced the SDK's decoder (for its CPU): CRLF split across two reads, a bare
    # CR, comments and pings, other fields, data on two lines, an event without data, and a
    # last event cut off before its blank line must come out as the SDK would hand them over.
    parts = (b'data: {"a": 1}\r', b'\n\r\n', b": keep-alive\n\n", b"event: ping\n\n",
             b'event: message\nid: 7\ndata: {"b":\ndata:  2}\n\n', b'data:{"c": 3}\r\r',
             b"data: [DONE]\n", b'\ndata: {"cut')
    ours = [data async for data in sse_data(pieces_of(parts))]
    assert ours == [b'{"a": 1}', b'{"b":\n 2}', b'{"c": 3}', b"[DONE]"]
    sdk = [event.data.encode() async for event in SSEDecoder().aiter_bytes(pieces_of(parts))
           if event.data]
    assert ours == sdk


async def test_a_defect_of_ours_mid_answer_still_ends_the_stream(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Once a race in the knowledge search raised inside an answer: its task died, and the
    # shopper's stream stayed open with nothing more to come. Any such failure ends the answer.
    async def broken_search(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("delivery")

    monkeypatch.setattr(answer_run, "search_in_language", broken_search)
    with caplog.at_level(logging.ERROR, logger="app.answer_run"):
        events = await stream_chat(client, {"message": "hi"})
    assert [e.event for e in events] == ["meta", "error"]
    assert events[-1].data["code"] == "internal_error" and events[-1].data["retryable"] is True
    assert "KeyError" not in events[-1].data["message"]
    assert saved(query, events[0].data["messageId"]) == ("error", "")
    assert any(record.exc_info for record in caplog.records)  # the traceback, for us
