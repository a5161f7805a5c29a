"""The analytics page in Chromium, as an owner opens it from the inbox: the figures, the charts
and a CSV download, on a desktop and on a 390 px phone (screenshots in test-artifacts/)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import BrowserContext, expect

from tests import test_widget
from tests.test_admin import make_staff
from tests.test_backoffice_browser import PHONE, sign_in
from tests.test_widget import ARTIFACTS, AppProcess, BackgroundLoop, FakeModel

servers = test_widget.servers
fake_model = test_widget.fake_model
playwright = test_widget.playwright
browser = test_widget.browser
new_context = test_widget.new_context

QUESTIONS = ["Where is my order?", "How long does shipping take?", "Do you ship to Spain?",
             "What is your return policy?", "Is the silk scarf washable?", "hello"]
ARTICLES = [{"title": "Shipping and delivery", "path": "shipping.md"},
            {"title": "Returns", "path": "returns.md"}, {"title": "Caring for silk",
                                                        "path": "care.md"}]


@pytest.fixture(scope="module")
def seeded_app(database_url: str, redis_url: str, fake_model: FakeModel
               ) -> Iterator[tuple[AppProcess, int]]:
    """Thirty days of a small store's conversations on a site of their own."""
    picker = random.Random(18)
    now = datetime.now(UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO sites (name, daily_token_budget) VALUES"
                           " ('Saffron Loom', 200000) RETURNING id").fetchone()
        assert row is not None
        site_id = row[0]
        conversations, messages = [], []
        for n in range(240):
            created = now - timedelta(days=picker.random() ** 0.8 * 29.5)
            handoff = created + timedelta(minutes=1) if n % 7 == 0 else None
            joined = handoff + timedelta(minutes=picker.randint(1, 12)) \
                if handoff and n % 3 else None
            conversation_id = uuid.uuid4()
            conversations.append((conversation_id, site_id, created, handoff, joined))
            for turn in range(picker.randint(1, 3)):
                when = created + timedelta(minutes=turn)
                question = picker.choice(QUESTIONS)
                # Mostly English; German answered from German articles, Hindi from English.
                language = picker.choice(["en"] * 16 + ["de"] * 3 + ["hi"])
                messages.append((conversation_id, site_id, "user", question, "complete", None,
                                 None, None, None, False, "[]", when, language))
                if joined and turn == 2:
                    continue  # forwarded to the person
                model = "gpt-4o" if picker.random() < 0.2 else "gpt-4o-mini"
                source = [picker.choice(ARTICLES)] if picker.random() < 0.7 else []
                status = picker.choice(["complete"] * 30 + ["error", "cancelled"])
                messages.append((conversation_id, site_id, "ai", "An answer.", status, model,
                                 picker.randint(900, 1800), picker.randint(60, 300),
                                 picker.randint(200, 1400), picker.random() < 0.05,
                                 json.dumps(source), when,
                                 "en" if language == "hi" else language))
        conn.cursor().executemany(
            "INSERT INTO conversations (id, site_id, created_at, handoff_at, agent_joined_at)"
            " VALUES (%s, %s, %s, %s, %s)", conversations)
        conn.cursor().executemany(
            "INSERT INTO messages (id, conversation_id, site_id, sender, text, status, model,"
            " prompt_tokens, completion_tokens, first_token_ms, fallback, sources, created_at,"
            " language)"
            " VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            messages)
    with test_widget.app_process(database_url, redis_url, fake_model, test_widget.RATE_LIMITS,
                                 "analytics-app.log") as app:
        yield app, site_id


def test_an_owner_reads_the_last_30_days_on_a_desktop_and_a_phone(
        seeded_app: tuple[AppProcess, int], new_context: Callable[..., BrowserContext],
        database_url: str, servers: BackgroundLoop) -> None:
    app, site_id = seeded_app
    owner = servers.run(make_staff(database_url, [site_id], role="owner", name="Olga"))
    page = new_context(accept_downloads=True).new_page()
    sign_in(page, app.url, owner.email, owner.password)
    page.get_by_role("link", name="Analytics").click()
    expect(page.get_by_role("heading", name="Analytics", exact=True)).to_be_visible()
    expect(page.locator("select[name=site] option:checked")).to_have_text("Saffron Loom")
    expect(page.locator(".period-note")).to_contain_text("30 days")
    # What was missing is one click away.
    expect(page.get_by_role("link", name="Knowledge gaps")).to_have_attribute("href", "/admin/gaps")
    questions = page.locator(".figure").filter(has_text="Questions")
    expect(questions.locator("dd")).not_to_have_text("0")
    expect(page.locator(".figure").filter(has_text="Thumbs up")).to_contain_text("no votes yet")
    expect(page.get_by_role("img", name="Questions per day, by who answered")).to_be_visible()
    expect(page.get_by_role("img", name="Cost per day, by model (USD)")).to_be_visible()
    top = page.locator("section").filter(has=page.get_by_role("heading", name="Top questions"))
    expect(top.locator("table")).to_contain_text("Shipping and delivery")
    languages = page.locator("section").filter(
        has=page.get_by_role("heading", name="Questions by language"))
    expect(languages.locator("tbody tr").first.locator("td").first).to_have_text("English (en)")
    hindi = languages.locator("tbody tr").filter(has_text="Hindi (hi)")
    expect(hindi.locator("td").nth(3)).to_have_text("0% (0)")  # none in Hindi: all from English
    expect(hindi.locator("td").nth(4)).to_contain_text("100%")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").first.click()
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 30 and sum(int(row["questions"]) for row in rows) > 0

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "analytics-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    # Nothing wider than the phone: the tables scroll inside their own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    chart = page.get_by_role("img", name="Questions per day, by who answered")
    expect(chart).to_be_visible()
    chart.screenshot(path=str(ARTIFACTS / "analytics-phone-chart.png"))
    page.screenshot(path=str(ARTIFACTS / "analytics-phone.png"), full_page=True)
    shots = os.environ.get("SHOTS_DIR")
    if shots:
        languages.screenshot(path=str(Path(shots) / "analytics-languages-phone.png"))
        page.set_viewport_size({"width": 1280, "height": 800})
        languages.screenshot(path=str(Path(shots) / "analytics-languages-desktop.png"))
