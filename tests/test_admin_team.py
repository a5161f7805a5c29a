"""The back office, continued, over HTTP: full-text search and keyset paging in the inbox, the
shopper's signed identity, staff notes the shopper never sees, owners inviting agents (the link
shown, or emailed through a real loopback SMTP server), and the per-IP limit on /admin/api."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from app.identity import sign_customer_token
from tests.conftest import FakeUpstream, RunningApp, stream_chat
from tests.test_admin import PASSWORD, make_site, make_staff, signed_in
from tests.test_alert_email import Mailbox, serve_mailbox

WAIT_S = 15.0


async def new_conversation(http: httpx.AsyncClient, text: str, **body: Any) -> str:
    events = await stream_chat(http, {"message": text, **body})
    session_id: str = events[0].data["sessionId"]
    return session_id


async def test_search_finds_conversations_by_their_words_and_the_shoppers_email(
        chat_app: RunningApp, database_url: str, query: Callable[..., Any]) -> None:
    staff = await make_staff(database_url, [1])
    [(secret,)] = query("SELECT identity_secret FROM sites WHERE id = 1")
    async with chat_app.client() as shopper:
        # A made-up word, so no other test's conversation matches.
        word = f"scarf{uuid.uuid4().hex[:8]}"
        refund = await new_conversation(shopper, f"Where is my refund for the {word}?")
        await new_conversation(shopper, f"Do you ship the {word} to Norway?")
        signed = await new_conversation(
            shopper, "Hello", customerToken=sign_customer_token(secret, "cust-42",
                                                                f"ana-{word}@example.com"))
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        found = (await http.get("/admin/api/conversations", params={"q": f"{word} refund"})).json()
        assert [c["id"] for c in found["conversations"]] == [refund]
        without = (await http.get("/admin/api/conversations", params={"q": f"{word} -norway"})).json()
        assert [c["id"] for c in without["conversations"]] == [refund]
        by_email = (await http.get("/admin/api/conversations",
                                   params={"q": f"ANA-{word}@example.com"})).json()
        [conversation] = by_email["conversations"]
        assert conversation["id"] == signed
        # The identity the store signed, for people to read in the inbox.
        assert conversation["customer"] == {"id": "cust-42",
                                            "email": f"ana-{word}@example.com"}
        detail = (await http.get(f"/admin/api/conversations/{signed}")).json()
        assert detail["conversation"]["customer"]["id"] == "cust-42"
        # Whatever a person types is a query, never a 500: stray operators, quotes, no words.
        for odd in ("'", "!!!", '"unclosed', "a & | b", "-", "(x) <-> y", "\u00e9t\u00e9"):
            answer = await http.get("/admin/api/conversations", params={"q": odd})
            assert answer.status_code == 200, (odd, answer.text)
        too_long = await http.get("/admin/api/conversations", params={"q": "x" * 201})
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "bad_request"


async def test_search_never_finds_another_sites_conversation(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str) -> None:
    other_id, other_key = await make_site(database_url, f"Elsewhere{uuid.uuid4().hex[:6]}")
    chat_app: RunningApp = await start_app()  # after the site: its directory has it
    staff = await make_staff(database_url, [1])
    async with chat_app.client() as shopper:
        await new_conversation(shopper, "A question about zanzibarqx", siteKey=other_key)
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        found = (await http.get("/admin/api/conversations", params={"q": "zanzibarqx"})).json()
    assert found["conversations"] == []


async def test_paging_walks_every_conversation_once_even_when_one_moves_meanwhile(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    async with chat_app.client() as shopper:
        made = [await new_conversation(shopper, f"question {n}") for n in range(5)]
        http, _ = await signed_in(chat_app, staff)
        async with aclosing(http):
            first = (await http.get("/admin/api/conversations", params={"limit": 2})).json()
            assert [c["id"] for c in first["conversations"]] == [made[4], made[3]]
            # The oldest conversation gets a new message: it moves to the top, and the next
            # pages neither repeat a row nor skip one (an offset would do both).
            await stream_chat(shopper, {"message": "me again", "sessionId": made[0]})
            seen = [c["id"] for c in first["conversations"]]
            cursor = first["nextCursor"]
            while cursor:
                page = (await http.get("/admin/api/conversations",
                                       params={"limit": 2, "after": cursor})).json()
                seen += [c["id"] for c in page["conversations"]]
                cursor = page["nextCursor"]
            # Other tests' conversations of the same site may be among them.
            assert [found for found in seen if found in made] == [made[4], made[3], made[2],
                                                                  made[1]]
            bad = await http.get("/admin/api/conversations", params={"after": "not-a-cursor"})
            assert bad.status_code == 400 and set(bad.json()["error"]) == {"code", "message"}


async def test_a_note_is_for_staff_and_never_reaches_the_shopper(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1], name="Noor")
    other_id, _ = await make_site(database_url, f"Other{uuid.uuid4().hex[:6]}")
    outsider = await make_staff(database_url, [other_id], name="Olaf")
    async with chat_app.client() as shopper:
        session_id = await new_conversation(shopper, "My order never came")
        http, csrf = await signed_in(chat_app, staff)
        async with aclosing(http):
            unsigned = await http.post(f"/admin/api/conversations/{session_id}/notes",
                                       json={"note": "no token"})
            assert unsigned.status_code == 403
            added = await http.post(f"/admin/api/conversations/{session_id}/notes",
                                    json={"note": "Courier says it was left at a neighbour"},
                                    headers={"X-CSRF-Token": csrf})
            assert added.status_code == 201, added.text
            assert added.json()["note"]["staffName"] == "Noor"
            detail = (await http.get(f"/admin/api/conversations/{session_id}")).json()
            assert [n["text"] for n in detail["notes"]] == ["Courier says it was left at a"
                                                            " neighbour"]
            assert "neighbour" not in str(detail["messages"])
            empty = await http.post(f"/admin/api/conversations/{session_id}/notes",
                                    json={"note": "  "}, headers={"X-CSRF-Token": csrf})
            assert empty.status_code == 400
        history = (await shopper.get(f"/chat/history/{session_id}")).json()
        assert "neighbour" not in str(history)
    http, csrf = await signed_in(chat_app, outsider)
    async with aclosing(http):
        elsewhere = await http.post(f"/admin/api/conversations/{session_id}/notes",
                                    json={"note": "x"}, headers={"X-CSRF-Token": csrf})
        assert elsewhere.status_code == 404
        assert (await http.get(f"/admin/api/conversations/{session_id}")).status_code == 404


async def accept(app: RunningApp, link: str, name: str, password: str) -> httpx.AsyncClient:
    """Open an invitation link and set the password: a client signed in as the new agent."""
    http = app.client()
    page = await http.get(link)
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    response = await http.post(link, data={"csrf": csrf.group(1), "name": name,
                                           "password": password})
    assert response.status_code == 303 and response.headers["location"] == "/admin", \
        response.text
    return http


async def test_an_owner_invites_an_agent_who_sets_a_password_once(
        chat_app: RunningApp, database_url: str) -> None:
    owner = await make_staff(database_url, [1], role="owner", name="Olga")
    agent = await make_staff(database_url, [1], name="Ada")
    http, csrf = await signed_in(chat_app, agent)
    async with aclosing(http):
        refused = await http.post("/admin/api/invites", json={"email": "x@shop.example"},
                                  headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "owners_only"
    http, csrf = await signed_in(chat_app, owner)
    async with aclosing(http):
        invited = await http.post("/admin/api/invites", json={"email": "ben@shop.example"},
                                  headers={"X-CSRF-Token": csrf})
        assert invited.status_code == 201, invited.text
        body = invited.json()
        assert body["emailed"] is False  # no SMTP_URL: the owner is shown the link
        link = body["inviteUrl"]
        assert link.startswith(f"{chat_app.url}/admin/invite/")
        again = await http.post("/admin/api/invites", json={"email": agent.email},
                                headers={"X-CSRF-Token": csrf})
        assert again.status_code == 400  # she has an account already
    async with aclosing(await accept(chat_app, link, "Ben", "a fresh agent passphrase")) as ben:
        me = (await ben.get("/admin/api/me")).json()
        assert me["email"] == "ben@shop.example" and me["role"] == "agent"
        assert [site["id"] for site in me["sites"]] == [1]
    async with chat_app.client() as late:
        used = await late.get(link)
        assert used.status_code == 404 and "has been used or has expired" in used.text
        weak = await late.get(link.replace("/invite/", "/invite/x"))
        assert weak.status_code == 404


async def test_an_invitation_is_emailed_through_smtp_when_configured(
        start_app: Callable[..., Any], upstream: FakeUpstream, database_url: str) -> None:
    mailbox = Mailbox()
    server = await serve_mailbox(mailbox)
    try:
        app: RunningApp = await start_app(smtp_url=mailbox.url, smtp_from="inbox@shop.example")
        owner = await make_staff(database_url, [1], role="owner", name="Olga")
        http, csrf = await signed_in(app, owner)
        async with aclosing(http):
            invited = await http.post("/admin/api/invites", json={"email": "cy@shop.example"},
                                      headers={"X-CSRF-Token": csrf})
        assert invited.status_code == 201
        assert invited.json() == {"email": "cy@shop.example", "emailed": True,
                                  "inviteUrl": None}
        async with asyncio.timeout(WAIT_S):
            await mailbox.arrived.wait()
        [message] = mailbox.messages
        assert message["To"] == "cy@shop.example"
        assert message["Subject"] == "Olga invites you to the support inbox"
        found = re.search(r"http://\S+/admin/invite/\S+", message.get_content())
        assert found is not None
        async with aclosing(await accept(app, found.group(0), "Cy", "cy's own passphrase")):
            pass
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def limited_app(start_app: Callable[..., Any], upstream: FakeUpstream
                      ) -> AsyncIterator[RunningApp]:
    app: RunningApp = await start_app(rate_limit_admin_ip="3/15minutes")
    yield app


async def test_the_staff_api_is_limited_per_ip_with_the_canonical_429(
        limited_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    async with limited_app.client() as http:
        for _ in range(3):
            assert (await http.get("/admin/api/me")).status_code == 401  # counted all the same
        refused = await http.get("/admin/api/me")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert set(refused.json()["error"]) == {"code", "message"}
    assert int(refused.headers["retry-after"]) > 0
    assert staff.password == PASSWORD
