"""The headless Chromium the browser tests share (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

try:
    from playwright.async_api import Browser, async_playwright
except ImportError:  # pragma: no cover - the test modules skip with the reason
    pass
else:
    from tests.web.test_play_page import CHROMIUM, CHROMIUM_ARGS

    @pytest.fixture
    async def browser() -> AsyncIterator[Browser]:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                await browser.close()
