"""`npc_server.asgi:app` served by the plain `hypercorn` command, as users run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import websockets

from npc_server.protocol.codes import CloseCode
from npc_server.tokens import issue_token
from tests.support.client import connect
from tests.support.server import DEMO_CONFIG, DEMO_NPCS, SECRET
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

HYPERCORN = Path(sys.executable).with_name("hypercorn")
RUNNING = re.compile(r"Running on http://([\d.]+):(\d+)")


@dataclass
class Hypercorn:
    proc: subprocess.Popen[str]
    host: str = ""
    port: int = 0
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=5) as reply:
            assert reply.status == 200
            return json.loads(reply.read())


def write_config(directory: Path, extra: str = "") -> Path:
    """The shipped config with the demo NPCs, fast scripted replies and `extra` appended."""
    text = DEMO_CONFIG.read_text()
    text = text.replace('npcs_dir = "npcs"', f'npcs_dir = "{DEMO_NPCS}"')
    text = text.replace(
        "[overrides.scripted]\n",
        "[overrides.scripted]\nfirst_token_ms = 0\ntokens_per_second = 400\n",
    )
    path = directory / "server.toml"
    path.write_text(text + extra)
    return path


def start_hypercorn(cwd: Path, env: dict[str, str], target: str) -> Hypercorn:
    """Run `hypercorn TARGET` on a free port from `cwd`; return once it listens (or exited)."""
    proc = subprocess.Popen(
        [str(HYPERCORN), "--bind", "127.0.0.1:0", target],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Hypercorn(proc)
    assert proc.stdout is not None
    for line in proc.stdout:  # bounded: it prints this line or exits
        server.output.append(line.rstrip())
        match = RUNNING.search(line)
        if match:
            server.host, server.port = match.group(1), int(match.group(2))
            threading.Thread(target=_drain, args=(server,), daemon=True).start()
            return server
    proc.wait(10)
    proc.stdout.close()
    return server


def _drain(server: Hypercorn) -> None:
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        server.output.append(line.rstrip())


def stop(server: Hypercorn) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
    if server.proc.stdout is not None:
        server.proc.stdout.close()


@pytest.fixture(scope="module")
def hypercorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hypercorn]:
    """One plain Hypercorn serving `npc_server.asgi:app` from an empty directory."""
    workdir = tmp_path_factory.mktemp("asgi")
    env = {"NPC_SERVER_CONFIG": str(write_config(workdir)), "NPC_SERVER_SECRET": SECRET}
    server = start_hypercorn(workdir, env, "npc_server.asgi:app")
    assert server.port, "hypercorn did not start:\n" + "\n".join(server.output)
    yield server
    stop(server)


async def test_plain_hypercorn_serves_a_conversation(hypercorn: Hypercorn) -> None:
    """hello, welcome and a streamed demo-NPC turn over npc_server.asgi:app; /healthz answers."""
    health = hypercorn.get_json("/healthz")
    assert isinstance(health, dict)
    assert health["status"] == "ok"
    assert "merchant" in health["npcs"]
    async with connect(hypercorn.url) as client:
        welcome = await client.hello(issue_token(SECRET, "alice"))
        assert (welcome["player"], welcome["resumed"]) == ("alice", False)
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"})
        ack = await client.expect("ack")
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
    text = "".join(f["text"] for f in frames if f["t"] == "delta")
    end = frames[-1]
    assert (end["turn"], end["reason"]) == (ack["turn"], "done")
    assert end["chars"] == len(text) > 0


async def test_plain_hypercorn_has_the_fixes_installed(hypercorn: Hypercorn) -> None:
    """Compression is refused and a client's 1000 ends its session: the fixes run under Hypercorn."""
    async with websockets.connect(hypercorn.url, compression="deflate") as ws:
        assert ws.protocol.extensions == []  # offered permessage-deflate, refused
        await ws.send(msgpack.packb({"t": "hello"}))  # no token: refused
        await ws.wait_closed()
        assert ws.close_code == CloseCode.AUTH_FAILED
    async with connect(hypercorn.url) as client:
        await client.hello(issue_token(SECRET, "bob"))
        await client.ws.close(1000)

    def sessions() -> int:
        health = hypercorn.get_json("/healthz")
        assert isinstance(health, dict)
        return int(health["sessions"])

    await wait_until(lambda: sessions() == 0, what="the closed session to end")


def test_plain_hypercorn_logs_what_it_cannot_apply(hypercorn: Hypercorn) -> None:
    """The start-up log names, once, the settings plain Hypercorn does not apply."""
    lines = [line for line in hypercorn.output if "not applied under plain Hypercorn" in line]
    assert len(lines) == 1, hypercorn.output
    log = "\n".join(hypercorn.output)
    for setting in ("tcp_user_timeout_ms", "send_buffer_bytes", "backlog", "graceful_timeout"):
        assert setting in log


def test_factory_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    """A bad setting stops `hypercorn 'npc_server.asgi:app'` with a message naming the key."""
    env = {
        "NPC_SERVER_CONFIG": str(write_config(tmp_path)),
        "NPC_SERVER_LIMITS_HEARTBEAT": "often",
    }
    server = start_hypercorn(tmp_path, env, "npc_server.asgi:app")
    try:
        assert not server.port, "hypercorn served with a bad config"
        assert any("[limits] heartbeat) must be float" in line for line in server.output)
    finally:
        stop(server)


def test_factory_serves_like_the_module_app(tmp_path: Path) -> None:
    """`hypercorn 'npc_server.asgi:create_app()'` serves /healthz and /npcs."""
    env = {"NPC_SERVER_CONFIG": str(write_config(tmp_path)), "NPC_SERVER_SECRET": SECRET}
    server = start_hypercorn(tmp_path, env, "npc_server.asgi:create_app()")
    try:
        assert server.port, "\n".join(server.output)
        npcs = server.get_json("/npcs")
        assert isinstance(npcs, list)
        assert {n["id"] for n in npcs} >= {"merchant", "guard", "questgiver"}
    finally:
        stop(server)
