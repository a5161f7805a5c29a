"""The gaps page in Chromium, walked as an owner would: a shopper's question the knowledge base
could not answer, closed from the gaps page (sign in, open the gaps, write, publish) and answered
in the widget at once; the published answer edited and withdrawn from the same page. The walk is
timed (printed, never asserted) and screenshotted at desktop and phone size into test-artifacts/
(and SHOTS_DIR, when set)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_admin import make_staff
from tests.test_backoffice_browser import sign_in
from tests.test_feedback_browser import axe_violations
from tests.test_widget import (
    AI,
    ARTIFACTS,
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

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ANSWER = ("Not yet: we have no loyalty card. Students get 10% off with the code STUDY10 at"
          " checkout.")


@pytest.fixture(scope="module")
def knowledge_only_app(database_url: str, redis_url: str,
                       fake_model: FakeModel) -> Iterator[AppProcess]:
    """No model: an answer is the knowledge base's own words, so the curated one shows as
    written."""
    no_model = {**RATE_LIMITS, "RATE_LIMIT_SESSION": "100/minute", "OPENAI_API_KEY": "",
                "OPENAI_BASE_URL": ""}
    with app_process(database_url, redis_url, fake_model, no_model, "gaps-app.log") as app:
        yield app


def shots(page: Page, name: str) -> None:
    folders = [ARTIFACTS] + ([Path(os.environ["SHOTS_DIR"])] if os.environ.get("SHOTS_DIR")
                             else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.screenshot(path=str(folder / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)


def widget_answer(shop: Page, asked: str) -> str:
    before = shop.locator(AI).count()
    ask(shop, asked)
    answer = shop.locator(AI).nth(before)
    expect(answer).to_have_attribute("data-status", "complete")
    return answer.locator(".body").inner_text()


def test_an_owner_closes_a_gap_from_the_page_then_edits_and_withdraws_the_answer(
        new_context: Callable[..., BrowserContext], knowledge_only_app: AppProcess,
        database_url: str, servers: BackgroundLoop) -> None:
    app = knowledge_only_app
    asked = question("Do you have a loyalty card for students?")
    shop = new_context().new_page()
    shop.goto(app.url)
    open_chat(shop)
    assert ANSWER not in widget_answer(shop, asked)  # not found: a gap

    owner = servers.run(make_staff(database_url, [1], role="owner", name="Olive"))
    staff = new_context().new_page()
    started = time.monotonic()
    sign_in(staff, app.url, owner.email, owner.password)
    staff.get_by_role("link", name="Knowledge gaps").click()
    gap = staff.locator("#gaps > li").filter(has_text=asked)
    expect(gap).to_contain_text("not found 1")
    shots(staff, "gaps-list")
    gap.get_by_role("button", name="Write an answer").click()
    expect(staff.get_by_label("Answer", exact=True)).to_be_focused()
    expect(staff.get_by_label("Example questions (one per line)")).to_have_value(asked)
    staff.get_by_label("Answer", exact=True).fill(ANSWER)
    shots(staff, "gaps-write")
    staff.get_by_role("button", name="Publish").click()
    expect(staff.get_by_role("status")).to_contain_text("Published")
    assert widget_answer(shop, asked) == ANSWER  # the next shopper asking gets it at once
    closed_s = time.monotonic() - started
    print(f"\ngap closed by the browser in {closed_s:.1f} s: sign in, open the gaps, write,"
          " publish, asked again in the widget")
    shots(staff, "gaps-published")
    assert axe_violations(staff) == []

    # Edited from the page: the editor opens with the published words, saving replaces them.
    published = staff.locator("#published > li").filter(has_text=ANSWER)
    published.get_by_role("button", name="Edit").click()
    expect(staff.get_by_role("heading", name="Edit “")).to_be_visible()
    expect(staff.get_by_label("Answer", exact=True)).to_have_value(ANSWER)
    expect(staff.get_by_label("Example questions (one per line)")).to_have_value(asked)
    edited = "We have no loyalty card yet; students get 15% off with the code STUDY15."
    staff.get_by_label("Answer", exact=True).fill(edited)
    shots(staff, "gaps-edit")
    assert axe_violations(staff) == []
    staff.get_by_role("button", name="Save changes").click()
    expect(staff.get_by_role("status")).to_contain_text("Saved")
    expect(staff.locator("#editor")).to_be_hidden()
    expect(staff.locator("#published > li").filter(has_text=edited)).to_have_count(1)
    expect(staff.locator("#published > li").filter(has_text=ANSWER)).to_have_count(0)
    assert widget_answer(shop, asked) == edited

    # Withdrawn from the page: it leaves the list, and shoppers stop getting it.
    staff.locator("#published > li").filter(has_text=edited).get_by_role(
        "button", name="Withdraw").click()
    expect(staff.get_by_role("status")).to_contain_text("Withdrawn")
    expect(staff.locator("#published > li").filter(has_text=edited)).to_have_count(0)
    assert edited not in widget_answer(shop, asked)
