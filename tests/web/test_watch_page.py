"""The read-only watch view in a real headless Chromium: EventSource on `/watch`, no WebSocket.

Needs Debian's `chromium` and `pip install playwright`, as tests/web/test_play_page.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from npc_server.events import Closed, Connected, NodeEvent
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import RoomGap
from npc_server.tokens import DEV_SECRET, issue_token, issue_watch_token
from tests.support.client import RawClient, connect
from tests.support.server import RunningServer, running_server, server_config
from tests.support.wait import wait_until

try:
    from playwright.async_api import Browser, Page
    from playwright.async_api import expect as pw_expect
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

from tests.web.test_play_page import CHROMIUM, WAIT_MS, PageProblems

ROOM = "tavern"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
]


async def open_watch(browser: Browser, server: RunningServer) -> tuple[Page, PageProblems]:
    page = await browser.new_page(viewport={"width": 1000, "height": 800})
    problems = PageProblems(page)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    requests: list[tuple[str, str]] = []  # what the page asked for, and its Referer
    page.on("request", lambda r: requests.append((r.url, r.headers.get("referer", ""))))
    token = issue_watch_token(server.secret, [ROOM], 600)
    await page.goto(f"{server.http_url}/play/watch.html?room={ROOM}&token={token}")
    await pw_expect(page.locator('[data-testid="conn-status"]')).to_have_attribute(
        "data-state", "open", timeout=WAIT_MS
    )
    assert sockets == [], "the watch view must not open a WebSocket"
    # Its scripts, styles and stream must not carry the link's token on (access logs).
    assert any("/watch?" in url for url, _ in requests[1:]), requests
    assert [url for url, referer in requests if token in referer] == []
    return page, problems


async def player(server: RunningServer, client: RawClient, name: str) -> None:
    await client.hello(server.token(name))
    await client.send({"t": "join", "id": "j", "room": ROOM})
    await client.expect("ack")


async def test_the_watch_view_follows_a_room_and_loses_nothing_across_a_drop(
    browser: Browser,
) -> None:
    """Presence, said and the NPC's streamed text appear; a server-side drop mid-turn
    is bridged by EventSource's Last-Event-ID: the page ends with the whole reply."""
    config = server_config(scripted={"tokens_per_second": 60, "long_reply_chars": 600})
    async with running_server(config) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as alice:
            await player(server, alice, "alice")
            page, problems = await open_watch(browser, server)
            members = page.locator('[data-testid="watch-members"]')
            await pw_expect(members).to_have_text("In the room: alice")
            async with connect(server.url) as bob:
                await player(server, bob, "bob")
                await pw_expect(members).to_have_text("In the room: alice, bob", timeout=WAIT_MS)
                await bob.send({"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": ROOM})
                said = page.locator('[data-testid="watch-said"]')
                await pw_expect(said).to_contain_text("hi", timeout=WAIT_MS)
                turn = page.locator('[data-testid="watch-turn"]')
                await pw_expect(turn).to_contain_text("Welcome", timeout=WAIT_MS)
                drop_watchers(server)  # the page must reconnect and replay the gap
                end = await bob.expect("turn.end", timeout=30)
                full = "".join(f["text"] for f in bob.received if f.get("t") == "delta")
                assert end["reason"] == "done" and len(full) == end["chars"]
                await pw_expect(turn).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
                await pw_expect(turn.locator(".msg-text")).to_have_text(full)
                # What a cluster node sends a room's members and watchers after an outage.
                server.node.hub.send_to_room(ROOM, RoomGap(ROOM))
                await pw_expect(page.locator("body")).to_contain_text(
                    "(some of what was said in the room may be missing)", timeout=WAIT_MS
                )
            await wait_until(lambda: reconnected(server), what="the page's second stream")
            await page.close()
        assert problems.errors == []
        drops = [e for e in events if isinstance(e, Closed) and e.transport == "sse"]
        assert drops and drops[0].code == CloseCode.SLOW_CONSUMER
        assert [e.transport for e in events if isinstance(e, Connected)].count("sse") >= 2


def drop_watchers(server: RunningServer) -> None:
    for link in list(server.node.sockets):
        if getattr(link, "transport", "") == "sse":
            link.request_close(CloseCode.SLOW_CONSUMER, "test: drop the stream")


def reconnected(server: RunningServer) -> bool:
    return any(getattr(link, "transport", "") == "sse" for link in server.node.sockets)


async def test_on_a_development_server_the_view_needs_no_token_in_its_link(
    browser: Browser,
) -> None:
    """Without NPC_SERVER_SECRET the page fetches a dev watch token itself (the /play link)."""
    config = replace(server_config(), secret=None)
    async with running_server(config) as server:
        async with connect(server.url) as alice:
            await alice.hello(issue_token(DEV_SECRET, "alice"))
            await alice.send({"t": "join", "id": "j", "room": ROOM})
            await alice.expect("ack")
            page = await browser.new_page()
            problems = PageProblems(page)
            await page.goto(f"{server.http_url}/play/watch.html?room={ROOM}")
            await pw_expect(page.locator('[data-testid="conn-status"]')).to_have_attribute(
                "data-state", "open", timeout=WAIT_MS
            )
            await pw_expect(page.locator('[data-testid="watch-members"]')).to_have_text(
                "In the room: alice"
            )
            await page.close()
        assert problems.errors == []


async def test_the_play_page_links_a_joined_room_to_its_watch_view(browser: Browser) -> None:
    """After joining on /play, "watch this room" opens the read-only view of that room."""
    config = replace(server_config(), secret=None)
    async with running_server(config) as server:
        context = await browser.new_context()
        page = await context.new_page()
        problems = PageProblems(page)
        await page.goto(f"{server.http_url}/play?player=alice")
        await pw_expect(page.locator('[data-testid="conn-status"]')).to_have_attribute(
            "data-state", "open", timeout=WAIT_MS
        )
        await page.locator('[data-testid="room-input"]').fill(ROOM)
        await page.locator('[data-testid="room-join"]').click()
        link = page.locator('[data-testid="watch-link"]')
        await pw_expect(link).to_have_attribute("href", f"/play/watch.html?room={ROOM}")
        async with context.expect_page() as opened:
            await link.click()
        view = await opened.value
        await pw_expect(view.locator('[data-testid="watch-members"]')).to_have_text(
            "In the room: alice", timeout=WAIT_MS
        )
        await context.close()
        assert problems.errors == []
