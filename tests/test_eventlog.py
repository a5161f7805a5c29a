"""The in-process event log: what a subscriber sees while an answer is quiet."""

from __future__ import annotations

import asyncio

import pytest

from app import eventlog
from app.eventlog import KEEPALIVE, MemoryEventLog


async def test_a_quiet_answer_yields_keepalives_then_its_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eventlog, "KEEPALIVE_S", 0.01)
    log = MemoryEventLog()
    log.start("a")
    log.append("a", "meta", {"messageId": "a"})
    events = log.subscribe("a", after=0)
    assert events is not None

    assert (await anext(events)).kind == "meta"
    assert await anext(events) is KEEPALIVE
    log.append("a", "token", {"text": "hi"})
    log.append("a", "done", {"text": "hi"})
    rest = [e async for e in events if e is not KEEPALIVE]

    assert [e.kind for e in rest] == ["token", "done"]
    assert KEEPALIVE.frame == b": ping\n\n"


async def test_a_keepalive_does_not_end_the_wait_for_the_next_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eventlog, "KEEPALIVE_S", 0.01)
    log = MemoryEventLog()
    log.start("a")
    events = log.subscribe("a", after=0)
    assert events is not None
    assert await anext(events) is KEEPALIVE

    asyncio.get_running_loop().call_later(0.005, log.append, "a", "error", {"code": "x"})
    seen = [e async for e in events]

    assert seen[-1].kind == "error"
