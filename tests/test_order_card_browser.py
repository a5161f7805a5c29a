"""The demo store in Chromium with no API key: signed in as the demo customer (DEMO_CUSTOMER),
"where is my order 1042?" shows the order card in the widget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect

from app.demo_orders import DEMO_TOKEN, create_demo_orders_app
from tests.conftest import RunningApp
from tests.orders_server import serve
from tests.test_eventsource_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_widget import ARTIFACTS


@pytest.fixture
async def store_url() -> AsyncIterator[str]:
    async with serve(create_demo_orders_app()) as url:
        yield url


async def test_the_demo_customer_sees_the_order_card(start_app: Callable[..., Any],
                                                    store_url: str) -> None:
    app: RunningApp = await start_app(openai_api_key="", openai_base_url="",
                                      orders_api_url=store_url, orders_api_token=DEMO_TOKEN,
                                      demo_customer="demo-customer:demo@example.com")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{app.url}/")
            await expect(page.locator("footer")).to_contain_text("signed in as demo@example.com")
            await page.locator("[data-chat-launcher]").click()
            await page.locator("[data-chat-input]").fill("Where is my order 1042?")
            await page.locator("[data-chat-input]").press("Enter")
            card = page.locator("[data-chat-order]")
            await expect(card).to_be_visible(timeout=15_000)
            await expect(card).to_contain_text("Order 1042: shipped")
            await expect(card).to_contain_text("2 × Saffron cushion cover")
            await expect(card.get_by_role("link", name="Track the parcel")).to_have_attribute(
                "href", "https://track.example.com/RM104200042GB")
            answer = page.locator("[data-chat-message][data-sender=ai][data-status=complete]")
            await expect(answer).to_contain_text("Order 1042 is shipped, with Royal Mail")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "widget-order-card.png"))
            # A reload draws the conversation from its history: the card is there again.
            await page.reload()
            await page.locator("[data-chat-launcher]").click()
            await expect(page.locator("[data-chat-order]")).to_contain_text("Order 1042: shipped")
            await page.screenshot(path=str(ARTIFACTS / "widget-order-card-after-reload.png"))
        finally:
            await browser.close()
