"""The back office's team features in Chromium, with a German shopper in the widget: the
assistant offers a person under an answer it could not give, the inbox follows every site of
the staff member live, search, the signed-in customer's identity, staff notes the shopper never
sees, and an owner inviting an agent. Screenshots (desktop and phone) go to test-artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_admin import make_site, make_staff
from tests.test_backoffice_browser import shots, sign_in
from tests.test_widget import (
    AI,
    RATE_LIMITS,
    AppProcess,
    BackgroundLoop,
    FakeModel,
    app_process,
    ask,
    open_chat,
    question,
)

servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context

CUSTOMER = ("cust-7", "mia@shop.example")


@pytest.fixture(scope="module")
def second_site(database_url: str, servers: BackgroundLoop) -> tuple[int, str]:
    site: tuple[int, str] = servers.run(make_site(database_url, f"Second{uuid.uuid4().hex[:6]}"))
    return site


@pytest.fixture(scope="module")
def team_app(database_url: str, redis_url: str, fake_model: FakeModel,
             second_site: tuple[int, str]) -> Iterator[AppProcess]:
    # After the second site exists, so the app's directory has it from the start. The demo page
    # signs this customer's identity, as a store's server would.
    env = {**RATE_LIMITS, "DEMO_CUSTOMER": ":".join(CUSTOMER)}
    with app_process(database_url, redis_url, fake_model, env, "backoffice-team.log") as app:
        yield app


def test_the_offer_the_live_sites_search_identity_and_notes(
        team_app: AppProcess, second_site: tuple[int, str],
        new_context: Callable[..., BrowserContext], database_url: str, fake_model: FakeModel,
        servers: BackgroundLoop) -> None:
    other_id, other_key = second_site
    staff = servers.run(make_staff(database_url, [1, other_id], role="owner", name="Grace"))
    agent = new_context().new_page()
    sign_in(agent, team_app.url, staff.email, staff.password)
    agent.get_by_role("button", name="Waiting").click()

    # A shopper of the second site asks for a person: the inbox shows it live. (Its re-read
    # every 15 s is slower than this expectation's 10 s: only the site's stream can do it.)
    word = f"kelim{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=team_app.url, timeout=10) as shopper_api:
        started = shopper_api.post("/chat/message", json={
            "message": f"Is the {word} rug back in stock?", "siteKey": other_key})
        assert started.status_code == 200, started.text
        elsewhere = started.json()["sessionId"]
        assert shopper_api.post(f"/chat/conversations/{elsewhere}/handoff",
                                params={"siteKey": other_key}).status_code == 200
    expect(agent.locator(f'#conversations a[data-conversation="{elsewhere}"]')).to_be_visible()

    # A German shopper, signed in at the store; the assistant cannot help and offers a person.
    shopper = new_context(locale="de-DE").new_page()
    shopper.goto(team_app.url)
    open_chat(shopper)
    asked = question(f"Kann ich mit Muscheln bezahlen? {word}")
    fake_model.answer(asked, "Das weiß ich leider nicht. ",
                      "Schreiben Sie an help@saffronloom.example.")
    ask(shopper, asked)
    expect(shopper.locator(AI).last).to_contain_text("help@saffronloom.example")
    offer = shopper.locator("[data-chat-offer]")
    expect(offer).to_have_text("Mit einer Person sprechen")
    shots(shopper, "widget-offer-de")
    offer.click()
    expect(shopper.get_by_text("Wir haben eine Person gebeten, dazuzukommen.")).to_be_visible()
    expect(offer).to_have_count(0)

    row = agent.locator("#conversations a").filter(has_text="help@saffronloom.example")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(f"Signed in: {CUSTOMER[1]}")

    # Search: the word is in both conversations; "Muscheln" only in the German one.
    agent.get_by_role("button", name="Unresolved").click()
    agent.get_by_label("Search conversations").fill(word)
    agent.get_by_role("button", name="Search").click()
    expect(agent.locator("#conversations a")).to_have_count(2)
    agent.get_by_label("Search conversations").fill(f"{word} Muscheln")
    agent.get_by_role("button", name="Search").click()
    expect(agent.locator("#conversations a")).to_have_count(1)
    shots(agent, "inbox-search")
    agent.locator("#conversations a").click()
    expect(agent.locator("#customer")).to_have_text(
        f"Signed-in customer: {CUSTOMER[0]} · {CUSTOMER[1]}")

    agent.get_by_role("button", name="Take over").click()
    expect(shopper.get_by_text("Grace ist dem Gespräch beigetreten.")).to_be_visible()
    agent.locator("#notes-box summary").click()
    agent.get_by_label("Note").fill("Asked about paying in shells; a regular customer.")
    agent.get_by_role("button", name="Add note").click()
    expect(agent.locator("#notes")).to_contain_text("a regular customer.")
    expect(agent.locator("#note-count")).to_have_text("1")
    shots(agent, "conversation-notes")
    agent.get_by_label("Message").fill("Hallo, hier ist Grace.")
    agent.get_by_role("button", name="Send").click()
    expect(shopper.locator('[data-chat-message][data-sender="agent"]')).to_contain_text(
        "Hallo, hier ist Grace.")
    expect(shopper.locator("support-chat")).not_to_contain_text("regular customer")
    shopper.reload()
    open_chat(shopper)
    expect(shopper.locator('[data-chat-message][data-sender="agent"]')).to_have_count(1)
    expect(shopper.locator("support-chat")).not_to_contain_text("regular customer")
    shots(shopper, "widget-agent-de")


def test_an_owner_invites_an_agent_from_the_inbox(
        team_app: AppProcess, new_context: Callable[..., BrowserContext], database_url: str,
        servers: BackgroundLoop) -> None:
    owner = servers.run(make_staff(database_url, [1], role="owner", name="Olga"))
    page = new_context().new_page()
    sign_in(page, team_app.url, owner.email, owner.password)
    page.get_by_role("button", name="Invite an agent").click()
    email = f"new-{uuid.uuid4().hex[:6]}@shop.example"
    page.get_by_role("dialog").get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send invitation").click()
    result = page.locator("#invite-result")
    expect(result).to_contain_text("/admin/invite/")
    shots(page, "invite-dialog")
    link = result.inner_text().rsplit(" ", 1)[1]

    newcomer = new_context().new_page()
    newcomer.goto(link)
    expect(newcomer.get_by_text(email)).to_be_visible()
    shots(newcomer, "invite-page")
    newcomer.get_by_label("Name").fill("Nia")
    newcomer.get_by_label("Password").fill("nia's very own passphrase")
    newcomer.get_by_role("button", name="Set password").click()
    expect(newcomer.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    expect(newcomer.locator("#who")).to_contain_text("Nia")
    expect(newcomer.get_by_role("button", name="Invite an agent")).to_be_hidden()
    assert isinstance(newcomer, Page)
