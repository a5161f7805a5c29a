"""The widget in the shopper's language: catalogues per language, direction, string overrides.

Browser tests run Debian's Chromium with its locale set (navigator.languages, Accept-Language)
against the real app, with the servers and fixtures of tests/test_widget.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests import test_widget
from tests.test_widget import (
    AI,
    USER,
    AppProcess,
    FakeModel,
    ask,
    open_chat,
    question,
    screenshot,
)

# The same servers and browser as tests/test_widget.py (pytest finds fixtures by name).
servers = test_widget.servers
fake_model = test_widget.fake_model
chat_app = test_widget.chat_app
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "web" / "locales"
WIDGET = (ROOT / "web" / "widget.js").read_text()


def english_catalogue() -> dict[str, str]:
    """The EN object in widget.js, read as the JavaScript literal it is (keys unquoted)."""
    body = re.search(r"const EN = \{(.*?)\n\};", WIDGET, re.S)
    assert body is not None
    return dict(re.findall(r'(\w+): "((?:[^"\\]|\\.)*)"', body[1]))


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def test_every_catalogue_has_exactly_the_english_keys_and_placeholders() -> None:
    english = english_catalogue()
    assert len(english) > 30
    files = sorted(LOCALES.glob("*.json"))
    assert [path.stem for path in files] == ["de", "es", "fr", "hi"]
    shipped = re.search(r'const SHIPPED = \[(.*?)\]', WIDGET)
    assert shipped is not None and re.findall(r'"(\w+)"', shipped[1]) == ["de", "es", "fr", "hi"]
    for path in files:
        catalogue = json.loads(path.read_text(encoding="utf-8"))
        assert set(catalogue) == set(english), path.name
        for key, text in catalogue.items():
            assert placeholders(text) == placeholders(english[key]), (path.name, key)
            assert text != english[key] or key in {"log", "minutes"}, (path.name, key)


def test_catalogues_are_served_compressed_and_unknown_ones_are_a_404(chat_app: AppProcess) -> None:
    german = httpx.get(f"{chat_app.url}/locales/de.json", headers={"Accept-Encoding": "gzip"})
    assert german.status_code == 200
    assert german.headers["content-type"].startswith("application/json")
    assert german.headers["content-encoding"] == "gzip"
    assert german.json()["send"] == "Senden"
    for missing in ("xx", "en", "..%2Fwidget", "de.json%00"):
        response = httpx.get(f"{chat_app.url}/locales/{missing}.json")
        assert response.status_code == 404, missing
        assert set(response.json()["error"]) == {"code", "message"}


def widget_page(context: BrowserContext, app: AppProcess, data: str = "",
                strings: dict[str, object] | None = None) -> Page:
    """A store page on the app's own origin embedding the widget with the given data-* options;
    `strings` is served at /custom-strings.json for data-strings."""
    page = context.new_page()
    html = (f'<!doctype html><html lang="en"><title>Store</title><h1>Store</h1>'
            f'<script src="/widget.js" defer {data}></script>')
    page.route(f"{app.url}/store-page", lambda route: route.fulfill(
        status=200, content_type="text/html", body=html))
    if strings is not None:
        page.route(f"{app.url}/custom-strings.json", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(strings)))
    page.goto(f"{app.url}/store-page")
    return page


def catalogue_requests(page: Page) -> list[str]:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url)
            if "/locales/" in request.url else None)
    return requested


def wait_for_strings(page: Page, locale: str) -> None:
    expect(page.locator("support-chat")).to_have_attribute("data-locale", locale)


def test_a_german_browser_sees_the_widget_in_german(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess,
        fake_model: FakeModel) -> None:
    page = new_context(locale="de-DE").new_page()
    requested = catalogue_requests(page)
    page.goto(chat_app.url)
    wait_for_strings(page, "de-DE")
    assert [url.rsplit("/", 1)[1] for url in requested] == ["de.json"]  # only the one in use
    launcher = page.locator("[data-chat-launcher]")
    expect(launcher).to_have_attribute("aria-label", "Chat öffnen")
    open_chat(page)
    expect(launcher).to_have_attribute("aria-label", "Chat schließen")
    expect(page.locator(".panel")).to_have_attribute("lang", "de-DE")
    expect(page.locator(".panel")).to_have_attribute("dir", "ltr")
    expect(page.locator("h2#title")).to_have_text("Kundenservice")
    expect(page.locator(".greeting")).to_have_text("Hallo! Wie können wir Ihnen heute helfen?")
    expect(page.locator("[data-chat-input]")).to_have_attribute("placeholder", "Nachricht eingeben…")
    expect(page.locator("label[for=input]")).to_have_text("Ihre Nachricht")
    expect(page.locator("[data-chat-send]")).to_have_text("Senden")
    expect(page.locator("[data-chat-new]")).to_have_attribute("aria-label", "Neues Gespräch beginnen")
    expect(page.locator('[role="log"]')).to_have_attribute("aria-label", "Gespräch")

    asked = question("Wie lange dauert der Versand?")
    script = fake_model.answer(asked, "Fünf ", "bis ", "sieben ", "Werktage.", held=True)
    ask(page, asked)
    expect(page.locator("[data-chat-typing]")).to_have_text("Der Assistent schreibt…")
    expect(page.locator("[data-chat-stop]")).to_have_text("Stopp")
    script.release(1)
    expect(page.locator(AI).locator(".body")).to_have_text("Fünf")
    page.locator("[data-chat-stop]").click()
    expect(page.locator(AI)).to_have_attribute("data-status", "cancelled")
    expect(page.locator(AI)).to_contain_text("Angehalten")
    screenshot(page, "widget-locale-de.png")


def test_a_hindi_browser_sees_the_widget_in_hindi(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = new_context(locale="hi-IN").new_page()
    page.goto(chat_app.url)
    wait_for_strings(page, "hi-IN")
    expect(page.locator("[data-chat-launcher]")).to_have_attribute("aria-label", "चैट खोलें")
    open_chat(page)
    expect(page.locator("h2#title")).to_have_text("सहायता")
    expect(page.locator("[data-chat-send]")).to_have_text("भेजें")
    expect(page.locator("[data-chat-input]")).to_have_attribute("placeholder", "अपना संदेश लिखें…")
    expect(page.locator(".panel")).to_have_attribute("dir", "ltr")
    screenshot(page, "widget-locale-hi.png")


def test_an_arabic_browser_gets_english_strings_and_arabic_text_reads_right_to_left(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = new_context(locale="ar").new_page()
    requested = catalogue_requests(page)
    page.goto(chat_app.url)
    # No Arabic catalogue: the site's default (English), so the panel keeps its direction.
    wait_for_strings(page, "en")
    assert requested == []
    open_chat(page)
    expect(page.locator("[data-chat-send]")).to_have_text("Send")
    expect(page.locator(".panel")).to_have_attribute("dir", "ltr")
    arabic = "كم يستغرق الشحن إلى دبي؟"
    ask(page, arabic)
    shopper = page.locator(USER)
    expect(shopper).to_have_text(arabic)
    expect(shopper).to_have_attribute("dir", "auto")
    assert shopper.evaluate("el => el.matches(':dir(rtl)')")
    answer = page.locator(AI)
    expect(answer).to_have_attribute("data-status", "complete")
    assert answer.evaluate("el => el.matches(':dir(ltr)')")  # the English answer stays LTR
    screenshot(page, "widget-locale-ar-browser.png")


def test_a_right_to_left_data_locale_mirrors_the_panel(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = widget_page(new_context(locale="de-DE"), chat_app, 'data-locale="he"')
    wait_for_strings(page, "he")  # data-locale wins over the browser's German
    open_chat(page)
    panel = page.locator(".panel")
    expect(panel).to_have_attribute("dir", "rtl")
    expect(panel).to_have_attribute("lang", "en")  # the strings are English: no Hebrew ones
    assert panel.evaluate("el => getComputedStyle(el).direction") == "rtl"
    send = page.locator("[data-chat-send]").bounding_box()
    box = page.locator("[data-chat-input]").bounding_box()
    title = page.locator("h2#title").bounding_box()
    close = page.locator("[data-chat-close]").bounding_box()
    assert send and box and title and close
    assert send["x"] < box["x"]  # Send sits at the left end of the message box
    assert close["x"] < title["x"]  # and Close at the left end of the header
    expect(page.locator("[data-chat-send]")).to_have_text("Send")  # no Hebrew catalogue
    screenshot(page, "widget-locale-he-rtl.png")


def test_a_store_overrides_strings_from_a_file_and_from_javascript(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = widget_page(new_context(locale="en-US"), chat_app,
                       'data-locale="fr" data-strings="/custom-strings.json"',
                       strings={"send": "Envoyer ✉", "greeting": "Bienvenue chez nous !",
                                "unknownKey": "ignored", "typing": 42})
    wait_for_strings(page, "fr")
    open_chat(page)
    expect(page.locator("[data-chat-send]")).to_have_text("Envoyer ✉")  # the store's file
    expect(page.locator(".greeting")).to_have_text("Bienvenue chez nous !")
    expect(page.locator("h2#title")).to_have_text("Assistance")  # the French catalogue
    expect(page.locator("[data-chat-typing] b")).to_have_text("L'assistant écrit")  # not 42
    page.evaluate("SupportChat.setStrings({send: 'Go', placeholder: 'Your question'})")
    expect(page.locator("[data-chat-send]")).to_have_text("Go")
    expect(page.locator("[data-chat-input]")).to_have_attribute("placeholder", "Your question")
    expect(page.locator("[data-chat-stop]")).to_have_text("Arrêter")


def test_without_a_browser_language_it_knows_the_sites_default_applies(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    # A Japanese browser: no catalogue, so the store's default language (data-default-locale).
    page = widget_page(new_context(locale="ja-JP"), chat_app, 'data-default-locale="es"')
    wait_for_strings(page, "es")
    expect(page.locator("[data-chat-launcher]")).to_have_attribute("aria-label", "Abrir el chat")


def hours_page(context: BrowserContext, app: AppProcess, now: str,
               status: dict[str, object]) -> Page:
    """The demo page at a fixed moment, with GET /chat/hours answering `status` (the server's
    own answer depends on the real clock; its computation is tests/test_support_hours.py's)."""
    page = context.new_page()
    page.clock.set_fixed_time(now)
    page.route(re.compile(r".*/chat/hours(\?.*)?$"), lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(status)))
    page.goto(app.url)
    return page


def test_support_hours_show_in_a_german_shoppers_own_time_zone(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    # Wednesday 21:00 in Berlin; the store (Kolkata) opens at 09:00 there, 04:30 in Berlin.
    page = hours_page(new_context(locale="de-DE", timezone_id="Europe/Berlin"), chat_app,
                      "2026-12-02T20:00:00Z",
                      {"known": True, "timeZone": "Asia/Kolkata", "open": False,
                       "opensAt": "2026-12-03T03:30:00Z"})
    wait_for_strings(page, "de-DE")
    open_chat(page)
    hours = page.locator("[data-chat-hours]")
    expect(hours).to_have_text("Eine Person kann ab Do., 04:30 Ihrer Zeit antworten")
    screenshot(page, "widget-hours-de.png")


def test_support_hours_today_in_hindi_show_the_time_alone(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = hours_page(new_context(locale="hi-IN", timezone_id="Asia/Kolkata"), chat_app,
                      "2026-12-03T02:00:00Z",  # 07:30 in Kolkata, opening at 09:00 today
                      {"known": True, "timeZone": "Asia/Kolkata", "open": False,
                       "opensAt": "2026-12-03T03:30:00Z"})
    wait_for_strings(page, "hi-IN")
    open_chat(page)
    hours = page.locator("[data-chat-hours]")
    expect(hours).to_contain_text("कोई व्यक्ति आपके समय के अनुसार")
    expect(hours).to_contain_text("9:00")
    assert "गुरु" not in (hours.text_content() or "")  # no weekday: it is today


def test_open_hours_say_online_now_and_unknown_hours_say_nothing(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    context = new_context(locale="en-US", timezone_id="America/New_York")
    page = hours_page(context, chat_app, "2026-12-02T06:00:00Z",
                      {"known": True, "timeZone": "Asia/Kolkata", "open": True,
                       "closesAt": "2026-12-02T12:30:00Z", "opensAt": "2026-12-03T03:30:00Z"})
    open_chat(page)
    expect(page.locator("[data-chat-hours]")).to_have_text("We're online now")
    unknown = hours_page(context, chat_app, "2026-12-02T06:00:00Z", {"known": False})
    open_chat(unknown)
    expect(unknown.locator("[data-chat-send]")).to_be_visible()
    expect(unknown.locator("[data-chat-hours]")).to_be_hidden()


def test_the_real_hours_endpoint_is_asked_when_the_panel_opens(
        new_context: Callable[..., BrowserContext], chat_app: AppProcess) -> None:
    page = new_context(locale="en-US").new_page()
    page.goto(chat_app.url)
    with page.expect_response(re.compile(r"/chat/hours")) as answered:
        open_chat(page)
    status = answered.value.json()
    expected = "We're online now" if status["open"] else re.compile(
        r"^A person can reply from .+ your time$")
    expect(page.locator("[data-chat-hours]")).to_have_text(expected)


def test_a_german_shopper_without_a_key_gets_the_german_articles_answer(
        database_url: str, redis_url: str, fake_model: FakeModel,
        new_context: Callable[..., BrowserContext]) -> None:
    # The "done when": a German browser, no model key, a German question; the widget
    # is German and so is the answer, from the German help centre (app/store/knowledge/de).
    no_model = {**test_widget.RATE_LIMITS, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    with test_widget.app_process(database_url, redis_url, fake_model, no_model,
                                 "widget-german-knowledge-only-app.log") as app:
        page = new_context(locale="de-DE").new_page()
        page.goto(app.url)
        wait_for_strings(page, "de-DE")
        open_chat(page)
        expect(page.locator("[data-chat-send]")).to_have_text("Senden")
        ask(page, "Wie lange habe ich Zeit für eine Rücksendung?")
        answer = page.locator(AI)
        expect(answer).to_have_attribute("data-status", "complete")
        expect(answer.locator(".body")).to_contain_text("innerhalb von 14 Tagen")
        expect(answer.locator(".body")).not_to_contain_text("Englisch")  # no "it is in English"
        expect(answer.locator(".note")).to_contain_text("Wie lange habe ich Zeit")  # its source
        page.locator("[data-chat-input]").blur()
        screenshot(page, "widget-knowledge-only-de.png")
    assert not fake_model.questions or not any("Rücksendung" in q for q in fake_model.questions)
