"""Feedback in Chromium: the widget's thumbs under an answer (labelled, aria-pressed, changeable,
a comment on thumbs down, kept after a reload), the vote in the back office's transcript and its
"Thumbs down" filter, a gap closed from the gaps page, and "Did we solve your problem?" once a
person resolved the conversation. Screenshots (desktop and phone) go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psycopg
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_admin import make_staff
from tests.test_backoffice_browser import sign_in
from tests.test_widget import (
    AI,
    ARTIFACTS,
    AppProcess,
    BackgroundLoop,
    FakeModel,
    ask,
    open_chat,
    question,
)
from tests.test_widget_reading import widget_violations

servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context
chat_app = test_widget.chat_app

AGENT = '[data-chat-message][data-sender="agent"]'
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def shots(page: Page, name: str) -> None:
    """Desktop and phone screenshots into test-artifacts/ (and SHOTS_DIR, when set)."""
    folders = [ARTIFACTS] + ([Path(os.environ["SHOTS_DIR"])] if os.environ.get("SHOTS_DIR")
                             else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.screenshot(path=str(folder / f"{name}-{size}.png"))
    page.set_viewport_size(DESKTOP)


def axe_violations(page: Page) -> list[str]:
    return sorted(f"{violation['id']}: {node['target']}"
                  for violation in Axe().run(page).response["violations"]
                  for node in violation["nodes"])


def one(database_url: str, sql: str, *params: object) -> object:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


def test_thumbs_under_an_answer_vote_change_take_a_comment_and_survive_a_reload(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, database_url: str, servers: BackgroundLoop) -> None:
    page = new_context().new_page()
    page.goto(chat_app.url)
    open_chat(page)
    asked = question("Do you sell kayak paddles?")
    fake_model.answer(asked, "We do not sell ", "kayak paddles.")
    ask(page, asked)
    answer = page.locator(AI).last
    expect(answer).to_contain_text("We do not sell kayak paddles.")
    helpful = answer.get_by_role("button", name="Helpful", exact=True)
    not_helpful = answer.get_by_role("button", name="Not helpful")
    expect(helpful).to_have_attribute("aria-pressed", "false")
    expect(not_helpful).to_have_attribute("aria-pressed", "false")
    message_id = answer.get_attribute("data-message-id")

    helpful.click()
    expect(helpful).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_label("What was missing? (optional)")).to_be_hidden()
    assert one(database_url, "SELECT feedback_rating FROM messages WHERE id = %s",
               message_id) == "up"

    not_helpful.click()
    expect(not_helpful).to_have_attribute("aria-pressed", "true")
    expect(helpful).to_have_attribute("aria-pressed", "false")
    comment = answer.get_by_label("What was missing? (optional)")
    expect(comment).to_be_focused()
    comment.fill("I wanted to know where to buy them")
    shots(page, "widget-thumbs-comment")
    comment.press("Enter")
    expect(answer.get_by_text("Thanks for your feedback.")).to_be_visible()
    assert widget_violations(page) == []
    assert one(database_url, "SELECT feedback_comment FROM messages WHERE id = %s",
               message_id) == "I wanted to know where to buy them"
    shots(page, "widget-thumbs")

    page.reload()
    open_chat(page)
    again = page.locator(f'{AI}[data-message-id="{message_id}"]')
    expect(again.get_by_role("button", name="Not helpful")).to_have_attribute(
        "aria-pressed", "true")

    # The owner sees it in the transcript and in the "Thumbs down" list, then closes the gap.
    owner = servers.run(make_staff(database_url, [1], role="owner", name="Olive"))
    staff = new_context().new_page()
    sign_in(staff, chat_app.url, owner.email, owner.password)
    staff.get_by_role("button", name="Thumbs down").click()
    row = staff.locator("#conversations a").filter(has_text="We do not sell kayak paddles.")
    expect(row).to_have_count(1)
    row.click()
    expect(staff.locator("#transcript")).to_contain_text(
        "Thumbs down: “I wanted to know where to buy them”")
    shots(staff, "inbox-thumbs-down")

    staff.get_by_role("link", name="Knowledge gaps").click()
    gap = staff.locator("#gaps > li").filter(has_text=asked)
    expect(gap).to_have_count(1)
    expect(gap).to_contain_text("thumbs down 1")
    expect(gap).to_contain_text("“I wanted to know where to buy them”")
    shots(staff, "gaps")
    assert axe_violations(staff) == []
    gap.get_by_role("button", name="Write an answer").click()
    expect(staff.get_by_label("Example questions (one per line)")).to_have_value(asked)
    staff.get_by_label("Title", exact=True).fill("Do you sell kayak paddles?")
    staff.get_by_label("Answer", exact=True).fill("Not yet: we sell clothes only. Paddle shops near you"
                                      " can help.")
    shots(staff, "gaps-editor")
    assert axe_violations(staff) == []
    staff.get_by_role("button", name="Publish").click()
    expect(staff.get_by_role("status")).to_contain_text("Published")
    expect(staff.locator("#published")).to_contain_text("Not yet: we sell clothes only.")
    expect(staff.locator("#gaps > li").filter(has_text=asked)).to_have_count(0)
    shots(staff, "gaps-published")
    assert one(database_url, "SELECT count(*) FROM knowledge_chunks WHERE article_path ="
               " 'back-office#' || (SELECT max(id) FROM curated_answers)") == 1


def test_did_we_solve_your_problem_is_asked_once_after_a_person_resolves(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, database_url: str, servers: BackgroundLoop) -> None:
    shopper = new_context().new_page()
    shopper.goto(chat_app.url)
    open_chat(shopper)
    asked = question("My order arrived damaged")
    fake_model.answer(asked, "Sorry to hear that.")
    ask(shopper, asked)
    expect(shopper.locator(AI).last).to_contain_text("Sorry to hear that.")
    shopper.locator("[data-chat-handoff]").click()
    expect(shopper.get_by_text("We've asked a person to join.")).to_be_visible()

    member = servers.run(make_staff(database_url, [1], name="Grace"))
    agent = new_context().new_page()
    sign_in(agent, chat_app.url, member.email, member.password)
    agent.get_by_role("button", name="Waiting").click()
    agent.locator("#conversations a").filter(has_text="Sorry to hear that.").click()
    agent.get_by_role("button", name="Take over").click()
    expect(agent.locator("#detail-status")).to_have_text("with Grace")
    expect(shopper.get_by_text("Grace joined the conversation.")).to_be_visible()
    agent.get_by_label("Message").fill("A new one is on its way.")
    agent.get_by_role("button", name="Send").click()
    agent_message = shopper.locator(AGENT).last
    expect(agent_message).to_contain_text("A new one is on its way.")
    agent_message.get_by_role("button", name="Helpful", exact=True).click()
    expect(agent_message.get_by_role("button", name="Helpful", exact=True)).to_have_attribute(
        "aria-pressed", "true")
    agent.get_by_role("button", name="Resolve", exact=True).click()

    survey = shopper.get_by_role("group").filter(has_text="Did we solve your problem?")
    expect(survey).to_be_visible()
    shots(shopper, "widget-csat")
    survey.get_by_role("button", name="Yes, thanks").click()
    expect(shopper.get_by_text("Thanks for your feedback.").last).to_be_visible()
    session_id = shopper.evaluate(
        "Object.keys(localStorage).filter(k => k.endsWith(':sessionId'))"
        ".map(k => localStorage.getItem(k))[0]")
    assert one(database_url, "SELECT csat FROM conversations WHERE id = %s", session_id) == "yes"

    shopper.reload()
    open_chat(shopper)
    expect(shopper.locator(AGENT).last).to_contain_text("A new one is on its way.")
    expect(shopper.get_by_text("Did we solve your problem?")).to_have_count(0)  # asked once


def test_a_bot_only_conversation_resolved_by_staff_asks_when_the_shopper_comes_back(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, database_url: str, servers: BackgroundLoop) -> None:
    # No person joined and the panel is closed, so the widget holds no stream; it reads the
    # status again when the shopper opens the panel (or returns to the tab).
    shopper = new_context().new_page()
    shopper.goto(chat_app.url)
    open_chat(shopper)
    asked = question("Can I change my delivery address")
    fake_model.answer(asked, "Yes, until it ships: reply with the new address.")
    ask(shopper, asked)
    expect(shopper.locator(AI).last).to_have_attribute("data-status", "complete")
    shopper.locator("[data-chat-launcher]").click()  # the shopper closes the panel

    member = servers.run(make_staff(database_url, [1], name="Rosa"))
    agent = new_context().new_page()
    sign_in(agent, chat_app.url, member.email, member.password)
    agent.locator("#conversations a").filter(has_text="Yes, until it ships").click()
    agent.get_by_role("button", name="Resolve", exact=True).click()
    expect(agent.locator("#detail-status")).to_contain_text("resolved")

    survey = shopper.get_by_role("group").filter(has_text="Did we solve your problem?")
    expect(survey).to_have_count(0)
    open_chat(shopper)  # back to the chat
    expect(survey).to_be_visible()
    shots(shopper, "widget-csat-on-return")
    survey.get_by_role("button", name="Not really").click()
    expect(shopper.get_by_text("Thanks for your feedback.").last).to_be_visible()
    session_id = shopper.evaluate(
        "Object.keys(localStorage).filter(k => k.endsWith(':sessionId'))"
        ".map(k => localStorage.getItem(k))[0]")
    assert one(database_url, "SELECT csat FROM conversations WHERE id = %s", session_id) == "no"

    # Closing and opening the panel again (another status check) asks no second time.
    shopper.locator("[data-chat-launcher]").click()
    open_chat(shopper)
    expect(shopper.get_by_text("Thanks for your feedback.")).to_have_count(1)
    expect(shopper.get_by_role("button", name="Not really")).to_have_count(0)
