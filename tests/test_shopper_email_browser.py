"""Out of hours in Chromium: nobody of the store is there, the widget on the store's page asks
for the shopper's email; the shopper leaves; the agent's reply arrives at a real SMTP server
(aiosmtpd) with a link, and following it in another browser reopens the conversation with the
reply visible; a stranger's made-up link is refused. Screenshots of the email form, desktop and
phone, go to test-artifacts/ (and /work/wt/shots/... when SHOTS_DIR is set)."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from app import db
from app.shopper_email import REOPEN_FRAGMENT
from app.sites import SiteStore
from tests import test_widget
from tests.test_admin import make_staff
from tests.test_alert_email import Mailbox, serve_mailbox
from tests.test_backoffice_browser import AGENT, PHONE, sign_in
from tests.test_widget import (
    AI,
    ARTIFACTS,
    DESKTOP,
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

WAIT_S = 20.0
LINK = re.compile(r"(http\S+#" + REOPEN_FRAGMENT + r"=[A-Za-z0-9_-]+)")


@pytest.fixture(scope="module")
def mailbox(servers: BackgroundLoop) -> Iterator[Mailbox]:
    box = Mailbox()
    server = servers.run(serve_mailbox(box))
    yield box
    server.close()


@pytest.fixture(scope="module")
def store_site(servers: BackgroundLoop, database_url: str, fake_model: FakeModel
               ) -> tuple[int, str]:
    """A site of its own (nobody of it signed in), made before the app starts and loads it."""
    return new_site(servers, database_url, fake_model.url)


@pytest.fixture(scope="module")
def emailing_app(database_url: str, redis_url: str, fake_model: FakeModel,
                 mailbox: Mailbox, store_site: tuple[int, str]) -> Iterator[AppProcess]:
    env = {**RATE_LIMITS, "SMTP_URL": mailbox.url, "SMTP_FROM": "help@kurta.example",
           "REPLY_EMAIL_DELAY_S": "1"}
    with app_process(database_url, redis_url, fake_model, env, "shopper-email.log") as app:
        yield app


def new_site(servers: BackgroundLoop, database_url: str, origin: str) -> tuple[int, str]:
    async def create() -> tuple[int, str]:
        pool = db.create_pool(database_url, 2)
        await pool.open(wait=True)
        try:
            record = await SiteStore(pool).create(f"Kurta House {uuid.uuid4().hex[:4]}",
                                                  [origin], None)
        finally:
            await pool.close()
        return record.id, record.site_key

    result: tuple[int, str] = servers.run(create())
    return result


def shots(page: Page, name: str) -> None:
    folders = [ARTIFACTS] + ([Path(os.environ["SHOTS_DIR"])] if os.environ.get("SHOTS_DIR")
                             else [])
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for size, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.locator("[data-chat-email]").scroll_into_view_if_needed()
        for folder in folders:
            page.screenshot(path=str(folder / f"{name}-{size}.png"))
    page.set_viewport_size(DESKTOP)


def wait_for_mail(mailbox: Mailbox, address: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for message, to in zip(list(mailbox.messages), list(mailbox.recipients), strict=True):
            if to == [address]:
                body: str = message.get_content()
                return body
        time.sleep(0.1)
    pytest.fail(f"no email to {address} within {WAIT_S} s")


def test_out_of_hours_the_reply_is_emailed_and_its_link_reopens_the_conversation(
        emailing_app: AppProcess, new_context: Callable[..., BrowserContext],
        database_url: str, fake_model: FakeModel, servers: BackgroundLoop,
        mailbox: Mailbox, store_site: tuple[int, str]) -> None:
    site_id, site_key = store_site
    staff = servers.run(make_staff(database_url, [site_id], name="Grace"))
    store_page = f"{emailing_app.shop_origin}/shop?site={site_key}"
    address = f"mia-{uuid.uuid4().hex[:6]}@example.com"

    shopper = new_context().new_page()
    shopper.goto(store_page)
    open_chat(shopper)
    first = question("My kurta arrived with a tear")
    fake_model.answer(first, "Sorry to hear that. ", "A person can help.")
    ask(shopper, first)
    expect(shopper.locator(AI).last).to_contain_text("A person can help.")
    shopper.locator("[data-chat-handoff]").click()
    form = shopper.locator("[data-chat-email]")
    expect(form).to_contain_text("Nobody can reply right now.")
    email_box = shopper.get_by_label("Your email")
    email_box.fill("mia@")
    shopper.get_by_role("button", name="Email me").click()
    # The browser's own check refuses it before anything is sent: the form stays.
    assert email_box.evaluate("box => box.validity.valid") is False
    expect(email_box).to_be_visible()
    email_box.fill(address)
    shots(shopper, "email-form")
    shopper.get_by_role("button", name="Email me").click()
    expect(form).to_contain_text(f"We'll email {address} when someone replies.")
    shopper.close()  # the shopper leaves the store's page

    agent = new_context().new_page()
    sign_in(agent, emailing_app.url, staff.email, staff.password)
    agent.locator("#conversations a").filter(has_text="A person can help.").click()
    expect(agent.locator("#reply-email")).to_have_text(
        f"Replies are emailed to {address} when the shopper has left.")
    agent.get_by_role("button", name="Take over").click()
    agent.get_by_label("Message").fill("So sorry, Mia! A new kurta is on its way.")
    agent.get_by_role("button", name="Send").click()
    expect(agent.locator("#transcript")).to_contain_text("A new kurta is on its way.")

    body = wait_for_mail(mailbox, address)
    assert "> So sorry, Mia! A new kurta is on its way." in body
    found = LINK.search(body)
    assert found is not None and found[1].startswith(store_page + "#")

    # Another browser (no stored session): the link alone reopens the conversation.
    later = new_context(viewport={"width": 1280, "height": 800}).new_page()
    later.goto(found[1])
    expect(later.locator(AGENT).last).to_contain_text("A new kurta is on its way.")
    expect(later.locator(AI).first).to_contain_text("A person can help.")
    assert REOPEN_FRAGMENT not in later.url  # the token left the address bar
    later.screenshot(path=str(ARTIFACTS / "email-link-reopened.png"))
    if os.environ.get("SHOTS_DIR"):
        later.screenshot(path=str(Path(os.environ["SHOTS_DIR"]) / "email-link-reopened.png"))

    stranger = new_context().new_page()
    stranger.goto(f"{store_page}#{REOPEN_FRAGMENT}={'x' * 43}")
    expect(stranger.locator("[data-chat-error]")).to_contain_text(
        "This link has expired or is not valid.")
    expect(stranger.locator(AGENT)).to_have_count(0)
