"""The history says where the conversation stream stood when it was read (`streamEventId`), so
a widget that reads the history and then opens the stream from there misses nothing written in
between and is shown nothing twice, on any instance (Redis)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from tests.conftest import FakeUpstream, RunningApp, read_events, stream_chat
from tests.test_admin import make_staff, signed_in
from tests.test_conversation_stream import events_until


async def test_the_stream_opened_from_the_historys_position_has_what_came_after_it_only(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str,
        shared_settings: dict[str, Any]) -> None:
    shopper_side: RunningApp = await start_app(**shared_settings)
    agent_side: RunningApp = await start_app(**shared_settings)
    agent = await make_staff(database_url, [1], name="Grace")
    async with shopper_side.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "Do you ship to Norway?"})
                      )[0].data["sessionId"]
        stream = f"/chat/conversations/{session_id}/stream"
        http, csrf = await signed_in(agent_side, agent)
        async with aclosing(http):
            act = f"/admin/api/conversations/{session_id}"
            async with shopper.stream("GET", stream) as live:
                live_events = read_events(live)
                # The shopper's message is told in the background: wait for it.
                await events_until(live_events, lambda e: e.event == "message")
                assert (await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
                        ).status_code == 200
                [joined] = await events_until(live_events, lambda e: e.event == "status")
            page = (await shopper.get(f"/chat/history/{session_id}")).json()
            assert page["status"] == "human"  # the history shows the takeover already...
            assert page["streamEventId"] == int(joined.id or 0)  # ...and says it was seen
            # Written after the history was read, before the stream opens: not missed.
            sent = await http.post(f"{act}/messages", json={"message": "Hi, I'm Grace."},
                                   headers={"X-CSRF-Token": csrf})
            assert sent.status_code == 201
            async with shopper.stream("GET", stream, params={
                    "lastEventId": str(page["streamEventId"])}) as resumed:
                [first] = await events_until(read_events(resumed), lambda e: True)
            assert (first.event, first.data["text"]) == ("message", "Hi, I'm Grace.")

