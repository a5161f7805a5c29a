"""An agent who takes over a conversation the shopper had with the assistant alone appears in
the open widget at once, in Chromium: "joined" and the agent's messages, each once, without a
reload. The conversation stream is held while the panel is open and closed with it, and a
reopened panel resumes it where it was, so nothing written meanwhile is missed or repeated."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
from playwright.sync_api import BrowserContext, Page, Route, expect

from tests import test_backoffice_browser, test_widget
from tests.test_admin import make_staff
from tests.test_backoffice_browser import AGENT, shots, sign_in
from tests.test_widget import AI, AppProcess, BackgroundLoop, FakeModel, ask, open_chat, question

# The fixtures shared with tests/test_widget.py and tests/test_backoffice_browser.py
# (module-scoped: started again here).
servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context
two_instances = test_backoffice_browser.two_instances

WAIT_S = 15.0
JOINED = "Grace joined the conversation."
STREAM = re.compile(r"/chat/conversations/[^/]+/stream")


def open_streams(app: AppProcess) -> int:
    """The SSE streams the shopper's instance holds now (answers and conversation streams)."""
    metrics = httpx.get(f"{app.url}/metrics").text
    return int(float(re.search(r"^chat_active_streams (\S+)$", metrics, re.M)[1]))  # type: ignore[index]


def wait_for_streams(app: AppProcess, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (held := open_streams(app)) != count:
        assert time.monotonic() < deadline, f"{held} streams open, not {count}"
        time.sleep(0.1)


def set_tab_hidden(page: Page, hidden: bool) -> None:
    """What switching to another tab and back does to the page (Chromium has no such switch)."""
    page.evaluate("""(hidden) => {
        Object.defineProperty(document, "hidden", {value: hidden, configurable: true});
        document.dispatchEvent(new Event("visibilitychange"));
    }""", hidden)


def chat_with_the_assistant(shopper: Page, app: AppProcess, fake_model: FakeModel) -> str:
    shopper.goto(app.url)
    open_chat(shopper)
    asked = question("Do you ship to Norway?")
    fake_model.answer(asked, "Yes, we ship ", "to Norway.")
    ask(shopper, asked)
    expect(shopper.locator(AI).last).to_contain_text("Yes, we ship to Norway.")
    return asked


def take_over_and_write(agent: Page, app: AppProcess, asked: str, email: str, password: str,
                        text: str) -> None:
    sign_in(agent, app.url, email, password)
    agent.locator("#conversations a").filter(has_text="Yes, we ship to Norway.").first.click()
    expect(agent.locator("#transcript")).to_contain_text(asked)
    agent.get_by_role("button", name="Take over").click()
    expect(agent.locator("#detail-status")).to_have_text("with Grace")
    send(agent, text)


def send(agent: Page, text: str) -> None:
    agent.get_by_label("Message").fill(text)
    agent.get_by_role("button", name="Send").click()
    expect(agent.locator("#transcript")).to_contain_text(text)


def test_an_agent_taking_over_a_bot_only_chat_appears_in_the_open_panel_at_once(
        two_instances: tuple[AppProcess, AppProcess], new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    shopper_app, agent_app = two_instances
    staff = servers.run(make_staff(database_url, [1], name="Grace"))
    shopper = new_context().new_page()
    asked = chat_with_the_assistant(shopper, shopper_app, fake_model)
    assert shopper.locator("[data-chat-handoff]").is_visible()  # nobody was asked for

    take_over_and_write(new_agent := new_context().new_page(), agent_app, asked, staff.email,
                        staff.password, "Hi, I'm Grace. Norway takes 3 days.")
    expect(shopper.get_by_text(JOINED)).to_be_visible()
    expect(shopper.locator(AGENT).last).to_contain_text("Hi, I'm Grace. Norway takes 3 days.")
    expect(shopper.locator("[data-chat-handoff]")).to_be_hidden()  # a person is here already
    # One stream, in order: once the next message is shown, any repeat would be shown too.
    send(new_agent, "Anything else?")
    expect(shopper.locator(AGENT).last).to_contain_text("Anything else?")
    expect(shopper.get_by_text(JOINED)).to_have_count(1)
    expect(shopper.locator(AGENT)).to_have_count(2)
    shots(shopper, "widget-takeover")


def test_a_closed_panel_holds_no_stream_and_reopening_it_shows_what_was_missed_once(
        two_instances: tuple[AppProcess, AppProcess], new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    shopper_app, agent_app = two_instances
    staff = servers.run(make_staff(database_url, [1], name="Grace"))
    shopper = new_context().new_page()
    asked = chat_with_the_assistant(shopper, shopper_app, fake_model)
    wait_for_streams(shopper_app, 1)  # the open panel follows its conversation
    set_tab_hidden(shopper, True)
    wait_for_streams(shopper_app, 0)  # a tab in the background holds none
    set_tab_hidden(shopper, False)
    wait_for_streams(shopper_app, 1)
    shopper.locator("[data-chat-close]").click()
    wait_for_streams(shopper_app, 0)  # an idle widget holds no connection

    take_over_and_write(new_context().new_page(), agent_app, asked, staff.email, staff.password,
                        "Hi, I'm Grace. Are you still there?")
    open_chat(shopper)
    expect(shopper.locator(AGENT).last).to_contain_text("Hi, I'm Grace. Are you still there?")
    expect(shopper.get_by_text(JOINED)).to_have_count(1)
    # "joined" came before the message, in the stream's order, and nothing else came twice.
    assert shopper.locator(".note, [data-chat-message]").all_inner_texts()[-2:][0] == JOINED
    expect(shopper.locator(AGENT)).to_have_count(1)


def test_a_refused_stream_is_asked_for_again_when_the_panel_opens_again(
        two_instances: tuple[AppProcess, AppProcess], new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop) -> None:
    shopper_app, agent_app = two_instances
    staff = servers.run(make_staff(database_url, [1], name="Grace"))
    shopper = new_context().new_page()
    refused: list[str] = []

    def refuse_once(route: Route) -> None:
        refused.append(route.request.url)
        route.fulfill(status=503, body="")
        shopper.unroute(STREAM, refuse_once)

    shopper.route(STREAM, refuse_once)  # e.g. the instance was restarting
    asked = chat_with_the_assistant(shopper, shopper_app, fake_model)
    # The stream is asked for once the answer has named the conversation: wait for the refusal
    # (the route handler runs while Playwright waits), with a deadline.
    for _ in range(200):
        if refused:
            break
        shopper.wait_for_timeout(50)
    shopper.wait_for_timeout(300)  # time enough for a retry, which must not come
    assert len(refused) == 1  # an EventSource does not retry a refusal by itself
    shopper.locator("[data-chat-close]").click()
    open_chat(shopper)
    wait_for_streams(shopper_app, 1)
    take_over_and_write(new_context().new_page(), agent_app, asked, staff.email, staff.password,
                        "Hi, I'm Grace.")
    expect(shopper.locator(AGENT).last).to_contain_text("Hi, I'm Grace.")
