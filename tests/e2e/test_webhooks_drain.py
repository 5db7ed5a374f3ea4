"""Webhooks across a stop: SIGTERM to the real `npc-server` (and a drain of the in-process
app), a real game server on loopback.

The drain gives queued and in-flight events the rest of `[server] graceful_timeout`;
what still cannot go out is counted and named in one WARNING line; an action waiting
for approval ends `expired` for the player (before 1001) and for the game.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from npc_server.app import drain
from npc_server.config import with_overrides
from npc_server.npcs import parse_npc
from npc_server.protocol.codes import CloseCode
from tests.support.client import Frame, RawClient, connect
from tests.support.game_server import Answer, Received, running_game_server
from tests.support.redis import free_port
from tests.support.server import (
    ServerProcess,
    running_server,
    server_config,
    start_server_process,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

KEEPER = """\
id = "keeper"
name = "Keeper"

[[actions]]
name = "gift"
approval = false

[[actions]]
name = "offer"
approval = true
timeout_s = 600              # never expires by itself within a test

[backend]
kind = "scripted"
first_token_ms = 0
tokens_per_second = 400

[[backend.topics]]
keywords = ["gift"]
replies = ["Here. [[gift item=apple]] Enjoy it."]

[[backend.topics]]
keywords = ["offer"]
replies = ["A map? [[offer item=map]] Yours."]
"""
LOST = re.compile(r"WARNING npc_server\.webhooks: (\d+) webhook events to .* not delivered")


def start_keeper(tmp_path: Path, game_url: str, **env: str) -> ServerProcess:
    """`npc-server` serving only the keeper NPC, its webhooks going to `game_url`."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    (npcs / "keeper.toml").write_text(KEEPER)
    return start_server_process(
        env={"NPC_SERVER_GAME_URL": game_url, **env}, args=["--npcs", str(npcs)]
    )


async def say(client: RawClient, say_id: int, text: str, until: str = "turn.end") -> list[Frame]:
    await client.send({"t": "say", "id": say_id, "npc": "keeper", "text": text})
    return await client.recv_until(lambda f: f["t"] == until)


def action_of(frames: list[Frame]) -> str:
    action: str = next(f for f in frames if f["t"] == "action")["action"]
    return action


def healthz(server: ServerProcess) -> dict[str, object]:
    with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as response:
        health: dict[str, object] = json.loads(response.read())
    return health


def ids(events: list[Received]) -> list[str]:
    return [event.json["id"] for event in events]


def lost_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.output if LOST.search(line)]


async def test_queued_events_reach_a_slow_game_before_the_exit(tmp_path: Path) -> None:
    """A game that answers each event after 0.7 s, one worker, SIGTERM just after the
    third action: all six events (taken, done of each) arrive, in order, before exit 0."""
    async with running_game_server() as game:
        game.answer_events(*[Answer(delay=0.7)] * 6)
        env = {"NPC_SERVER_GAME_WEBHOOK_WORKERS": "1", "NPC_SERVER_SERVER_GRACEFUL_TIMEOUT": "30"}
        server = start_keeper(tmp_path, game.url, **env)
        try:
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
                actions = [action_of(await say(client, n, "a gift?")) for n in (1, 2)]
                actions.append(action_of(await say(client, 3, "a gift?", until="action")))
                health = await asyncio.to_thread(healthz, server)
                webhooks = health["webhooks"]
                assert isinstance(webhooks, dict) and webhooks["queued"] >= 2  # they wait
                server.proc.send_signal(signal.SIGTERM)
                assert await client.close_code(timeout=30) == CloseCode.GOING_AWAY
            assert await asyncio.to_thread(server.wait, 30) == 0
        finally:
            server.kill()
    expected = [f"{action}:{event}" for action in actions for event in ("taken", "done")]
    assert ids(game.events) == expected  # all of them, in order
    assert [event.json["seq"] for event in game.events] == [1, 2, 3, 4, 5, 6]
    assert lost_lines(server) == []


@pytest.mark.parametrize("game_is", ["hanging", "down"])
async def test_what_cannot_go_out_within_the_grace_is_counted_and_logged(
    tmp_path: Path, game_is: str
) -> None:
    """A game that never answers, or is down: the process exits within the grace (not
    the webhook timeout, not the retries), and one WARNING counts and names the lost events."""
    grace = 1.0
    async with running_game_server() as game:
        game.answer_events(*[Answer(hang=True)] * 2)
        url = game.url if game_is == "hanging" else f"http://127.0.0.1:{free_port()}"
        env = {
            "NPC_SERVER_SERVER_GRACEFUL_TIMEOUT": str(grace),
            "NPC_SERVER_GAME_WEBHOOK_WORKERS": "1",
            "NPC_SERVER_GAME_WEBHOOK_TIMEOUT_S": "60",  # far past the grace
            "NPC_SERVER_GAME_WEBHOOK_BACKOFF_S": "0.2",
        }
        server = start_keeper(tmp_path, url, **env)
        try:
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
                action = action_of(await say(client, 1, "a gift?"))
                if game_is == "hanging":  # the first event is in flight, held by the game
                    await wait_until(lambda: game.hanging == 1, what="a held delivery")
                stopped = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                assert await client.close_code() == CloseCode.GOING_AWAY
            assert await asyncio.to_thread(server.wait, grace + 10) == 0
            took = time.monotonic() - stopped
        finally:
            server.kill()
    assert took < grace + 3.0, f"the stop took {took:.1f} s"
    [line] = lost_lines(server)
    match = LOST.search(line)
    assert match is not None and match.group(1) == "2"
    assert "(dropped_shutdown, 2 so far)" in line
    assert f"{action}:taken, {action}:done" in line  # in flight first, then queued


async def test_an_action_waiting_for_approval_expires_at_the_stop(tmp_path: Path) -> None:
    """An offer still open at SIGTERM: the player gets action.end{expired} after
    `draining` and before 1001, and the game gets `taken` then `expired`."""
    async with running_game_server() as game:
        server = start_keeper(tmp_path, game.url, NPC_SERVER_SERVER_GRACEFUL_TIMEOUT="10")
        try:
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
                frames = await say(client, 1, "an offer?")
                offer = next(f for f in frames if f["t"] == "action")
                assert offer["approval"] is True
                server.proc.send_signal(signal.SIGTERM)
                await client.expect("draining")
                end = await client.expect("action.end")
                assert await client.close_code() == CloseCode.GOING_AWAY
            assert await asyncio.to_thread(server.wait, 30) == 0
        finally:
            server.kill()
    action = offer["action"]
    assert end == {
        "t": "action.end",
        "seq": end["seq"],
        "action": action,
        "status": "expired",
        "turn": offer["turn"],
    }
    assert ids(game.events) == [f"{action}:taken", f"{action}:expired"]
    assert game.events[1].json["event"] == "expired"
    assert lost_lines(server) == []
    assert any("1 actions waiting for approval expired" in line for line in server.output)


async def test_an_offer_in_a_turn_the_stop_cuts_ends_too(caplog: pytest.LogCaptureFixture) -> None:
    """A reply still streaming when the grace ends is cut as the app stops; its offer,
    which the player saw, ends `expired` then: queued before the last flush, and with
    no grace left counted and named as lost, never silently forgotten."""
    npc = parse_npc(
        {
            "id": "keeper",
            "name": "Keeper",
            "actions": [{"name": "offer", "approval": True, "timeout_s": 600}],
            "backend": {
                "kind": "scripted",
                "topics": [
                    {"keywords": ["ramble"], "replies": ["A map? [[offer]] " + "so on " * 500]}
                ],
            },
        },
        "keeper.toml",
    )
    with caplog.at_level(logging.INFO, "npc_server"):
        async with running_game_server() as game:
            config = with_overrides(server_config(), game={"url": game.url})
            async with running_server(config, npcs={"keeper": npc}) as server:
                webhooks = server.node.webhooks
                async with connect(server.url) as client:
                    await client.hello(server.token("alice"))
                    frames = await say(client, 1, "ramble on", until="action")
                    await wait_until(lambda: len(game.events) == 1, what="taken")
                    await drain(server.node, grace=0.2, retry_after=0.05)
                    assert await client.close_code() == CloseCode.GOING_AWAY
    action = action_of(frames)
    assert ids(game.events) == [f"{action}:taken"]
    [lost] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert lost.levelno == logging.WARNING and f"{action}:expired" in lost.getMessage()
    assert any("1 actions waiting for approval expired" in r.getMessage() for r in caplog.records)
    assert webhooks.statistics().dropped_shutdown == 1
