"""The demo store page as a browser loads it: every resource it asks for is there."""

from __future__ import annotations

import httpx
from playwright.async_api import Response, async_playwright

from tests.conftest import RunningApp
from tests.test_eventsource_browser import CHROMIUM, CHROMIUM_ARGS

# What the page itself says its icon is, and whether the browser can draw it.
ICON_IN_PAGE = """() => new Promise((resolve) => {
  const link = document.querySelector("link[rel~=icon]");
  if (!link) { resolve(null); return; }
  const image = new Image();
  image.onload = () => resolve({href: link.href, width: image.naturalWidth});
  image.onerror = () => resolve({href: link.href, width: 0});
  image.src = link.href;
})"""


async def test_the_demo_page_has_an_icon_and_no_request_fails(chat_app: RunningApp) -> None:
    failed: list[str] = []

    def note(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("response", note)
            await page.goto(f"{chat_app.url}/", wait_until="networkidle")
            icon = await page.evaluate(ICON_IN_PAGE)
        finally:
            await browser.close()
    assert icon is not None, "the page names no icon: browsers ask for /favicon.ico and get 404"
    assert icon["href"] == f"{chat_app.url}/favicon.svg" and icon["width"] > 0
    assert failed == []


async def test_favicon_ico_is_served_for_clients_that_ask_without_looking(
        client: httpx.AsyncClient) -> None:
    ico, svg = await client.get("/favicon.ico"), await client.get("/favicon.svg")
    assert ico.status_code == svg.status_code == 200
    assert ico.headers["content-type"] == "image/svg+xml"
    assert ico.content == svg.content and ico.content.startswith(b"<svg")
