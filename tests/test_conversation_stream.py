"""The conversation stream: an agent's messages, status changes and typing reach the shopper
live, with ids that resume by Last-Event-ID, on any instance (Redis); and the inbox's site
stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import httpx

from app.conversation_events import MemoryFeeds, typing_payload, without_stale_typing
from tests.conftest import FakeUpstream, RunningApp, SSEEvent, read_events, stream_chat
from tests.test_admin import make_staff, signed_in

WAIT_S = 10.0


async def events_until(events: AsyncIterator[SSEEvent], done: Callable[[SSEEvent], bool]
                       ) -> list[SSEEvent]:
    """The events up to the first that `done` accepts (the stream is read on, not again)."""
    seen: list[SSEEvent] = []
    async with asyncio.timeout(WAIT_S):
        async for event in events:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"the stream ended first: {seen}")


async def test_an_agents_message_reaches_the_shopper_on_another_instance_and_resumes(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str,
        shared_settings: dict[str, Any]) -> None:
    shopper_side: RunningApp = await start_app(**shared_settings)
    agent_side: RunningApp = await start_app(**shared_settings)
    agent = await make_staff(database_url, [1], name="Grace")
    async with shopper_side.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "I need a person"})
                      )[0].data["sessionId"]
        assert (await shopper.post(f"/chat/conversations/{session_id}/handoff")).status_code == 200
        assert (await shopper.get(f"/chat/history/{session_id}")).json()["status"] == "waiting"
        http, csrf = await signed_in(agent_side, agent)
        async with aclosing(http):
            act = f"/admin/api/conversations/{session_id}"
            async with shopper.stream("GET", f"/chat/conversations/{session_id}/stream") as live:
                assert live.status_code == 200
                assert live.headers["content-type"].startswith("text/event-stream")
                live_events = read_events(live)
                # The shopper's message is told in the background: either may come first.
                kinds: set[str] = set()
                first = await events_until(
                    live_events, lambda e: kinds.add(e.event) or kinds == {"message", "status"})
                assert sorted(e.event for e in first) == ["message", "status"]
                assert next(e for e in first if e.event == "status").data["status"] == "waiting"
                assert (await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
                        ).status_code == 200
                assert (await http.post(f"{act}/typing", headers={"X-CSRF-Token": csrf})
                        ).status_code == 204
                sent = await http.post(f"{act}/messages", json={"message": "Hi, I'm Grace."},
                                       headers={"X-CSRF-Token": csrf})
                assert sent.status_code == 201
                rest = await events_until(live_events, lambda e: e.event == "message")
            assert [(e.event, e.data["status"] if e.event == "status" else e.data["sender"])
                    for e in rest] == [
                ("status", "human"), ("typing", "agent"), ("message", "agent")]
            message = rest[-1]
            assert message.data["text"] == "Hi, I'm Grace." and message.data["agentName"] == "Grace"
            ids = [int(e.id or 0) for e in first + rest]
            assert ids == list(range(1, len(ids) + 1))  # one sequence, every event with an id

            # The connection dropped just before the agent's message: resume from there.
            headers = {"Last-Event-ID": str(int(message.id or 0) - 1)}
            async with shopper.stream("GET", f"/chat/conversations/{session_id}/stream",
                                      headers=headers) as again:
                [resumed] = await events_until(read_events(again), lambda e: True)
            assert resumed.id == message.id and resumed.data == message.data


async def test_the_shoppers_typing_and_messages_reach_the_agent_and_the_inbox(
        chat_app: RunningApp, upstream: FakeUpstream, database_url: str) -> None:
    agent = await make_staff(database_url, [1], name="Grace")
    http, csrf = await signed_in(chat_app, agent)
    async with chat_app.client() as shopper, aclosing(http):
        session_id = (await stream_chat(shopper, {"message": "hello"}))[0].data["sessionId"]
        await http.post(f"/admin/api/conversations/{session_id}/takeover",
                        headers={"X-CSRF-Token": csrf})
        async with http.stream("GET", f"/admin/api/conversations/{session_id}/stream") as live, \
                http.stream("GET", "/admin/api/stream") as inbox:
            assert inbox.status_code == 200
            typing = await shopper.post(f"/chat/conversations/{session_id}/typing")
            assert typing.status_code == 204
            await stream_chat(shopper, {"message": "are you there?", "sessionId": session_id})
            seen = await events_until(read_events(live), lambda e: e.event == "message"
                                      and e.data["text"] == "are you there?")
            assert ("typing", "user") in [(e.event, e.data.get("sender")) for e in seen]
            updates = await events_until(
                read_events(inbox), lambda e: e.data["id"] == session_id and e.data["lastMessage"]["text"]
                == "are you there?")
            assert updates[-1].event == "conversation"
            assert updates[-1].data["lastMessage"]["sender"] == "user"


async def test_the_inbox_on_another_instance_hears_when_an_answer_ends(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str,
        shared_settings: dict[str, Any]) -> None:
    # An agent watching a conversation the assistant has (after a hand-back, say) must see the
    # answer when it ends, not only when the shopper writes again.
    shopper_side: RunningApp = await start_app(**shared_settings)
    agent_side: RunningApp = await start_app(**shared_settings)
    agent = await make_staff(database_url, [1], name="Grace")
    http, csrf = await signed_in(agent_side, agent)
    async with shopper_side.client() as shopper, aclosing(http), \
            http.stream("GET", "/admin/api/stream") as inbox:
        assert inbox.status_code == 200
        events = await stream_chat(shopper, {"message": "do you ship abroad?"})
        session_id, answer_id = events[0].data["sessionId"], events[0].data["messageId"]
        text = events[-1].data["text"]
        told = await events_until(read_events(inbox), lambda e: e.data.get("id") == session_id
                                  and e.data["lastMessage"]["sender"] == "ai")
    assert told[-1].event == "conversation"
    assert told[-1].data["lastMessage"] == {"id": answer_id, "sender": "ai", "text": text,
                                            "status": "complete"}


async def test_a_conversation_stream_of_another_site_or_a_stranger_is_refused(
        client: httpx.AsyncClient) -> None:
    session_id = (await stream_chat(client, {"message": "hi"}))[0].data["sessionId"]
    unknown = await client.get("/chat/conversations/00000000-0000-4000-8000-000000000000/stream")
    assert unknown.status_code == 404
    bad = await client.get(f"/chat/conversations/{session_id}/stream",
                           headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400
    staff_only = await client.get(f"/admin/api/conversations/{session_id}/stream")
    assert staff_only.status_code == 401


async def test_a_resume_never_shows_a_typing_event_that_is_seconds_old() -> None:
    """A reload replaying the stream must not show "Grace is typing" long after Grace stopped."""
    feeds = MemoryFeeds()
    stale = {**typing_payload("agent", agentName="Grace"), "at": int(time.time() * 1000) - 60_000}
    await feeds.publish("conv", "typing", stale)
    await feeds.publish("conv", "message", {"sender": "agent", "text": "Hi, I'm Grace."})
    await feeds.publish("conv", "typing", typing_payload("agent", agentName="Grace"))
    assert await feeds.last_id("conv") == 3
    seen = []
    async with aclosing(without_stale_typing(feeds.follow("conv", 0))) as events:
        async for event in events:
            seen.append((event.seq, event.kind))
            if event.seq == 3:
                break
    assert seen == [(2, "message"), (3, "typing")]


async def test_the_history_names_the_stream_position_it_was_read_at(
        chat_app: RunningApp, upstream: FakeUpstream, database_url: str) -> None:
    """A reload opens the stream with the history's streamEventId: only what came later."""
    agent = await make_staff(database_url, [1], name="Grace")
    http, csrf = await signed_in(chat_app, agent)
    async with chat_app.client() as shopper, aclosing(http):
        session_id = (await stream_chat(shopper, {"message": "hello"}))[0].data["sessionId"]
        act = f"/admin/api/conversations/{session_id}"
        await shopper.post(f"/chat/conversations/{session_id}/handoff")
        await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
        await http.post(f"{act}/messages", json={"message": "Hi, I'm Grace."},
                        headers={"X-CSRF-Token": csrf})
        page = (await shopper.get(f"/chat/history/{session_id}")).json()
        assert page["messages"][-1]["text"] == "Hi, I'm Grace." and page["askEmail"] is False
        await http.post(f"{act}/messages", json={"message": "Still there?"},
                        headers={"X-CSRF-Token": csrf})
        async with shopper.stream("GET", f"/chat/conversations/{session_id}/stream",
                                  params={"lastEventId": page["streamEventId"]}) as live:
            [later] = await events_until(read_events(live), lambda e: e.event == "message")
        assert later.data["text"] == "Still there?"
