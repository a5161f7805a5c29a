"""The widget as a shopper reads it, in Chromium against the real app: the newest answer stays in
view, long answers are drawn once a frame, focus stays in the chat, links show where they go,
and an axe-core audit of the open widget.

The fake model and the browser are the fixtures of tests/test_widget.py; the app is the same
but lets one conversation ask more than a few questions a minute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_widget import (
    AI,
    DESKTOP,
    RATE_LIMITS,
    USER,
    AppProcess,
    FakeModel,
    app_process,
    ask,
    open_chat,
    question,
    screenshot,
)

# The fixtures this module shares with tests/test_widget.py (module-scoped: started again here).
servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context
page = test_widget.page


@pytest.fixture(scope="module")
def chat_app(database_url: str, redis_url: str, fake_model: FakeModel) -> Iterator[AppProcess]:
    # MAX_TOKENS room for the 300 KB answer: the server cuts an answer off at MAX_TOKENS x 16
    # characters whatever the model sends (app/answer_run.py answer_caps).
    env = {**RATE_LIMITS, "RATE_LIMIT_SESSION": "1000/minute", "MAX_TOKENS": "25000"}
    with app_process(database_url, redis_url, fake_model, env, "widget-reading-app.log") as app:
        yield app


PHONE = {"width": 375, "height": 667}
VIEWS = {"desktop": {"viewport": DESKTOP},
         "phone": {"viewport": PHONE, "is_mobile": True, "has_touch": True,
                   "device_scale_factor": 2}}

# How many pixels of the newest answer lie below what the shopper can see (the log's visible
# box, itself cut by the window).
HIDDEN_PIXELS = """log => {
  const answers = log.querySelectorAll('[data-sender="ai"]');
  const newest = answers[answers.length - 1];
  const visibleBottom = Math.min(log.getBoundingClientRect().bottom, innerHeight);
  return Math.max(0, Math.round(newest.getBoundingClientRect().bottom - visibleBottom));
}"""


def after_two_frames(page: Page) -> None:
    """Let the frame that follows a change (layout, resize observers) run, and one more."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def long_answer(words: int) -> list[str]:
    text = " ".join(f"word{n}" for n in range(words))
    return [text[i:i + 40] for i in range(0, len(text), 40)] + [" The end."]


def view_page(new_context: Callable[..., BrowserContext], chat_app: AppProcess,
              view: str) -> Page:
    page = new_context(**VIEWS[view]).new_page()
    page.goto(chat_app.url)
    return page


@pytest.mark.parametrize("view", VIEWS)
def test_the_end_of_the_newest_answer_is_always_in_view(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, view: str) -> None:
    page = view_page(new_context, chat_app, view)
    open_chat(page)
    log = page.locator('[role="log"]')
    hidden = []
    for number, words in enumerate([120, 4, 160, 200, 3]):
        asked = question(f"Question {number}")
        fake_model.answer(asked, *long_answer(words))
        ask(page, asked)
        expect(page.locator(AI).nth(number)).to_have_attribute("data-status", "complete")
        expect(page.locator("[data-chat-typing]")).to_be_hidden()
        after_two_frames(page)
        hidden.append(log.evaluate(HIDDEN_PIXELS))
    assert hidden == [0, 0, 0, 0, 0]
    screenshot(page, f"widget-{view}-long-answers.png")


@pytest.mark.parametrize("view", VIEWS)
def test_a_shopper_who_scrolled_up_stays_where_they_were(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, view: str) -> None:
    page = view_page(new_context, chat_app, view)
    open_chat(page)
    first = question("Tell me everything")
    fake_model.answer(first, *long_answer(250))
    ask(page, first)
    expect(page.locator(AI)).to_have_attribute("data-status", "complete")

    for tokens in (["Short ", "answer."], long_answer(150)):
        asked = question("And then?")
        script = fake_model.answer(asked, *tokens, held=True)
        ask(page, asked)
        script.release()
        expect(page.locator(AI).last).to_have_attribute("data-status", "streaming")
        log = page.locator('[role="log"]')
        log.hover()
        page.mouse.wheel(0, -250)
        page.wait_for_function(
            "log => log.scrollHeight - log.clientHeight - log.scrollTop > 200",
            arg=log.element_handle())
        reading_at = log.evaluate("log => log.scrollTop")
        script.release_all()
        expect(page.locator(AI).last).to_have_attribute("data-status", "complete")
        expect(page.locator("[data-chat-typing]")).to_be_hidden()
        after_two_frames(page)
        assert log.evaluate("log => log.scrollTop") == reading_at
        assert log.evaluate(HIDDEN_PIXELS) > 0  # the end is below, where the shopper left it


# Counts, in the page, the animation frames and the batches of changes to the answer's DOM (a
# mutation observer is called once per batch), and keeps the answer's first paragraph to see
# whether it is ever rebuilt.
WATCH_ANSWER = """answer => {
  const seen = window.__seen = {frames: 0, batches: 0, first: answer.querySelector('p')};
  (function tick() { seen.frames++; requestAnimationFrame(tick); })();
  new MutationObserver(() => { seen.batches++; })
    .observe(answer, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_a_300_kb_answer_is_drawn_at_most_once_a_frame(page: Page, fake_model: FakeModel) -> None:
    paragraphs = [f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 10 + "\n\n"
                  for n in range(1100)]
    tokens = [p[i:i + 50] for p in paragraphs for i in range(0, len(p), 50)]
    assert len("".join(tokens)) > 300_000
    asked = question("Tell me a very long story")
    script = fake_model.answer(asked, *tokens, "The end.", held=True)
    open_chat(page)
    ask(page, asked)
    script.release(30)
    answer = page.locator(AI)
    expect(answer.locator("p").nth(2)).to_contain_text("Paragraph 2:")
    answer.evaluate(WATCH_ANSWER)

    script.release(len(tokens) - 30)  # all but "The end."
    expect(answer.locator("p").last).to_contain_text("Paragraph 1099: lorem")
    expect(answer).to_have_attribute("data-status", "streaming")
    seen = page.evaluate("() => ({frames: __seen.frames, batches: __seen.batches,"
                         " firstKept: __seen.first.isConnected})")
    print(f"{len(tokens)} tokens, {seen['frames']} frames, {seen['batches']} DOM updates")
    assert seen["batches"] <= seen["frames"] + 2
    assert seen["firstKept"], "a finished paragraph was parsed and built again"
    expect(answer.locator("p")).to_have_count(1100)

    script.release()
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator("p")).to_have_count(1101)
    expect(answer.locator("p").last).to_have_text("The end.")


def test_stop_keeps_focus_in_the_message_box(page: Page, fake_model: FakeModel) -> None:
    asked = question("Write me a poem")
    script = fake_model.answer(asked, "Roses ", "are ", "red", held=True)
    open_chat(page)
    ask(page, asked)
    script.release()
    expect(page.locator(AI)).to_have_attribute("data-status", "streaming")
    page.locator("[data-chat-stop]").click()
    expect(page.locator(AI)).to_have_attribute("data-status", "cancelled")
    expect(page.locator("[data-chat-stop]")).to_be_hidden()
    expect(page.locator("[data-chat-input]")).to_be_focused()
    assert page.evaluate("document.activeElement.localName") == "support-chat"
    screenshot(page, "widget-desktop-stopped.png")


def test_on_a_phone_tab_stays_inside_the_panel(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel) -> None:
    page = view_page(new_context, chat_app, "phone")
    open_chat(page)
    asked = question("Where is the size guide?")
    fake_model.answer(asked, "See ", "[the size guide](https://example.com/sizes).")
    ask(page, asked)
    expect(page.locator(AI)).to_have_attribute("data-status", "complete")

    # Where focus is: inside the panel (which element), or "outside" it.
    focused = """() => {
      const inside = document.activeElement.shadowRoot?.activeElement;
      return inside && inside.closest('[role=dialog]') ? inside.localName : 'outside';
    }"""
    stops = []
    for key in ["Tab"] * 10 + ["Shift+Tab"] * 10:
        page.keyboard.press(key)
        stops.append(page.evaluate(focused))
    assert "outside" not in stops, stops
    assert {"a", "button", "textarea", "div"} <= set(stops)  # the answer's link is on the way
    expect(page.locator('[role="dialog"]')).to_have_attribute("aria-modal", "true")
    # The desktop panel is not modal: Tab leaves it for the page as usual.
    desktop = view_page(new_context, chat_app, "desktop")
    open_chat(desktop)
    expect(desktop.locator('[role="dialog"]')).to_have_attribute("aria-modal", "false")


def contrast(first: str, second: str) -> float:
    def luminance(color: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"[\d.]+", color)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# The focused element's ring colour and the first opaque background behind it.
RING_AND_BACKGROUND = """el => {
  let behind = el.parentElement || el.getRootNode().host;
  while (behind && getComputedStyle(behind).backgroundColor.match(/rgba\\(.*, 0\\)|transparent/))
    behind = behind.parentElement || (behind.getRootNode().host);
  return [getComputedStyle(el).outlineColor, getComputedStyle(behind).backgroundColor,
          getComputedStyle(el).outlineStyle];
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_focus_ring_stands_out(page: Page, fake_model: FakeModel, scheme: str) -> None:
    page.emulate_media(color_scheme=scheme)
    asked = question("Link please")
    fake_model.answer(asked, "Here: ", "[returns](https://example.com/returns)")
    open_chat(page)
    ask(page, asked)
    expect(page.locator(AI)).to_have_attribute("data-status", "complete")
    ratios = {}
    for name, target in {"message box": "[data-chat-input]", "send": "[data-chat-send]",
                         "log": '[role="log"]', "link": f"{AI} a"}.items():
        page.locator(target).focus()
        page.keyboard.press("Shift+Tab")  # keyboard focus, so :focus-visible applies
        page.keyboard.press("Tab")
        expect(page.locator(target)).to_be_focused()
        ring, background, style = page.locator(target).evaluate(RING_AND_BACKGROUND)
        assert style == "solid"
        ratios[name] = round(contrast(ring, background), 2)
    assert all(ratio >= 3 for ratio in ratios.values()), ratios
    page.locator("[data-chat-input]").focus()
    screenshot(page, f"widget-desktop-focus-{scheme}.png")


def widget_violations(page: Page) -> list[str]:
    """axe-core's violations that are the widget's: on its own nodes, or on the page's nodes but
    only while the widget is there (a second banner landmark flags the page's header)."""

    def violations() -> set[str]:
        return {f"{violation['id']}: {node['target']} {node['failureSummary']}"
                for violation in Axe().run(page).response["violations"]
                for node in violation["nodes"]}

    with_widget = violations()
    page.evaluate("document.querySelector('support-chat').remove()")
    return sorted(with_widget - violations())


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("view", VIEWS)
def test_axe_finds_nothing_in_the_open_widget(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel, scheme: str, view: str) -> None:
    page = view_page(new_context, chat_app, view)
    page.emulate_media(color_scheme=scheme)
    open_chat(page)
    asked = question("can i send back a kurta i dont like?")
    fake_model.answer(asked, "Yes, ", "within **14 days**: see ",
                      "[the returns page](https://example.com/returns).")
    ask(page, asked)
    expect(page.locator(AI)).to_have_attribute("data-status", "complete")
    # The model cited none, so every source it was given shows: the store's curated answer first.
    expect(page.locator(AI).locator(".note").first).to_have_text(
        "From: How long do I have to return something?")
    page.locator("[data-chat-input]").fill("One more thing")
    screenshot(page, f"widget-{view}-{scheme}-audited.png")
    assert widget_violations(page) == []


def refuse_with_429(page: Page, *retry_after: str) -> None:
    waits = iter(retry_after)
    page.route("**/chat/stream", lambda route: route.fulfill(
        status=429, headers={"Retry-After": next(waits)}, content_type="application/json",
        body='{"error": {"code": "rate_limited", "message": "Too many messages."}}'))


def test_a_long_wait_is_said_in_minutes(page: Page) -> None:
    refuse_with_429(page, "883", "90", "1")
    open_chat(page)
    notice = page.locator("[data-chat-error]")
    for expected in ("Please wait 15 minutes and try again.",
                     "Please wait 90 seconds and try again.",
                     "Please wait 1 second and try again."):
        ask(page, "Is the sweater warm?")
        expect(notice).to_contain_text(expected)
        expect(page.locator("[data-chat-input]")).to_have_value("Is the sweater warm?")
        if expected.startswith("Please wait 15"):
            screenshot(page, "widget-desktop-rate-limited.png")


@pytest.mark.parametrize("view", VIEWS)
def test_a_refused_text_given_back_keeps_a_one_row_box(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess, view: str) -> None:
    page = view_page(new_context, chat_app, view)
    refuse_with_429(page, "30")
    open_chat(page)
    box = page.locator("[data-chat-input]")
    one_row = box.evaluate("el => el.offsetHeight")
    # One row beside Send; it would wrap beside Stop and Send (shown while the message is out).
    text = "Is the wool sweater warm?"
    box.fill(text)
    assert box.evaluate("el => el.offsetHeight") == one_row
    box.press("Enter")
    expect(page.locator("[data-chat-error]")).to_contain_text("Please wait 30 seconds")
    expect(box).to_have_value(text)
    expect(page.locator(USER)).to_have_count(0)
    assert box.evaluate("el => el.offsetHeight") == one_row
    screenshot(page, f"widget-{view}-given-back.png")


def test_links_show_where_they_really_go(page: Page, fake_model: FakeModel) -> None:
    asked = question("Where do I pay?")
    fake_model.answer(
        asked, "Pay at [https://shop.example/pay](https://evil.example/pay) or ",
        "https://shop.example@evil.example/checkout or ",
        "[shop.example/help](https://shop.example/help) or [Help](https://example.com/help).")
    open_chat(page)
    ask(page, asked)
    answer = page.locator(AI)
    expect(answer).to_have_attribute("data-status", "complete")
    links = answer.locator("a")
    expect(links).to_have_count(4)
    expect(links).to_have_text(["https://shop.example/pay", "https://shop.example@evil.example/checkout",
                                "shop.example/help", "Help"])
    hrefs = [links.nth(n).get_attribute("href") for n in range(4)]
    assert hrefs == ["https://evil.example/pay", "https://evil.example/checkout",
                     "https://shop.example/help", "https://example.com/help"]
    expect(answer.locator(".host")).to_have_text([" (evil.example)", " (evil.example)"])
    expect(answer.locator(".body")).to_have_text(
        "Pay at https://shop.example/pay (evil.example) or https://shop.example@evil.example/checkout"
        " (evil.example) or shop.example/help or Help.")
    screenshot(page, "widget-desktop-link-hosts.png")


def test_citation_markers_are_not_shown_to_the_shopper(page: Page, fake_model: FakeModel) -> None:
    asked = question("How long does delivery take?")
    fake_model.answer(asked, "Delivery takes 5-7 business days [1]. Returns are ",
                      "free within 14 days [2][1]; see [the returns page](https://shop.example/r).")
    open_chat(page)
    ask(page, asked)
    answer = page.locator(AI)
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".body")).to_have_text(
        "Delivery takes 5-7 business days. Returns are free within 14 days; see the returns page.")
    screenshot(page, "widget-desktop-no-citation-markers.png")


# Where a word's first letter is drawn, from the left: reversed text puts later words leftwards.
WORD_LEFT = """([root, word]) => {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let text; (text = walker.nextNode());) {
    const at = text.data.indexOf(word);
    if (at < 0) continue;
    const range = document.createRange();
    range.setStart(text, at);
    range.setEnd(text, at + 1);
    return range.getBoundingClientRect().left;
  }
  return null;
}"""


def test_direction_controls_cannot_reverse_the_text_around_them(page: Page,
                                                                fake_model: FakeModel) -> None:
    asked = question("Order 12\u202e34 status")
    fake_model.answer(asked, "Order 56\u202e78 ships today. ",
                      "Track it [\u202eevil](https://example.com/track) now please.")
    open_chat(page)
    ask(page, asked)
    answer = page.locator(AI)
    expect(answer).to_have_attribute("data-status", "complete")

    def left(locator: Any, word: str) -> float:
        position = locator.evaluate(f"el => ({WORD_LEFT})([el, {word!r}])")
        assert position is not None, word
        return float(position)

    for earlier, later in [("ships", "today"), ("now", "please")]:
        assert left(answer, earlier) < left(answer, later), (earlier, later)
    assert left(page.locator(USER), "Order") < left(page.locator(USER), "status")
    expect(answer.locator("bdi")).to_have_text(["\u202e78", "\u202eevil"])
    expect(page.locator(USER).locator("bdi")).to_have_text(["\u202e34"])
