"""The /play page's fixes, in a real headless Chromium against a real server.

Phone layout, the log following the newest reply, "is thinking…" then "is
speaking…", cards of a lost session shown as expired, and a failed say shown
on its message. Skipped without Chromium or Playwright, as test_play_page.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from npc_server.protocol.codes import CloseCode
from tests.support.server import RunningServer, running_server, server_config

try:
    from playwright.async_api import Browser, FloatRect, Locator, Page, ViewportSize
    from playwright.async_api import expect as pw_expect
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

from tests.web.test_play_page import (
    ARTIFACTS,
    CHROMIUM,
    WAIT_MS,
    by_id,
    drop_sockets,
    open_page,
    record_connection_states,
    say,
    shown_chars,
    wait_open,
    wait_until,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]

PHONE: ViewportSize = {"width": 390, "height": 844}
SLOW_LONG = {"tokens_per_second": 40, "long_reply_chars": 3000}


async def open_as_alice(browser: Browser, server: RunningServer, width: int = 1280) -> Page:
    page, _ = await open_page(
        browser, f"{server.http_url}/play?token={server.token('alice')}&player=alice", width
    )
    await wait_open(page)
    return page


async def box(locator: Locator) -> FloatRect:
    found = await locator.bounding_box()
    assert found is not None, f"{locator} is not displayed"
    return found


async def test_phone_layout_lists_greetings_labels_interrupt_and_fills_the_screen(
    browser: Browser,
) -> None:
    """At 390x844: greetings readable, a labelled interrupt, no band under the composer."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        page, problems = await open_page(
            browser, f"{server.http_url}/play?token={server.token('alice')}&player=alice"
        )
        await page.set_viewport_size(PHONE)
        await wait_open(page)
        assert "on the left" not in (await page.inner_text("body"))
        greetings = page.locator(".npc-greeting")
        assert await greetings.count() == 3
        for i in range(3):
            greeting = greetings.nth(i)
            await pw_expect(greeting).to_be_visible()
            assert len((await greeting.inner_text()).strip()) > 10
            place = await box(greeting)
            assert place["x"] >= 0 and place["x"] + place["width"] <= PHONE["width"]
            assert place["y"] + place["height"] <= PHONE["height"]
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], "the page scrolls sideways"

        await by_id(page, "npc-merchant").click()
        turn = await say(page, "Heard any rumours lately?")
        await wait_until(lambda: shown_chars(turn), lambda n: n > 200)
        interrupt = by_id(page, "interrupt-button")
        await pw_expect(interrupt).to_be_enabled()
        await pw_expect(interrupt).to_have_text("Interrupt")
        label = await box(interrupt)
        assert label["x"] + label["width"] <= PHONE["width"]
        composer = await box(by_id(page, "composer"))
        band = PHONE["height"] - (composer["y"] + composer["height"])
        assert 0 <= band <= 24, f"{band:.0f} px empty under the composer"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "play_page_phone.png"))
        await interrupt.click()
        await pw_expect(turn).to_have_attribute("data-reason", "interrupted", timeout=WAIT_MS)
        assert problems.errors == []
        await page.close()


async def test_empty_page_has_no_band_under_the_composer(browser: Browser) -> None:
    """Before any NPC is chosen the stage still reaches the bottom of the phone screen."""
    async with running_server(server_config()) as server:
        page, _ = await open_page(
            browser, f"{server.http_url}/play?token={server.token('alice')}&player=alice"
        )
        await page.set_viewport_size(PHONE)
        await wait_open(page)
        composer = await box(by_id(page, "composer"))
        assert PHONE["height"] - (composer["y"] + composer["height"]) <= 24
        await page.close()


async def scroll_state(log: Locator) -> dict[str, float]:
    value: dict[str, float] = await log.evaluate(
        "l => ({top: l.scrollTop, gap: l.scrollHeight - l.scrollTop - l.clientHeight})"
    )
    return value


async def test_log_follows_the_newest_reply_unless_scrolled_up(browser: Browser) -> None:
    """The log stays at the bottom while text streams, stays put when scrolled up, and resumes."""
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        page = await open_as_alice(browser, server, width=700)
        await page.set_viewport_size({"width": 700, "height": 520})
        await by_id(page, "npc-merchant").click()
        turn = await say(page, "Heard any rumours lately?")
        log = page.locator('[data-testid="chat-log"][data-npc="merchant"]')
        await wait_until(lambda: log.evaluate("l => l.scrollHeight > l.clientHeight + 200"), bool)
        start = await shown_chars(turn)
        await wait_until(lambda: shown_chars(turn), lambda n: n > start + 40)
        assert (await scroll_state(log))["gap"] <= 48, "the log fell behind the newest text"

        await log.evaluate("l => { l.scrollTop = 0; }")
        await pw_expect(log).to_have_attribute("data-following", "false")
        grown = await shown_chars(turn)
        await wait_until(lambda: shown_chars(turn), lambda n: n > grown + 40)
        assert (await scroll_state(log))["top"] == 0, "the log jumped while the reader read back"

        await log.evaluate("l => { l.scrollTop = l.scrollHeight; }")
        await pw_expect(log).to_have_attribute("data-following", "true")
        grown = await shown_chars(turn)
        await wait_until(lambda: shown_chars(turn), lambda n: n > grown + 40)
        assert (await scroll_state(log))["gap"] <= 48
        await page.close()


async def test_stage_says_thinking_before_the_first_text_then_speaking(browser: Browser) -> None:
    """'is thinking…' only until the first delta; 'is speaking…' while text streams."""
    config = server_config(scripted={**SLOW_LONG, "first_token_ms": 1500})
    async with running_server(config) as server:
        page = await open_as_alice(browser, server)
        await by_id(page, "npc-merchant").click()
        status = by_id(page, "stage-status")
        await pw_expect(status).to_have_text("is listening")
        turn = await say(page, "Heard any rumours lately?")
        await pw_expect(status).to_have_text("is thinking…")
        assert await shown_chars(turn) == 0
        await pw_expect(status).to_have_text("is speaking…", timeout=WAIT_MS)
        assert await shown_chars(turn) > 0
        await by_id(page, "interrupt-button").click()
        await pw_expect(status).to_have_text("is listening", timeout=WAIT_MS)
        await page.close()


async def test_cards_of_a_lost_session_show_as_expired(browser: Browser) -> None:
    """After a failed resume an approval card offers no buttons: it is expired."""
    async with running_server(server_config()) as server:
        page = await open_as_alice(browser, server)
        await record_connection_states(page)
        await by_id(page, "npc-merchant").click()
        turn = await say(page, "What wares do you sell?")
        card = turn.locator('[data-testid="action-card"][data-name="open_shop"]')
        await pw_expect(card).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)
        await pw_expect(turn).to_have_attribute("data-state", "ended", timeout=WAIT_MS)

        session = server.node.hub.all_sessions()[0]
        server.node.end_session(session)  # the resume will fail: a new session
        drop_sockets(server, CloseCode.SLOW_CONSUMER)
        await pw_expect(card).to_have_attribute("data-status", "expired", timeout=WAIT_MS)
        await pw_expect(by_id(card, "approve-button")).to_be_hidden()
        await pw_expect(by_id(card, "action-status")).to_contain_text("Expired")
        await wait_open(page)
        assert "reconnecting" in await page.evaluate("window.__connStates")
        assert server.node.statistics().sessions == 1
        await page.close()


async def test_a_refused_say_is_shown_on_its_message(browser: Browser) -> None:
    """A say the server refuses (the merchant's line is full) is marked, with the reason."""
    config = server_config(
        scripted=SLOW_LONG, limits={"turns_per_player": 8}
    )  # the line, not the share
    async with running_server(config) as server:
        page = await open_as_alice(browser, server)
        await record_connection_states(page)
        await by_id(page, "npc-merchant").click()
        await say(page, "Heard any rumours lately?")  # she is busy with this one
        messages = by_id(page, "player-msg")
        for n in range(4):  # three wait in line (max_queue = 3), the fourth is refused
            await by_id(page, "message-input").fill(f"And another thing, number {n}?")
            await by_id(page, "send-button").click()
            await pw_expect(messages).to_have_count(n + 2)
        refused = messages.nth(4)
        await pw_expect(refused).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
        await pw_expect(by_id(refused, "msg-note")).to_contain_text("waiting")
        await pw_expect(by_id(messages.nth(3), "msg-note")).to_contain_text("in line")
        await asyncio.sleep(0.5)  # a reconnect would have begun by now
        assert await page.evaluate("window.__connStates") == ["open"]
        await page.close()
