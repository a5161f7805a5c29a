"""Shoppers' feedback over HTTP: votes on answers (one per answer, changeable), another session's
message a 404, bad input a 400 with the canonical body; the vote in the transcript and the
inbox's "thumbs down" filter; "did we solve your problem?" once a conversation is resolved."""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from tests.conftest import FakeUpstream, Reply, RunningApp, stream_chat
from tests.test_admin import make_staff, signed_in


async def ask(http: httpx.AsyncClient, message: str, session_id: str | None = None
              ) -> tuple[str, str, dict[str, Any]]:
    """A question answered; (session id, answer id, the done event's data)."""
    body: dict[str, Any] = {"message": message}
    if session_id is not None:
        body["sessionId"] = session_id
    events = await stream_chat(http, body)
    meta = next(e.data for e in events if e.event == "meta")
    done = next(e.data for e in events if e.event == "done")
    return meta["sessionId"], meta["messageId"], done


def feedback_url(message_id: str, session_id: str) -> str:
    return f"/chat/messages/{message_id}/feedback?sessionId={session_id}"


def assert_canonical_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]


async def test_a_vote_is_kept_with_the_answer_and_voting_again_changes_it(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(tokens=["Use", " the", " returns", " page."]))
    session_id, answer_id, _ = await ask(client, "how do returns work?")

    up = await client.post(feedback_url(answer_id, session_id), json={"rating": "up"})
    assert up.status_code == 200, up.text
    assert up.json() == {"messageId": answer_id, "rating": "up", "comment": None}
    down = await client.post(feedback_url(answer_id, session_id),
                             json={"rating": "down", "comment": "  It did not say  how long. "})
    assert down.json()["rating"] == "down"

    history = (await client.get(f"/chat/history/{session_id}")).json()["messages"]
    rated = {m["id"]: m["feedback"] for m in history}
    assert rated[answer_id] == {"rating": "down", "comment": "It did not say how long."}
    assert [m["feedback"] for m in history if m["sender"] == "user"] == [None]


async def test_another_sessions_answer_or_an_unknown_one_is_not_found(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    session_id, answer_id, _ = await ask(client, "hello")
    other_session, _, _ = await ask(client, "hi there")
    assert_canonical_error(await client.post(feedback_url(answer_id, other_session),
                                             json={"rating": "up"}), 404)
    assert_canonical_error(await client.post(feedback_url(str(uuid.uuid4()), session_id),
                                             json={"rating": "up"}), 404)
    # Nothing was recorded on the real answer by the refused vote.
    history = (await client.get(f"/chat/history/{session_id}")).json()["messages"]
    assert all(m["feedback"] is None for m in history)


@pytest.mark.parametrize("body", [
    {"rating": "meh"}, {"rating": None}, {}, {"rating": "up", "comment": 5},
    {"rating": "down", "comment": "x" * 501}, {"rating": "down", "comment": "a\u0000b"},
    {"rating": "up", "extra": True}, ["up"], "up",
])
async def test_bad_votes_get_a_clear_400(client: httpx.AsyncClient, upstream: FakeUpstream,
                                         body: Any) -> None:
    session_id, answer_id, _ = await ask(client, "hello")
    response = await client.post(feedback_url(answer_id, session_id), json=body)
    assert_canonical_error(response, 400)


async def test_a_bad_id_or_body_format_is_refused_before_any_lookup(
        client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    session_id, answer_id, _ = await ask(client, "hello")
    assert_canonical_error(await client.post(feedback_url("not-a-uuid", session_id),
                                             json={"rating": "up"}), 400)
    assert_canonical_error(await client.post(f"/chat/messages/{answer_id}/feedback",
                                             json={"rating": "up"}), 400)
    assert_canonical_error(await client.post(feedback_url(answer_id, session_id),
                                             content=b"{", headers={
                                                 "content-type": "application/json"}), 400)
    assert_canonical_error(await client.post(feedback_url(answer_id, session_id),
                                             content=b"rating=up"), 415)


@pytest.mark.parametrize("status", ["streaming", "error", "cancelled"])
async def test_only_finished_answers_can_be_rated_not_the_shoppers_own_message(
        client: httpx.AsyncClient, upstream: FakeUpstream, query: Any, status: str) -> None:
    session_id, answer_id, _ = await ask(client, "hello")
    history = (await client.get(f"/chat/history/{session_id}")).json()["messages"]
    question = next(m["id"] for m in history if m["sender"] == "user")
    assert_canonical_error(await client.post(feedback_url(question, session_id),
                                             json={"rating": "up"}), 409)
    query("UPDATE messages SET status = %s WHERE id = %s", status, answer_id)
    assert_canonical_error(await client.post(feedback_url(answer_id, session_id),
                                             json={"rating": "down"}), 409)
    assert query("SELECT feedback_rating FROM messages WHERE id = %s", answer_id) == [(None,)]


async def test_an_agents_message_can_be_rated_and_the_inbox_filters_thumbs_down(
        chat_app: RunningApp, client: httpx.AsyncClient, upstream: FakeUpstream,
        database_url: str) -> None:
    staff = await make_staff(database_url, [1], role="agent")
    liked_session, liked_answer, _ = await ask(client, "hello")
    await client.post(feedback_url(liked_answer, liked_session), json={"rating": "up"})
    session_id, _, _ = await ask(client, "I need a person")
    http, csrf = await signed_in(chat_app, staff)
    async with aclosing(http):
        act = f"/admin/api/conversations/{session_id}"
        assert (await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
                ).status_code == 200
        sent = await http.post(f"{act}/messages", json={"message": "I can help with that."},
                               headers={"X-CSRF-Token": csrf})
        agent_message = sent.json()["message"]["id"]
        vote = await client.post(feedback_url(agent_message, session_id),
                                 json={"rating": "down", "comment": "Too slow"})
        assert vote.status_code == 200, vote.text

        transcript = (await http.get(act)).json()["messages"]
        assert {m["id"]: m["feedback"] for m in transcript}[agent_message] == {
            "rating": "down", "comment": "Too slow"}
        disliked = (await http.get("/admin/api/conversations?filter=disliked")).json()
        listed = [c["id"] for c in disliked["conversations"]]
        assert session_id in listed and liked_session not in listed


async def test_did_we_solve_your_problem_is_answered_once_resolved(
        chat_app: RunningApp, client: httpx.AsyncClient, upstream: FakeUpstream,
        database_url: str, query: Any) -> None:
    staff = await make_staff(database_url, [1], role="agent")
    session_id, _, _ = await ask(client, "hello")
    csat = f"/chat/conversations/{session_id}/csat"
    assert_canonical_error(await client.post(csat, json={"solved": True}), 409)
    http, csrf = await signed_in(chat_app, staff)
    async with aclosing(http):
        resolved = await http.post(f"/admin/api/conversations/{session_id}/resolve",
                                   headers={"X-CSRF-Token": csrf})
        assert resolved.status_code == 200
    assert_canonical_error(await client.post(csat, json={"solved": "yes"}), 400)
    assert_canonical_error(await client.post(
        f"/chat/conversations/{uuid.uuid4()}/csat", json={"solved": True}), 404)
    answered = await client.post(csat, json={"solved": False})
    assert answered.json() == {"sessionId": session_id, "csat": "no"}
    assert query("SELECT csat FROM conversations WHERE id = %s", session_id) == [("no",)]
