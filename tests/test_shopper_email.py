"""Out of hours, over HTTP, with a real SMTP server (aiosmtpd) on loopback: the shopper leaves an
email, the agent replies after the shopper left, one email carries the replies and a link that
reopens the conversation; a stranger's token is refused; the "nobody took it" alert goes out
once across two instances."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest

from app import db
from app.conversation_events import build_feeds
from app.shopper_email import EMAIL_TEXTS, REOPEN_FRAGMENT, compose
from app.sites import SiteDirectory, SiteStore
from app.waiting_alerts import WaitingAlerts
from tests.conftest import FakeUpstream, RunningApp, read_events, stream_chat
from tests.test_admin import make_site, make_staff, signed_in
from tests.test_alert_email import Mailbox, serve_mailbox

WAIT_S = 15.0
LINK = re.compile(r"(\S+)#" + REOPEN_FRAGMENT + r"=([A-Za-z0-9_-]+)")


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    server = await serve_mailbox(box)
    yield box
    server.close()
    await server.wait_closed()


async def until(condition: Callable[[], Any], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 (a mailbox's list and SQL rows: no event)
            await asyncio.sleep(0.05)
    assert condition(), what


def mails_to(mailbox: Mailbox, address: str) -> list[Any]:
    return [m for m, to in zip(mailbox.messages, mailbox.recipients, strict=True)
            if to == [address]]


async def test_the_agents_reply_to_a_shopper_who_left_is_emailed_with_a_link_that_reopens_it(
        start_app: Callable[..., Any], upstream: FakeUpstream, mailbox: Mailbox,
        database_url: str, query: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    site_id, site_key = await make_site(database_url, f"Kurta{uuid.uuid4().hex[:6]}")
    agent = await make_staff(database_url, [site_id], name="Grace")
    app: RunningApp = await start_app(smtp_url=mailbox.url, smtp_from="chat@shop.example",
                                      reply_email_delay_s=1.5)
    shopper_address = f"mia-{uuid.uuid4().hex[:6]}@example.com"
    async with app.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "My kurta has a tear",
                                                  "siteKey": site_key}))[0].data["sessionId"]
        convo = f"/chat/conversations/{session_id}"
        handoff = await shopper.post(f"{convo}/handoff", params={"siteKey": site_key})
        # Nobody of this site is signed in: the widget is told to offer the email form.
        assert handoff.json()["status"] == "waiting" and handoff.json()["askEmail"] is True

        for bad in ("mia", "mia@", "mia @example.com", "mia@example", "a@b@c.com", 42, ""):
            refused = await shopper.post(f"{convo}/email", params={"siteKey": site_key},
                                         json={"email": bad})
            assert refused.status_code == 400, bad
            assert refused.json() == {"error": {
                "code": "bad_request",
                "message": "Please enter a valid email address, like name@example.com."}}
        elsewhere = await shopper.post(f"{convo}/email", params={"siteKey": site_key},
                                       json={"email": shopper_address,
                                             "pageUrl": "https://phish.example/login"})
        assert elsewhere.status_code == 400  # the link may only lead to the store's own pages
        left = await shopper.post(f"{convo}/email", params={"siteKey": site_key},
                                  json={"email": shopper_address,
                                        "pageUrl": f"{app.url}/products/kurta?size=m#top"})
        assert left.status_code == 200 and left.json()["email"] == shopper_address
        for bad_page in (42, "javascript:alert(1)", "ftp://127.0.0.1/x"):
            refused = await shopper.post(f"{convo}/email", params={"siteKey": site_key},
                                         json={"email": shopper_address, "pageUrl": bad_page})
            assert refused.status_code == 400, bad_page
        stranger = await shopper.post(f"/chat/conversations/{uuid.uuid4()}/email",
                                      params={"siteKey": site_key},
                                      json={"email": shopper_address})
        assert stranger.status_code == 404
        again = await shopper.post(f"{convo}/handoff", params={"siteKey": site_key})
        assert again.json()["askEmail"] is False  # it has an address now

    http, csrf = await signed_in(app, agent)
    async with aclosing(http):
        row = (await http.get(f"/admin/api/conversations/{session_id}")).json()["conversation"]
        assert row["shopperEmail"] == shopper_address  # the agent sees whom it goes to
        act = f"/admin/api/conversations/{session_id}"
        await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
        for text in ("Sorry about the tear, Mia!", "I've sent a replacement: order #5521."):
            sent = await http.post(f"{act}/messages", json={"message": text},
                                   headers={"X-CSRF-Token": csrf})
            assert sent.status_code == 201

    await until(lambda: mails_to(mailbox, shopper_address), "the reply email")
    [mail] = mails_to(mailbox, shopper_address)  # both replies, one email
    assert mail["From"] == "chat@shop.example"
    assert mail["Subject"].startswith("Grace from ")
    body = mail.get_content()
    assert "> Sorry about the tear, Mia!" in body and "> I've sent a replacement" in body
    assert session_id not in body
    link = LINK.search(body)
    assert link is not None
    assert link[1] == f"{app.url}/products/kurta?size=m"  # the page, its own fragment dropped
    token = link[2]
    assert query("SELECT reply_email_due_at FROM conversations WHERE id = %s",
                  session_id) == [(None,)]

    async with app.client() as browser_elsewhere:
        reopened = await browser_elsewhere.post("/chat/reopen", params={"siteKey": site_key},
                                                json={"token": token})
        assert reopened.status_code == 200 and reopened.json() == {"sessionId": session_id}
        history = await browser_elsewhere.get(f"/chat/history/{session_id}",
                                              params={"siteKey": site_key})
        assert [m["text"] for m in history.json()["messages"] if m["sender"] == "agent"] == [
            "Sorry about the tear, Mia!", "I've sent a replacement: order #5521."]
        # A stranger guessing, and the right token on another site: refused alike.
        for params, guess in (({"siteKey": site_key}, token[:-2] + "xy"), ({}, token)):
            stranger = await browser_elsewhere.post("/chat/reopen", params=params,
                                                    json={"token": guess})
            assert stranger.status_code == 404
            assert stranger.json()["error"]["code"] == "not_found"
        assert (await browser_elsewhere.post("/chat/reopen", json={"token": "../x"})
                ).status_code == 400
    query("UPDATE conversation_links SET expires_at = now() - interval '1 second'"
          " WHERE conversation_id = %s", session_id)
    async with app.client() as late:
        expired = await late.post("/chat/reopen", params={"siteKey": site_key},
                                  json={"token": token})
        assert expired.status_code == 404
    for secret in (token, session_id, shopper_address):
        assert secret not in caplog.text


async def test_a_reply_the_shopper_sees_live_is_not_emailed(
        start_app: Callable[..., Any], upstream: FakeUpstream, mailbox: Mailbox,
        database_url: str, query: Callable[..., Any]) -> None:
    site_id, site_key = await make_site(database_url, f"Live{uuid.uuid4().hex[:6]}")
    agent = await make_staff(database_url, [site_id], name="Linus")
    app: RunningApp = await start_app(smtp_url=mailbox.url, reply_email_delay_s=0.5)
    async with app.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "Hello", "siteKey": site_key})
                      )[0].data["sessionId"]
        convo = f"/chat/conversations/{session_id}"
        await shopper.post(f"{convo}/handoff", params={"siteKey": site_key})
        await shopper.post(f"{convo}/email", params={"siteKey": site_key},
                           json={"email": "here@example.com", "pageUrl": f"{app.url}/"})
        async with shopper.stream("GET", f"{convo}/stream",
                                  params={"siteKey": site_key}) as live:
            assert live.status_code == 200
            http, csrf = await signed_in(app, agent)
            async with aclosing(http):
                act = f"/admin/api/conversations/{session_id}"
                await http.post(f"{act}/takeover", headers={"X-CSRF-Token": csrf})
                await http.post(f"{act}/messages", json={"message": "I'm here."},
                                headers={"X-CSRF-Token": csrf})
            # Due, found connected, and put off until the shopper may have left.
            await until(lambda: query(
                "SELECT reply_email_due_at > now() + interval '10 seconds' FROM conversations"
                " WHERE id = %s", session_id) == [(True,)], "the email put off")
    assert mails_to(mailbox, "here@example.com") == []


async def test_nobody_taking_a_waiting_conversation_alerts_once_across_two_instances(
        start_app: Callable[..., Any], upstream: FakeUpstream, mailbox: Mailbox,
        database_url: str, query: Callable[..., Any], shared_settings: dict[str, Any]) -> None:
    site_id, site_key = await make_site(database_url, f"Wait{uuid.uuid4().hex[:6]}")
    settings = {"smtp_url": mailbox.url, "alert_email_to": "owner@shop.example",
                "waiting_alert_after_s": 0.5, **shared_settings}
    first: RunningApp = await start_app(**settings)
    await start_app(**settings)  # the second instance: its checks race the first's
    async with first.client() as shopper:
        session_id = (await stream_chat(shopper, {"message": "Is anyone there?",
                                                  "siteKey": site_key}))[0].data["sessionId"]
        await shopper.post(f"/chat/conversations/{session_id}/handoff",
                           params={"siteKey": site_key})

    def unclaimed() -> list[Any]:
        return [m for m in mails_to(mailbox, "owner@shop.example")
                if m["Subject"].startswith("Nobody has taken") and session_id in m.get_content()]

    await until(unclaimed, "the unclaimed alert")
    [alert] = unclaimed()
    assert "Is anyone there?" in alert.get_content()
    assert f"/admin#{session_id}" in alert.get_content()
    # The shopper's widget, still waiting, is asked to offer the email form.
    async with first.client() as widget, widget.stream(
            "GET", f"/chat/conversations/{session_id}/stream",
            params={"siteKey": site_key}) as live:
        async with asyncio.timeout(WAIT_S):
            async for event in read_events(live):
                if event.event == "status" and event.data.get("askEmail"):
                    assert event.data["status"] == "waiting"
                    break
    # Both instances' checks run again and again over the same database; the mark says this
    # wait was alerted, so neither sends it a second time.
    assert query("SELECT unclaimed_alert_for = waiting_since FROM conversations WHERE id = %s",
                 session_id) == [(True,)]
    assert len(unclaimed()) == 1


async def test_two_checks_at_once_claim_each_wait_exactly_once(
        database_url: str, query: Callable[..., Any]) -> None:
    """The claim itself, raced: two instances' checks at the same moment, over 30 waits."""
    site_id, _ = await make_site(database_url, f"Race{uuid.uuid4().hex[:6]}")
    waits = [str(uuid.uuid4()) for _ in range(30)]
    for conversation in waits:
        query("INSERT INTO conversations (id, site_id, status, waiting_since)"
              " VALUES (%s, %s, 'waiting', now() - interval '1 hour')", conversation, site_id)
    pools = [db.create_pool(database_url, 2) for _ in range(2)]
    for pool in pools:
        await pool.open(wait=True)
    try:
        directory = SiteDirectory()
        await directory.open(SiteStore(pools[0]))
        watches = [WaitingAlerts(pool, directory, None, build_feeds(None, "x"), after_s=60,
                                 ask_email=False) for pool in pools]
        raced = await asyncio.gather(*(watch.check() for watch in watches))
        again = await asyncio.gather(*(watch.check() for watch in watches))
        await directory.aclose()
    finally:
        for pool in pools:
            await pool.close()
    claims = [str(claimed) for found in raced for claimed in found if str(claimed) in waits]
    assert sorted(claims) == sorted(waits)  # each once, by one of the two
    assert not [c for found in again for c in found if str(c) in waits]


def test_the_reply_email_is_in_the_conversations_language_with_every_text_filled() -> None:
    link = "https://kurta.example/shop#chat-reopen=" + "t" * 43
    german = compose("mia@example.com", "Kurta", [("Grace", "Hallo Mia!\nNeue Zeile.")], link,
                     "de")
    assert german.subject == "Grace von Kurta hat geantwortet"
    assert "> Hallo Mia!\n> Neue Zeile." in german.body and link in german.body
    assert "der Link gilt 7 Tage" in german.body
    assert compose("m@x.io", "Kurta", [("Grace", "Hi")], link, "ja").subject == (
        "Grace from Kurta replied")  # a language without texts: English
    for language, texts in EMAIL_TEXTS.items():
        assert texts.keys() == EMAIL_TEXTS["en"].keys(), language
        made = compose("m@x.io", "Kurta\nHouse", [("Ada", "x"), ("Grace", "y")], link, language)
        assert "{" not in made.subject + made.body and "\n" not in made.subject, language
