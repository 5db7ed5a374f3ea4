"""The /play page in a real headless Chromium, against a real server in this loop.

Needs Debian's `chromium` package and `pip install playwright` (never
`playwright install`: the tests drive the system Chromium). Without them the
module is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import RoomGap
from tests.support.client import connect
from tests.support.server import REPO, RunningServer, running_server, server_config

try:
    from playwright.async_api import Browser, ConsoleMessage, Locator, Page, Request
    from playwright.async_api import expect as pw_expect
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = os.environ.get("NPC_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts"
# Slow, long replies: a turn streams for many seconds, so it can be watched and cut.
SLOW_LONG = {"tokens_per_second": 40, "long_reply_chars": 3000}
WAIT_MS = 10_000
LATENCY = re.compile(r"^(\d\.\d|[1-9]\d+) ms$")  # tenths below 10 ms (loopback)
T = TypeVar("T")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


class PageProblems:
    """Uncaught exceptions and console errors of a page, and requests that carry the
    page's `?token=` on in their Referer (to access logs): a clean page has none."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("request", self._request)

    def _request(self, request: Request) -> None:
        if "token=" in request.headers.get("referer", ""):
            self.errors.append(f"referer: {request.url} carries the page's token")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")


async def open_page(browser: Browser, url: str, width: int = 1280) -> tuple[Page, PageProblems]:
    page = await browser.new_page(viewport={"width": width, "height": 860})
    problems = PageProblems(page)
    await page.goto(url)
    return page, problems


def by_id(page: Page | Locator, testid: str) -> Locator:
    return page.locator(f'[data-testid="{testid}"]')


async def wait_open(page: Page) -> None:
    await pw_expect(by_id(page, "conn-status")).to_have_attribute(
        "data-state", "open", timeout=WAIT_MS
    )


async def shown_chars(turn: Locator) -> int:
    """Characters the page displays for a turn, kept and struck-through alike."""
    text = await turn.locator(".msg-text").text_content()
    return len(text or "")


async def wait_until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 10.0
) -> T:
    """Poll an async probe until `done` holds for its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last value {value!r}")
        await asyncio.sleep(0.05)


async def say(page: Page, text: str) -> Locator:
    """Send a message; the NPC turn that answers it."""
    turns = by_id(page, "npc-turn")
    before = await turns.count()
    await by_id(page, "message-input").fill(text)
    await by_id(page, "send-button").click()
    await pw_expect(turns).to_have_count(before + 1, timeout=WAIT_MS)
    return turns.nth(before)


async def test_play_page_streams_interrupts_approves_and_shares_a_room(
    browser: Browser,
) -> None:
    async with running_server(server_config(scripted=SLOW_LONG)) as server:
        page, problems = await open_page(
            browser, f"{server.http_url}/play?token={server.token('alice')}&player=alice"
        )
        await wait_open(page)
        await pw_expect(by_id(page, "player-name")).to_have_text("alice")
        await pw_expect(by_id(page, "latency")).to_have_text(LATENCY, timeout=WAIT_MS)

        await by_id(page, "npc-merchant").click()
        await pw_expect(by_id(page, "stage-name")).to_have_text("Mira the Merchant")
        interrupt = by_id(page, "interrupt-button")
        await pw_expect(interrupt).to_be_disabled()

        # 1. The reply streams in: the displayed text grows over time.
        turn = await say(page, "Heard any rumours lately?")
        await pw_expect(turn).to_have_attribute("data-state", "streaming")
        first = await wait_until(lambda: shown_chars(turn), lambda n: n > 0)
        second = await wait_until(lambda: shown_chars(turn), lambda n: n > first)
        assert 0 < first < second

        # 2. Interrupt: the turn is marked interrupted and stops growing.
        await pw_expect(interrupt).to_be_enabled()
        await interrupt.click()
        await pw_expect(turn).to_have_attribute("data-reason", "interrupted", timeout=WAIT_MS)
        await pw_expect(by_id(turn, "turn-badge")).to_have_text("Interrupted")
        await pw_expect(interrupt).to_be_disabled()
        stopped = await shown_chars(turn)
        await asyncio.sleep(1.0)
        assert await shown_chars(turn) == stopped, "text kept growing after the interrupt"
        kept = int(await turn.get_attribute("data-kept") or -1)
        sent = int(await turn.get_attribute("data-chars") or -1)
        assert second <= stopped <= sent < 3000, (second, stopped, sent)
        assert 0 < kept <= stopped, (kept, stopped)

        # 3. A second exchange asks for approval: approve it on its card.
        turn = await say(page, "What wares do you sell?")
        card = turn.locator('[data-testid="action-card"][data-name="open_shop"]')
        await pw_expect(card).to_have_attribute("data-status", "waiting", timeout=WAIT_MS)
        await by_id(card, "approve-button").click()
        await pw_expect(card).to_have_attribute("data-status", "accepted", timeout=WAIT_MS)
        await pw_expect(by_id(card, "action-status")).to_have_text("Approved")
        await pw_expect(by_id(card, "approve-button")).to_be_hidden()

        # 4. A shared room: another player's presence, typing and speech show up.
        await by_id(page, "room-input").fill("tavern")
        await by_id(page, "room-join").click()
        await pw_expect(by_id(page, "room-current")).to_contain_text("tavern")
        feed = by_id(page, "room-feed")
        # Bob reads nothing while the page is checked; without a bounded queue his
        # unread frames cannot stall the close handshake at the end.
        async with connect(server.url, max_queue=None) as bob:
            await bob.hello(server.token("bob"))
            await bob.send({"t": "join", "id": 1, "room": "tavern"})
            await bob.expect("ack")
            await pw_expect(feed).to_contain_text("bob joined tavern.", timeout=WAIT_MS)
            await bob.send({"t": "typing", "on": True, "npc": "guard", "room": "tavern"})
            await pw_expect(by_id(page, "room-typing")).to_have_text("bob is typing…")
            await bob.send(
                {"t": "say", "id": 2, "npc": "guard", "text": "Evening, all!", "room": "tavern"}
            )
            await pw_expect(feed).to_contain_text(
                "bob to Brann of the Gate Watch: “Evening, all!”", timeout=WAIT_MS
            )
            await pw_expect(by_id(page, "room-typing")).to_have_text("")
            # What a cluster node sends its room members after a Redis outage.
            server.node.hub.send_to_room("tavern", RoomGap("tavern"))
            await pw_expect(feed).to_contain_text(
                "Some of what was said in tavern may be missing.", timeout=WAIT_MS
            )

            await page.wait_for_timeout(600)  # let the caret and text settle for the picture
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "play_page.png"))
            await page.set_viewport_size({"width": 400, "height": 860})
            await page.screenshot(path=str(ARTIFACTS / "play_page_narrow.png"))

        assert problems.errors == []
        await page.close()


async def test_play_page_resumes_a_streaming_turn_after_a_dropped_socket(
    browser: Browser,
) -> None:
    config = server_config(scripted={"tokens_per_second": 40, "long_reply_chars": 900})
    async with running_server(config) as server:
        page, problems = await open_page(
            browser, f"{server.http_url}/play?token={server.token('alice')}&player=alice"
        )
        await wait_open(page)
        await record_connection_states(page)
        await by_id(page, "npc-merchant").click()
        turn = await say(page, "Heard any rumours lately?")
        await wait_until(lambda: shown_chars(turn), lambda n: n > 20)

        # 4000 (slow consumer) means "reconnect and resume": nothing may be lost.
        drop_sockets(server, CloseCode.SLOW_CONSUMER)
        await pw_expect(turn).to_have_attribute("data-reason", "done", timeout=30_000)
        states = await page.evaluate("window.__connStates")
        assert "reconnecting" in states, states
        assert states[-1] == "open", states
        assert server.node.statistics().sessions == 1, "the page opened a new session"
        sent = int(await turn.get_attribute("data-chars") or -1)
        assert await shown_chars(turn) == sent >= 900
        assert await by_id(turn, "turn-badge").text_content() == ""
        assert problems.errors == []
        await page.close()


async def test_play_page_stops_on_a_refused_token(browser: Browser) -> None:
    async with running_server(server_config()) as server:
        page, _ = await open_page(browser, f"{server.http_url}/play?token=not-a-token&player=eve")
        await record_connection_states(page)
        banner = by_id(page, "banner")
        await pw_expect(banner).to_contain_text("Sign-in refused", timeout=WAIT_MS)
        await pw_expect(by_id(page, "conn-status")).to_have_attribute("data-state", "closed")
        await asyncio.sleep(1.0)  # a reconnect would have started by now
        assert "reconnecting" not in await page.evaluate("window.__connStates")
        await pw_expect(by_id(page, "send-button")).to_be_disabled()


async def test_play_page_gets_a_development_token_only_in_development(
    browser: Browser,
) -> None:
    # With a secret (production-like), /dev/token is 404 and the page says what to do.
    async with running_server(server_config()) as server:
        page, _ = await open_page(browser, f"{server.http_url}/play?player=carol")
        await pw_expect(by_id(page, "banner")).to_contain_text("Sign-in needed", timeout=WAIT_MS)
        await pw_expect(by_id(page, "banner")).to_contain_text("/play?token=")
        await pw_expect(by_id(page, "conn-status")).to_have_attribute("data-state", "closed")

    # Without a secret (development), the page signs itself in and connects.
    async with running_server(replace(server_config(), secret=None)) as server:
        page, problems = await open_page(browser, f"{server.http_url}/play?player=carol")
        await wait_open(page)
        await pw_expect(by_id(page, "player-name")).to_have_text("carol")
        await pw_expect(by_id(page, "banner")).to_be_hidden()
        assert problems.errors == []
        await page.close()  # an open socket would hold up the server's shutdown


async def record_connection_states(page: Page) -> None:
    """Keep every value of the connection indicator in `window.__connStates`."""
    await page.evaluate(
        """() => {
            const node = document.querySelector('[data-testid="conn-status"]');
            window.__connStates = [node.dataset.state];
            new MutationObserver(() => {
                const last = window.__connStates[window.__connStates.length - 1];
                if (node.dataset.state !== last) window.__connStates.push(node.dataset.state);
            }).observe(node, { attributes: true, attributeFilter: ["data-state"] });
        }"""
    )


def drop_sockets(server: RunningServer, code: CloseCode) -> None:
    for socket in list(server.node.sockets):
        socket.request_close(code, "test drops the socket")
