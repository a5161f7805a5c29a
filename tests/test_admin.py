"""The back office over HTTP: sign-in, sessions, CSRF, limits, sites, and taking a
conversation over from the assistant and handing it back."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from app import db
from app.passwords import Passwords
from app.sites import SiteStore
from app.staff import StaffStore
from tests.conftest import FakeUpstream, Reply, RunningApp, parse_sse, stream_chat

PASSWORD = "a long staff passphrase"


@dataclass
class Staff:
    email: str
    password: str
    id: int


async def make_staff(database_url: str, site_ids: list[int], *, role: str = "agent",
                     name: str = "Ada", hasher: PasswordHasher | None = None) -> Staff:
    email = f"{name.lower()}-{uuid.uuid4().hex[:8]}@shop.example"
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        member = await StaffStore(pool).create(email, name, role,
                                               Passwords(hasher).hash(PASSWORD), site_ids)
    finally:
        await pool.close()
    return Staff(email, PASSWORD, member.id)


async def make_site(database_url: str, name: str) -> tuple[int, str]:
    pool = db.create_pool(database_url, 2)
    await pool.open(wait=True)
    try:
        record = await SiteStore(pool).create(name, [f"https://{name.lower()}.example"], None)
    finally:
        await pool.close()
    return record.id, record.site_key


async def sign_in(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    form = await http.get("/admin/login")
    assert form.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match is not None
    return await http.post("/admin/login", data={"csrf": match.group(1), "email": email,
                                                  "password": password})


async def signed_in(app: RunningApp, staff: Staff) -> tuple[httpx.AsyncClient, str]:
    """A client with a staff session, and its CSRF token."""
    http = app.client()
    response = await sign_in(http, staff.email, staff.password)
    assert response.status_code == 303, response.text
    me = await http.get("/admin/api/me")
    assert me.status_code == 200
    return http, me.json()["csrfToken"]


async def test_sign_in_sets_a_fresh_httponly_lax_cookie_and_opens_the_inbox(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1], role="owner")
    async with chat_app.client() as http:
        assert (await http.get("/admin")).headers["location"] == "/admin/login"
        response = await sign_in(http, staff.email, staff.password)
        assert response.status_code == 303 and response.headers["location"] == "/admin"
        cookie = next(value for value in response.headers.get_list("set-cookie")
                      if value.startswith("staff_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/admin" in cookie
        assert "Secure" not in cookie  # plain HTTP on localhost: a browser would drop it
        first = http.cookies["staff_session"]
        page = await http.get("/admin")
        assert page.status_code == 200 and "Take over" in page.text
        me = (await http.get("/admin/api/me")).json()
        assert me["email"] == staff.email and me["role"] == "owner"
        assert me["sites"] == [{"id": 1, "key": me["sites"][0]["key"], "name": "Default"}] or \
            me["sites"][0]["id"] == 1
        await sign_in(http, staff.email, staff.password)
        assert http.cookies["staff_session"] != first  # a new session on every sign-in


async def test_the_cookie_is_secure_anywhere_but_plain_http_localhost(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    async with chat_app.client(headers={"Host": "support.shop.example"}) as http:
        form = await http.get("/admin/login")
        assert "Secure" in form.headers["set-cookie"]
        # httpx keeps a Secure cookie off plain HTTP, as a browser would: send it by hand.
        csrf = form.cookies["staff_login_csrf"]
        response = await http.post("/admin/login", headers={"Cookie": f"staff_login_csrf={csrf}"},
                                   data={"csrf": csrf, "email": staff.email,
                                         "password": staff.password})
        assert response.status_code == 303
        cookie = next(value for value in response.headers.get_list("set-cookie")
                      if value.startswith("staff_session="))
        assert "Secure" in cookie


async def test_a_failed_sign_in_never_says_whether_the_email_exists(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    async with chat_app.client() as http:
        wrong = await sign_in(http, staff.email, "not the password at all")
        unknown = await sign_in(http, "nobody@shop.example", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert "The email or password is not right." in wrong.text
    assert wrong.text == unknown.text
    assert "staff_session" not in http.cookies


async def test_a_disabled_account_cannot_sign_in_and_its_sessions_end(
        chat_app: RunningApp, database_url: str, query: Callable[..., Any]) -> None:
    staff = await make_staff(database_url, [1])
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        pool = db.create_pool(database_url, 2)
        await pool.open(wait=True)
        await StaffStore(pool).set_disabled(staff.email)
        await pool.close()
        assert (await http.get("/admin/api/me")).status_code == 401
        assert (await sign_in(http, staff.email, staff.password)).status_code == 401


async def test_sign_in_needs_the_forms_token(chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    async with chat_app.client() as http:
        await http.get("/admin/login")
        refused = await http.post("/admin/login", data={"csrf": "forged", "email": staff.email,
                                                         "password": staff.password})
    assert refused.status_code == 403 and "staff_session" not in http.cookies


async def test_state_changing_staff_requests_need_the_csrf_token(
        chat_app: RunningApp, database_url: str, upstream: FakeUpstream) -> None:
    staff = await make_staff(database_url, [1])
    async with chat_app.client() as shopper:
        session_id = parse_sse((await shopper.post("/chat/stream", json={"message": "hi"})).text
                               )[0].data["sessionId"]
    http, csrf = await signed_in(chat_app, staff)
    async with aclosing(http):
        url = f"/admin/api/conversations/{session_id}/takeover"
        for headers in ({}, {"X-CSRF-Token": "wrong"}):
            refused = await http.post(url, headers=headers)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "csrf_refused"
        assert (await http.post("/admin/logout")).status_code == 403
        assert (await http.post(url, headers={"X-CSRF-Token": csrf})).status_code == 200


async def test_sign_in_attempts_are_limited_per_account_and_per_ip(
        start_app: Callable[..., Any], database_url: str) -> None:
    app: RunningApp = await start_app(rate_limit_login_account="3/15minutes",
                                      rate_limit_login_ip="6/15minutes")
    staff = await make_staff(database_url, [1])
    async with app.client() as http:
        for _ in range(3):
            assert (await sign_in(http, staff.email, "a wrong password!")).status_code == 401
        # The right password is refused too now: guessing on cannot find it.
        limited = await sign_in(http, staff.email, staff.password)
        assert limited.status_code == 429 and "retry-after" in limited.headers
        # An unknown email is limited the same way (the refusal says nothing about accounts).
        for _ in range(2):
            assert (await sign_in(http, "ghost@shop.example", "a wrong password!")
                    ).status_code == 401
        # Six attempts from this address: a seventh, for any email, is refused.
        assert (await sign_in(http, "other@shop.example", "a wrong password!")).status_code == 429


async def test_sessions_end_after_12_idle_hours_and_after_7_days(
        chat_app: RunningApp, database_url: str, query: Callable[..., Any]) -> None:
    staff = await make_staff(database_url, [1])
    idle, _ = await signed_in(chat_app, staff)
    old, _ = await signed_in(chat_app, staff)
    async with aclosing(idle), aclosing(old):
        sessions = query("SELECT token_hash FROM staff_sessions WHERE staff_id = %s"
                         " ORDER BY created_at", staff.id)
        assert len(sessions) == 2
        query("UPDATE staff_sessions SET last_seen_at = now() - interval '12 hours 1 minute'"
              " WHERE token_hash = %s", sessions[0][0])
        query("UPDATE staff_sessions SET expires_at = now() - interval '1 second'"
              " WHERE token_hash = %s", sessions[1][0])
        assert (await idle.get("/admin/api/me")).status_code == 401
        assert (await old.get("/admin/api/me")).status_code == 401
        assert (await idle.get("/admin")).headers["location"] == "/admin/login"


async def test_sign_out_ends_one_session_and_sign_out_everywhere_ends_all(
        chat_app: RunningApp, database_url: str) -> None:
    staff = await make_staff(database_url, [1])
    laptop, laptop_csrf = await signed_in(chat_app, staff)
    phone, _ = await signed_in(chat_app, staff)
    tablet, _ = await signed_in(chat_app, staff)
    async with aclosing(laptop), aclosing(phone), aclosing(tablet):
        assert (await tablet.post("/admin/logout", headers={
            "X-CSRF-Token": (await tablet.get("/admin/api/me")).json()["csrfToken"]})
        ).status_code == 200
        assert (await tablet.get("/admin/api/me")).status_code == 401
        assert (await phone.get("/admin/api/me")).status_code == 200
        assert (await laptop.post("/admin/logout-everywhere",
                                  headers={"X-CSRF-Token": laptop_csrf})).status_code == 200
        assert (await laptop.get("/admin/api/me")).status_code == 401
        assert (await phone.get("/admin/api/me")).status_code == 401


async def test_a_hash_with_old_parameters_is_replaced_at_sign_in(
        chat_app: RunningApp, database_url: str, query: Callable[..., Any]) -> None:
    staff = await make_staff(database_url, [1], hasher=PasswordHasher(time_cost=1,
                                                                      memory_cost=8192))
    assert "m=8192" in query("SELECT password_hash FROM staff WHERE id = %s", staff.id)[0][0]
    http, _ = await signed_in(chat_app, staff)
    await http.aclose()
    stored = query("SELECT password_hash FROM staff WHERE id = %s", staff.id)[0][0]
    assert stored.startswith("$argon2id$") and "m=8192" not in stored
    assert not Passwords().needs_rehash(stored)


# -- sites and authority ----------------------------------------------------------------------


async def test_staff_see_only_their_sites_and_another_sites_conversation_is_a_404(
        start_app: Callable[..., Any], database_url: str, upstream: FakeUpstream) -> None:
    other_id, other_key = await make_site(database_url, f"Other{uuid.uuid4().hex[:6]}")
    chat_app: RunningApp = await start_app()  # after the site: its directory has it
    async with chat_app.client() as shopper:
        ours = (await stream_chat(shopper, {"message": "our question"}))[0].data["sessionId"]
        theirs = (await stream_chat(shopper, {"message": "their question",
                                              "siteKey": other_key}))[0].data["sessionId"]
    staff = await make_staff(database_url, [1])
    http, csrf = await signed_in(chat_app, staff)
    async with aclosing(http):
        listed = [c["id"] for c in
                  (await http.get("/admin/api/conversations?filter=all")).json()["conversations"]]
        assert ours in listed and theirs not in listed
        assert (await http.get(f"/admin/api/conversations/{ours}")).status_code == 200
        for response in (await http.get(f"/admin/api/conversations/{theirs}"),
                         await http.post(f"/admin/api/conversations/{theirs}/takeover",
                                         headers={"X-CSRF-Token": csrf}),
                         await http.get(f"/admin/api/conversations/{uuid.uuid4()}")):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
    other_staff = await make_staff(database_url, [other_id], name="Bo")
    http, _ = await signed_in(chat_app, other_staff)
    async with aclosing(http):
        listed = [c["id"] for c in
                  (await http.get("/admin/api/conversations?filter=all")).json()["conversations"]]
        assert listed == [theirs]


async def test_a_shopper_session_id_is_no_authority_at_a_staff_endpoint(
        client: httpx.AsyncClient) -> None:
    session_id = (await stream_chat(client, {"message": "hi"}))[0].data["sessionId"]
    for response in (
            await client.get(f"/admin/api/conversations/{session_id}"),
            await client.get(f"/admin/api/conversations?sessionId={session_id}"),
            await client.get("/admin/api/conversations",
                             headers={"Cookie": f"staff_session={session_id}"}),
            await client.post(f"/admin/api/conversations/{session_id}/takeover",
                              headers={"X-CSRF-Token": session_id})):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "sign_in_required"


async def test_a_staff_cookie_is_no_authority_at_a_shopper_endpoint(
        start_app: Callable[..., Any], database_url: str, upstream: FakeUpstream) -> None:
    other_id, other_key = await make_site(database_url, f"Other{uuid.uuid4().hex[:6]}")
    chat_app: RunningApp = await start_app()
    async with chat_app.client() as shopper:
        ours = (await stream_chat(shopper, {"message": "our question"}))[0].data["sessionId"]
    staff = await make_staff(database_url, [1, other_id])
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        cookie = {"Cookie": f"staff_session={http.cookies['staff_session']}"}
        # The default site's conversation, asked for as the other site's: still a 404.
        history = await http.get(f"/chat/history/{ours}?siteKey={other_key}", headers=cookie)
        assert history.status_code == 404
        handoff = await http.post(f"/chat/conversations/{ours}/handoff?siteKey={other_key}",
                                  headers=cookie)
        assert handoff.status_code == 404


# -- taking over ------------------------------------------------------------------------------


async def test_an_agent_takes_over_writes_and_hands_back_to_the_assistant(
        chat_app: RunningApp, database_url: str, upstream: FakeUpstream) -> None:
    agent = await make_staff(database_url, [1], name="Grace")
    colleague = await make_staff(database_url, [1], name="Linus")
    async with chat_app.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "Where is my order?"})
                      )[0].data["sessionId"]
        handoff = await shopper.post(f"/chat/conversations/{session_id}/handoff")
        assert handoff.status_code == 200 and handoff.json()["status"] == "waiting"
        assert handoff.json()["supportHours"]
        http, csrf = await signed_in(chat_app, agent)
        other, other_csrf = await signed_in(chat_app, colleague)
        async with aclosing(http), aclosing(other):
            waiting = (await http.get("/admin/api/conversations?filter=waiting")).json()
            [row] = [c for c in waiting["conversations"] if c["id"] == session_id]
            assert row["status"] == "waiting" and row["waitingSince"]
            assert row["lastMessage"]["sender"] == "ai"

            act = f"/admin/api/conversations/{session_id}"
            early = await http.post(f"{act}/messages", json={"message": "Hi!"},
                                    headers={"X-CSRF-Token": csrf})
            assert early.status_code == 409  # take it over first
            taken = await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
            assert taken.json()["conversation"]["status"] == "human"
            assert taken.json()["conversation"]["agentName"] == "Grace"
            assert (await other.post(f"{act}/takeover", headers={"X-CSRF-Token": other_csrf})
                    ).status_code == 409
            assert (await other.post(f"{act}/handback", headers={"X-CSRF-Token": other_csrf})
                    ).status_code == 409
            mine = (await http.get("/admin/api/conversations?filter=mine")).json()
            assert [c["id"] for c in mine["conversations"]] == [session_id]

            # While a person has it, the shopper's message is saved and the assistant is quiet.
            asked = len(upstream.requests)
            events = await stream_chat(shopper, {"message": "It is order 1234.",
                                                 "sessionId": session_id})
            assert [e.event for e in events] == ["meta", "done"]
            assert events[1].data["status"] == "forwarded" and events[1].data["text"] == ""
            assert len(upstream.requests) == asked
            reply = await shopper.post("/chat/message", json={"message": "Still there?",
                                                              "sessionId": session_id})
            assert reply.status_code == 200 and reply.json()["reply"] == ""

            sent = await http.post(f"{act}/messages",
                                   json={"message": "Order 1234 ships on Friday."},
                                   headers={"X-CSRF-Token": csrf})
            assert sent.status_code == 201
            assert sent.json()["message"]["sender"] == "agent"
            history = (await shopper.get(f"/chat/history/{session_id}")).json()["messages"]
            assert [(m["sender"], m["text"]) for m in history][-3:] == [
                ("user", "It is order 1234."), ("user", "Still there?"),
                ("agent", "Order 1234 ships on Friday.")]
            assert history[-1]["agentName"] == "Grace"
            transcript = (await http.get(act)).json()["messages"]
            assert transcript[-1]["agentName"] == "Grace"

            back = await http.post(f"{act}/handback", headers={"X-CSRF-Token": csrf})
            assert back.json()["conversation"]["status"] == "bot"
            upstream.queue(Reply(tokens=["It ships Friday, as Grace said."]))
            answer = await stream_chat(shopper, {"message": "When does it ship?",
                                                 "sessionId": session_id})
            assert answer[-1].event == "done" and answer[-1].data["status"] == "complete"
            sent_to_model = upstream.requests[-1]["messages"]
            assert any("Order 1234 ships on Friday." in m["content"] and
                       m["role"] == "assistant" and "Grace" in m["content"]
                       for m in sent_to_model)

            resolved = await http.post(f"{act}/resolve", headers={"X-CSRF-Token": csrf})
            assert resolved.json()["conversation"]["status"] == "resolved"
            listed = (await http.get("/admin/api/conversations?filter=resolved")).json()
            assert session_id in [c["id"] for c in listed["conversations"]]
            unresolved = (await http.get("/admin/api/conversations?filter=unresolved")).json()
            assert session_id not in [c["id"] for c in unresolved["conversations"]]
            reopened = await http.post(f"{act}/reopen", headers={"X-CSRF-Token": csrf})
            assert reopened.json()["conversation"]["status"] == "bot"


async def test_the_inbox_filters_by_the_conversations_language(
        chat_app: RunningApp, database_url: str, upstream: FakeUpstream) -> None:
    async with chat_app.client() as shopper:
        german = (await stream_chat(shopper, {"message": "Wie lange dauert der Versand?"})
                  )[0].data["sessionId"]
        english = (await stream_chat(shopper, {"message": "How long does shipping take?"})
                   )[0].data["sessionId"]
    staff = await make_staff(database_url, [1])
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        me = (await http.get("/admin/api/me")).json()
        assert {"code": "de", "name": "German"} in me["languages"]  # the filter's choices
        listed = (await http.get("/admin/api/conversations?filter=all&language=de")).json()
        ids = [c["id"] for c in listed["conversations"]]
        assert german in ids and english not in ids
        assert {c["language"] for c in listed["conversations"]} == {"de"}
        everyone = [c["id"] for c in (await http.get(
            "/admin/api/conversations?filter=all&language=")).json()["conversations"]]
        assert german in everyone and english in everyone  # empty: every language
        # The transcript's summary says the language too.
        opened = (await http.get(f"/admin/api/conversations/{german}")).json()
        assert opened["conversation"]["language"] == "de"


@pytest.mark.parametrize("path", ["/admin/api/conversations?filter=everything",
                                  "/admin/api/conversations?language=german",
                                  "/admin/api/conversations?limit=0",
                                  "/admin/api/conversations/not-a-uuid"])
async def test_bad_staff_requests_get_a_clear_400(chat_app: RunningApp, database_url: str,
                                                 path: str) -> None:
    staff = await make_staff(database_url, [1])
    http, _ = await signed_in(chat_app, staff)
    async with aclosing(http):
        response = await http.get(path)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


async def test_the_signed_in_back_office_is_outside_the_shoppers_per_ip_limit(
        start_app: Callable[..., Any], database_url: str) -> None:
    app: RunningApp = await start_app(rate_limit_ip="4/15minutes")
    staff = await make_staff(database_url, [1])
    async with app.client() as http:
        assert (await sign_in(http, staff.email, staff.password)).status_code == 303
        for _ in range(6):  # an inbox re-reads on every change of its site
            assert (await http.get("/admin/api/conversations")).status_code == 200
        # The sign-in's two requests and these count: the shoppers' endpoints are limited still.
        statuses = [(await http.get("/chat/history/00000000-0000-4000-8000-000000000000")
                     ).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
