"""examples/game_server beside a real npc-server: tokens, the purse tool, webhooks, an event."""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import subprocess
import sys
from types import ModuleType

import httpx
import pytest

from npc_server.config import Config, with_overrides
from npc_server.game_http import signature, verify_signature
from tests.support.client import connect
from tests.support.game_server import API_KEY, WEBHOOK_SECRET, listening_socket, serving
from tests.support.server import REPO, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def example() -> ModuleType:
    """examples/game_server/game.py, imported from its file."""
    path = REPO / "examples" / "game_server" / "game.py"
    spec = importlib.util.spec_from_file_location("game_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_example_refuses_to_start_without_its_key_and_secret() -> None:
    """Started in a new terminal without the exports, it says what to set (it once
    started and answered every login with a 500: an empty bearer header)."""
    path = REPO / "examples" / "game_server" / "game.py"
    env = {"PATH": "/usr/bin:/bin", "GAME_API_KEY": "", "GAME_PORT": "1"}
    done = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("game.py: set GAME_API_KEY and GAME_WEBHOOK_SECRET ")


def test_example_checks_signatures_as_documented() -> None:
    """The example's own check accepts npc-server's signature and refuses a forged or old one."""
    check = example().signature_ok
    body = b'{"id": "a-1:done"}'
    header = signature(WEBHOOK_SECRET, body, 1_800_000_000)
    assert check(WEBHOOK_SECRET, header, body, 1_800_000_010)
    assert not check(WEBHOOK_SECRET, header, body + b" ", 1_800_000_010)
    assert not check("other", header, body, 1_800_000_010)
    assert not check(WEBHOOK_SECRET, header, body, 1_800_009_000)
    forged = "t=1800000000,v1=\u00e9"  # not hex, not ASCII: a TypeError from compare_digest
    for verify in (check, verify_signature):
        assert not verify(WEBHOOK_SECRET, forged, body, 1_800_000_010)
        assert verify(WEBHOOK_SECRET, header, body, 1_800_000_010)


async def test_the_worked_example_of_docs_game_server() -> None:
    """Log in through the game, hear the merchant quote from the game's purse, accept her shop
    and get the potion from the game, and hear the guard shout when the game says so."""
    sock = listening_socket()
    game = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = dataclasses.replace(server_config(), api_key=API_KEY, webhook_secret=WEBHOOK_SECRET)
    config = with_overrides(config, game={"url": game})
    with sock:  # closed here if Hypercorn never took it
        await talk_to_the_example(sock, game, config)


async def talk_to_the_example(sock: socket.socket, game: str, config: Config) -> None:
    async with running_server(config) as npc:
        app = example().create_game(npc.http_url, API_KEY, WEBHOOK_SECRET)
        async with serving(app, sock), httpx.AsyncClient(base_url=game, timeout=10) as http:
            login = (await http.post("/login", json={"player": "alice"})).json()
            async with connect(login["ws"]) as client:
                await client.hello(login["token"])
                await client.send(
                    {"t": "say", "id": 1, "npc": "merchant", "text": "can I afford that?"}
                )
                frames = await client.recv_until(lambda f: f["t"] == "turn.end")
                assert "42 gold" in "".join(f["text"] for f in frames if f["t"] == "delta")
                await client.send({"t": "say", "id": 2, "npc": "merchant", "text": "what wares?"})
                action = await client.expect("action")
                await client.send({"t": "act", "id": 3, "action": action["action"], "accept": True})
                assert (await client.expect("action.end"))["status"] == "accepted"
                webhooks = npc.node.webhooks
                await wait_until(lambda: webhooks.statistics().delivered == 2, what="webhooks")
                state = (await http.get("/players/alice")).json()
                assert state["inventory"] == ["healing potion"]
                assert (state["gold"], state["silver"]) == (40, 8)
                said = (await http.post("/steal", json={"player": "alice"})).json()
                start = await client.expect("turn.start")
                assert start["turn"] == said["turn"] and start["caused_by"] == "game"
                assert start["event"] == "theft"
                # The merchant's reply may still stream (her action was answered mid-turn):
                # the guard's shout is the game's turn, whatever is interleaved with it.
                shout = await client.recv_until(
                    lambda f: f["t"] == "turn.end" and f["turn"] == said["turn"]
                )
                deltas = [f for f in shout if f["t"] == "delta" and f["turn"] == said["turn"]]
                assert "Thief!" in "".join(f["text"] for f in deltas)
                offline = await http.post("/steal", json={"player": "bob"})  # no socket
                assert offline.status_code == 409
                assert offline.json()["error"]["code"] == "not_connected"
