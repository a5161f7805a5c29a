"""A reload in Chromium shows the conversation as it was: during a person's takeover each line
once, in order, and no stale "Grace is typing" (the stream resumes where the history was read);
a waiting shopper who left no email is asked for it again, and the header never says "We're
online now" beside "Nobody can reply right now". Screenshots of the reloaded widget, desktop and
phone, go to test-artifacts/ (and SHOTS_DIR when set)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_shopper_email_browser, test_widget
from tests.test_admin import make_staff
from tests.test_backoffice_browser import AGENT, PHONE, sign_in
from tests.test_widget import (
    AI,
    ARTIFACTS,
    DESKTOP,
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

servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context
mailbox = test_shopper_email_browser.mailbox
store_site = test_shopper_email_browser.store_site
emailing_app = test_shopper_email_browser.emailing_app

# Every line of the widget's log, in order: "<sender>|<text>" for a message, "note|<text>" for
# a note such as "Grace joined the conversation."
LOG_LINES = """host => [...host.shadowRoot.querySelectorAll(".log > [data-chat-message], .log > p.note")]
  .map(el => (el.dataset.sender || "note") + "|" + el.textContent.trim())"""
# Notes whether the typing indicator shows at any moment from now on.
WATCH_TYPING = """host => {
  const typing = host.shadowRoot.querySelector("[data-chat-typing]");
  window.typingShown = !typing.hidden;
  new MutationObserver(() => { if (!typing.hidden) window.typingShown = true; })
    .observe(typing, { attributes: true, attributeFilter: ["hidden"] });
}"""


@pytest.fixture(scope="module")
def chat_app(database_url: str, redis_url: str, fake_model: FakeModel) -> Iterator[AppProcess]:
    with app_process(database_url, redis_url, fake_model, RATE_LIMITS, "widget-reload.log") as app:
        yield app


def shots(page: Page, name: str) -> None:
    folders = [ARTIFACTS] + ([Path(os.environ["SHOTS_DIR"])] if os.environ.get("SHOTS_DIR")
                             else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for folder in folders:
            page.screenshot(path=str(folder / f"{name}-{size}.png"))
    page.set_viewport_size(DESKTOP)


def log_lines(page: Page) -> list[str]:
    lines: list[str] = page.locator("support-chat").evaluate(LOG_LINES)
    return lines


def test_a_reload_during_a_takeover_shows_each_line_once_in_order_and_no_stale_typing(
        chat_app: AppProcess, new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    staff = servers.run(make_staff(database_url, [1], name="Grace"))
    shopper = new_context().new_page()
    shopper.goto(chat_app.url)
    open_chat(shopper)
    first = question("My parcel never came")
    fake_model.answer(first, "I could not find ", "that parcel.")
    ask(shopper, first)
    expect(shopper.locator(AI).last).to_contain_text("I could not find that parcel.")
    shopper.locator("[data-chat-handoff]").click()
    expect(shopper.get_by_text("We've asked a person to join.")).to_be_visible()

    agent = new_context().new_page()
    sign_in(agent, chat_app.url, staff.email, staff.password)
    agent.locator("#conversations a").filter(has_text="I could not find that parcel.").click()
    agent.get_by_role("button", name="Take over").click()
    expect(shopper.get_by_text("Grace joined the conversation.")).to_be_visible()
    agent.get_by_label("Message").fill("Hi, I'm Grace. Let me look.")
    expect(shopper.locator("[data-chat-typing]")).to_contain_text("Grace is typing")
    agent.get_by_role("button", name="Send").click()
    expect(shopper.locator(AGENT).last).to_contain_text("Hi, I'm Grace. Let me look.")
    agent.get_by_label("Message").fill("One moment")  # typing again, just before the reload

    shopper.reload()
    expect(shopper.locator(AGENT)).to_have_count(1)
    shopper.locator("support-chat").evaluate(WATCH_TYPING)
    open_chat(shopper)
    agent.get_by_label("Message").fill("")
    agent.get_by_label("Message").fill("It left our store on Monday.")
    agent.get_by_role("button", name="Send").click()
    # The live stream works after the reload, and what it brings comes once, after the rest.
    expect(shopper.locator(AGENT).last).to_contain_text("It left our store on Monday.")
    expect(shopper.locator(USER)).to_have_count(1)
    lines = log_lines(shopper)
    expected = [("user", first), ("ai", "I could not find that parcel."),
                ("agent", "Hi, I'm Grace. Let me look."), ("agent", "It left our store on Monday.")]
    assert len(lines) == len(expected), lines  # no line twice, no replayed "joined" note
    for line, (sender, text) in zip(lines, expected, strict=True):
        assert line.startswith(sender + "|") and text in line, lines
    # "Grace is typing" from before the reload never came back (new typing would, live).
    assert shopper.evaluate("window.typingShown") is False
    expect(shopper.locator("[data-chat-typing]")).to_be_hidden()
    shots(shopper, "widget-reloaded-with-agent")


def test_a_waiting_shopper_who_reloads_is_asked_for_an_email_again_and_never_told_online(
        emailing_app: AppProcess, new_context: Callable[..., BrowserContext],
        fake_model: FakeModel, store_site: tuple[int, str]) -> None:
    _, site_key = store_site
    shopper = new_context().new_page()
    # Within support hours (the hours' own computation is tests/test_support_hours.py's), but
    # nobody of the site is signed in.
    shopper.route(re.compile(r".*/chat/hours(\?.*)?$"), lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"known": True, "timeZone": "UTC", "open": True,
                         "closesAt": "2099-01-01T00:00:00Z", "opensAt": "2099-01-01T00:00:00Z"})))
    shopper.goto(f"{emailing_app.shop_origin}/shop?site={site_key}")
    open_chat(shopper)
    hours = shopper.locator("[data-chat-hours]")
    expect(hours).to_have_text("We're online now")
    first = question("Can I change my order's size?")
    fake_model.answer(first, "A person can ", "change it.")
    ask(shopper, first)
    expect(shopper.locator(AI).last).to_contain_text("A person can change it.")
    shopper.locator("[data-chat-handoff]").click()
    expect(shopper.locator("[data-chat-email]")).to_contain_text("Nobody can reply right now.")
    expect(hours).to_be_hidden()

    shopper.reload()
    open_chat(shopper)
    form = shopper.locator("[data-chat-email]")
    expect(form).to_contain_text("Nobody can reply right now.")
    expect(form).to_have_count(1)
    expect(shopper.get_by_text("We've asked a person to join.")).to_have_count(1)  # still waiting
    expect(hours).to_be_hidden()
    expect(shopper.get_by_label("Your email")).to_be_visible()
    form.scroll_into_view_if_needed()
    shots(shopper, "widget-reloaded-email-form")

    shopper.get_by_label("Your email").fill("ravi@example.com")
    shopper.get_by_role("button", name="Email me").click()
    expect(form).to_contain_text("We'll email ravi@example.com when someone replies.")
    shopper.reload()  # an address was left: the form does not come back
    open_chat(shopper)
    expect(shopper.locator(AI).last).to_contain_text("A person can change it.")
    expect(shopper.locator("[data-chat-email]")).to_have_count(0)
