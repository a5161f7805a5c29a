"""The back office and the widget together in Chromium: a shopper on one instance asks for a
person, an agent on another (sharing Redis) sees it, takes over, they write both ways, and
the agent hands back to the assistant. Screenshots of the inbox and the conversation, desktop
and phone, go to test-artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_admin import make_staff
from tests.test_widget import (
    AI,
    ARTIFACTS,
    RATE_LIMITS,
    USER,
    AppProcess,
    BackgroundLoop,
    FakeModel,
    app_process,
    ask,
    open_chat,
    question,
)

# The fixtures this module shares with tests/test_widget.py (module-scoped: started again here).
servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context

AGENT = '[data-chat-message][data-sender="agent"]'
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def two_instances(database_url: str, redis_url: str, fake_model: FakeModel
                  ) -> Iterator[tuple[AppProcess, AppProcess]]:
    shared = {**RATE_LIMITS, "REDIS_PREFIX": f"test-backoffice-{uuid.uuid4().hex[:12]}"}
    with app_process(database_url, redis_url, fake_model, shared, "backoffice-shopper.log") as a, \
            app_process(database_url, redis_url, fake_model, shared, "backoffice-agent.log") as b:
        yield a, b


def sign_in(page: Page, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/admin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()


def shots(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-desktop.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"))
    page.set_viewport_size({"width": 1200, "height": 760})


def test_a_shopper_asks_for_a_person_and_an_agent_takes_over_and_hands_back(
        two_instances: tuple[AppProcess, AppProcess], new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    shopper_app, agent_app = two_instances
    # Playwright's sync API has a loop running in this thread: the servers' loop does it.
    staff = servers.run(make_staff(database_url, [1], name="Grace"))

    shopper = new_context().new_page()
    shopper.goto(shopper_app.url)
    open_chat(shopper)
    first = question("Where is my parcel?")
    fake_model.answer(first, "I could not find ", "your parcel.")
    ask(shopper, first)
    expect(shopper.locator(AI).last).to_contain_text("I could not find your parcel.")
    shopper.locator("[data-chat-handoff]").click()
    expect(shopper.get_by_text("We've asked a person to join.")).to_be_visible()

    agent = new_context().new_page()
    sign_in(agent, agent_app.url, staff.email, staff.password)
    agent.get_by_role("button", name="Waiting").click()
    row = agent.locator("#conversations a").filter(has_text="I could not find your parcel.")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("waiting")
    shots(agent, "inbox")
    row.click()
    expect(agent.locator("#transcript")).to_contain_text(first)
    agent.get_by_role("button", name="Take over").click()
    expect(agent.locator("#detail-status")).to_have_text("with Grace")
    expect(shopper.get_by_text("Grace joined the conversation.")).to_be_visible()

    agent.get_by_label("Message").fill("Hi, I'm Grace. Let me look that up.")
    expect(shopper.locator("[data-chat-typing]")).to_contain_text("Grace is typing")
    agent.get_by_role("button", name="Send").click()
    expect(shopper.locator(AGENT).last).to_contain_text("Hi, I'm Grace. Let me look that up.")
    expect(shopper.locator(AGENT).last).to_contain_text("Grace")

    asked = len(fake_model.questions)
    shopper.locator("[data-chat-input]").fill("Thanks! It is order 1234.")
    expect(agent.get_by_text("The shopper is typing…")).to_be_visible()
    shopper.locator("[data-chat-input]").press("Enter")
    expect(shopper.locator(USER).last).to_have_text("Thanks! It is order 1234.")
    expect(agent.locator("#transcript")).to_contain_text("Thanks! It is order 1234.")
    # The message ends the indicator at once (it used to linger for 4 s after the message).
    assert agent.locator("#shopper-typing").is_hidden()
    assert len(fake_model.questions) == asked  # the assistant stayed quiet
    agent.get_by_label("Message").fill("Order 1234 ships on Friday.")
    agent.get_by_role("button", name="Send").click()
    expect(shopper.locator(AGENT).last).to_contain_text("Order 1234 ships on Friday.")
    agent.get_by_role("button", name="Mine").click()
    expect(agent.locator("#conversations a")).to_have_count(1)
    expect(agent.locator("#transcript")).to_contain_text("Order 1234 ships on Friday.")
    shots(agent, "conversation")
    shots(shopper, "widget-with-agent")

    agent.get_by_role("button", name="Hand back").click()
    expect(shopper.get_by_text("The assistant is back.")).to_be_visible()
    later = question("When does it ship?")
    fake_model.answer(later, "As Grace said, ", "on Friday.")
    ask(shopper, later)
    expect(shopper.locator(AI).last).to_contain_text("As Grace said, on Friday.")
    assert fake_model.questions[-1] == later
    expect(agent.locator("#transcript")).to_contain_text("As Grace said, on Friday.")
    expect(agent.locator("#detail-status")).to_have_text("assistant")

    # Resolving what the assistant has again asks the shopper once, without a second "back".
    agent.get_by_role("button", name="Resolve", exact=True).click()
    expect(shopper.get_by_text("Did we solve your problem?")).to_be_visible()
    expect(shopper.get_by_text("The assistant is back.")).to_have_count(1)
    # A new conversation starts clean: the old one's notices and question are gone with it.
    shopper.locator("[data-chat-new]").click()
    expect(shopper.locator(USER)).to_have_count(0)
    expect(shopper.get_by_text("The assistant is back.")).to_have_count(0)
    expect(shopper.get_by_text("Grace joined the conversation.")).to_have_count(0)
    expect(shopper.get_by_text("Did we solve your problem?")).to_have_count(0)


def test_the_inbox_filters_by_language_and_the_transcript_names_it(
        two_instances: tuple[AppProcess, AppProcess], new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    shopper_app, agent_app = two_instances
    staff = servers.run(make_staff(database_url, [1], name="Lena"))
    asked = {"de": question("Wie lange dauert der Versand nach Berlin?"),
             "es": question("¿Cuánto tarda el envío a Madrid?"),
             "en": question("How long does shipping to Boston take?")}
    fake_model.answer(asked["de"], "Die Lieferung dauert ", "5-7 Werktage.")
    fake_model.answer(asked["es"], "La entrega tarda ", "5-7 días hábiles.")
    fake_model.answer(asked["en"], "Delivery takes ", "5-7 business days.")
    for text in asked.values():
        with httpx.stream("POST", f"{shopper_app.url}/chat/stream", json={"message": text},
                          timeout=30) as response:
            assert response.status_code == 200
            assert "event: done" in response.read().decode()

    agent = new_context().new_page()
    sign_in(agent, agent_app.url, staff.email, staff.password)
    agent.get_by_role("button", name="Unresolved").click()
    expect(agent.locator("#conversations a").filter(has_text="5-7 business days.")).not_to_have_count(0)
    agent.get_by_label("Language").select_option("de")
    rows = agent.locator("#conversations a")
    expect(rows.filter(has_text="5-7 Werktage.")).to_have_count(1)
    expect(rows.filter(has_text="5-7 business days.")).to_have_count(0)
    expect(rows.filter(has_text="5-7 días hábiles.")).to_have_count(0)
    for badge in rows.locator(".lang").all():
        expect(badge).to_have_text("DE")
    shots(agent, "inbox-language-filter")
    rows.filter(has_text="5-7 Werktage.").click()
    expect(agent.locator("#detail-language")).to_have_text("in German")
    expect(agent.locator("#transcript")).to_contain_text(asked["de"])
    shots(agent, "conversation-language")
