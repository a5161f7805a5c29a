"""Order answers end to end, without a model and on fallback: the app served on loopback beside
the demo store's order API; the card comes as an `event: tool`, is kept, and is replayed on
resume."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.answer_events import replay_record
from app.demo_orders import DEMO_TOKEN, create_demo_orders_app
from app.eventlog import REPLAYED_END_ID
from app.identity import sign_customer_token
from app.messages import AnswerRecord
from tests.conftest import FakeUpstream, Reply, RunningApp, SSEEvent, parse_sse, stream_chat
from tests.orders_server import serve

QUESTION = "Where is my order 1042?"


@pytest.fixture
async def store_url() -> AsyncIterator[str]:
    async with serve(create_demo_orders_app()) as url:
        yield url


def default_secret(query: Callable[..., list[tuple[Any, ...]]]) -> str:
    [(secret,)] = query("SELECT identity_secret FROM sites WHERE id = 1")
    return str(secret)


def demo_token(query: Callable[..., list[tuple[Any, ...]]], customer: str = "demo-customer",
               email: str = "demo@example.com") -> str:
    return sign_customer_token(default_secret(query), customer, email)


@pytest.fixture
async def knowledge_only(start_app: Callable[..., Any], store_url: str) -> RunningApp:
    app: RunningApp = await start_app(openai_api_key="", openai_base_url="",
                                      orders_api_url=store_url, orders_api_token=DEMO_TOKEN)
    return app


def kinds(events: list[SSEEvent]) -> list[str]:
    return [event.event for event in events]


def text_of(events: list[SSEEvent]) -> str:
    return "".join(event.data["text"] for event in events if event.event == "token")


async def test_the_demo_customer_gets_the_order_card_and_a_one_line_answer(
        knowledge_only: RunningApp, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    async with knowledge_only.client() as http:
        events = await stream_chat(http, {"message": QUESTION,
                                          "customerToken": demo_token(query)})
    assert kinds(events)[:2] == ["meta", "tool"] and kinds(events)[-1] == "done"
    card = events[1]
    assert card.id == "1"
    assert card.data["name"] == "lookup_order" and card.data["result"] == "found"
    order = card.data["order"]
    assert order["number"] == "1042" and order["status"] == "shipped"
    assert order["trackingUrl"] == "https://track.example.com/RM104200042GB"
    done = events[-1].data
    assert done["text"] == text_of(events)
    assert done["text"] == "Order 1042 is shipped, with Royal Mail, expected 2026-12-04."
    assert "\n" not in done["text"] and done["sources"] == []


async def test_another_customers_order_is_not_found_and_never_shown(
        knowledge_only: RunningApp, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    async with knowledge_only.client() as http:
        theirs = await stream_chat(http, {"message": "where is order #2001?",
                                          "customerToken": demo_token(query)})
        missing = await stream_chat(http, {"message": "where is order #9999?",
                                           "customerToken": demo_token(query)})
    assert theirs[1].data == missing[1].data == {"name": "lookup_order", "result": "not_found"}
    assert text_of(theirs) == text_of(missing).replace("9999", "2001")
    assert "Indigo" not in str([e.data for e in theirs])


async def test_an_anonymous_shopper_gets_the_card_with_the_orders_email_only(
        knowledge_only: RunningApp) -> None:
    async with knowledge_only.client() as http:
        asked = await stream_chat(http, {"message": QUESTION})
        wrong = await stream_chat(http, {"message": "order 1042, email other@example.com"})
        right = await stream_chat(http, {"message": "order 1042, my email is demo@example.com"})
    assert "tool" not in kinds(asked) and "sign in" in text_of(asked)
    assert wrong[1].data["result"] == "not_found"
    assert right[1].data["result"] == "found" and right[1].data["order"]["number"] == "1042"


async def test_a_question_without_an_order_number_is_answered_from_the_knowledge_base(
        knowledge_only: RunningApp, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    async with knowledge_only.client() as http:
        events = await stream_chat(http, {"message": "How long does shipping take?",
                                          "customerToken": demo_token(query)})
    assert "tool" not in kinds(events)


async def test_the_card_is_resumed_by_last_event_id_and_replayed_once_settled(
        knowledge_only: RunningApp, query: Callable[..., list[tuple[Any, ...]]]) -> None:
    async with knowledge_only.client() as http:
        events = await stream_chat(http, {"message": QUESTION,
                                          "customerToken": demo_token(query)})
        meta = events[0].data
        path = f"/chat/stream/{meta['messageId']}"
        params = {"sessionId": meta["sessionId"]}
        from_start = parse_sse((await http.get(path, params={**params, "lastEventId": "0"})).text)
        after_card = parse_sse((await http.get(path, params={**params, "lastEventId": "1"})).text)
        history = (await http.get(f"/chat/history/{meta['sessionId']}")).json()
    assert [e.event for e in from_start] == kinds(events)
    assert from_start[1].data == events[1].data
    assert "tool" not in kinds(after_card) and text_of(after_card) == text_of(events)
    # Kept with the answer, for a replay from PostgreSQL once the stream has expired.
    [(tools,)] = query("SELECT tools FROM messages WHERE id = %s", meta["messageId"])
    assert tools == [events[1].data]
    # And in the history, so a reloaded widget shows the card again.
    assert [m["tools"] for m in history["messages"]] == [[], [events[1].data]]


async def test_a_failing_store_gets_a_friendly_answer(
        start_app: Callable[..., Any], query: Callable[..., list[tuple[Any, ...]]]) -> None:
    # Nothing listens there: the store is down.
    app: RunningApp = await start_app(openai_api_key="", openai_base_url="",
                                      orders_api_url="http://127.0.0.1:9", orders_timeout_s=1.0)
    async with app.client() as http:
        events = await stream_chat(http, {"message": QUESTION,
                                          "customerToken": demo_token(query)})
    assert events[1].data == {"name": "lookup_order", "result": "unavailable"}
    assert "can't reach our order system" in text_of(events)
    assert events[-1].event == "done"


async def test_when_the_model_fails_first_the_card_comes_as_the_fallback(
        start_app: Callable[..., Any], upstream: FakeUpstream, store_url: str,
        query: Callable[..., list[tuple[Any, ...]]]) -> None:
    upstream.default = Reply(status=503)
    app: RunningApp = await start_app(orders_api_url=store_url, orders_api_token=DEMO_TOKEN)
    async with app.client() as http:
        events = await stream_chat(http, {"message": QUESTION,
                                          "customerToken": demo_token(query)})
    assert events[1].event == "tool" and events[1].data["result"] == "found"
    assert events[-1].data["fallback"] is True


async def test_a_settled_answer_replayed_from_postgresql_sends_its_card_before_its_text() -> None:
    card = {"name": "lookup_order", "result": "found", "order": {
        "number": "1042", "status": "shipped", "items": [], "carrier": None,
        "trackingUrl": None, "expectedDelivery": None}}
    record = AnswerRecord(id=uuid.uuid4(), conversation_id=uuid.uuid4(), text="Order 1042 is shipped.",
                          status="complete", prompt_tokens=None, completion_tokens=None,
                          fallback=False, sources=[], site_id=1, tools=[card])
    events = [event async for event in replay_record(record, after=0)]
    assert [(e.kind, e.seq) for e in events] == [
        ("meta", 0), ("tool", 1), ("token", 2), ("done", REPLAYED_END_ID)]
    assert events[1].payload == card and events[1].frame.startswith(b"id: 1\nevent: tool\n")
    # A client that has the card already gets only the end.
    assert [e.kind for e in [event async for event in replay_record(record, after=2)]] == [
        "meta", "done"]
