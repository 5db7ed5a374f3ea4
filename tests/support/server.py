"""Real servers for tests: Hypercorn in this event loop, or a separate process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve

from npc_server.app import create_app
from npc_server.backends import Backend
from npc_server.config import DEFAULT_CONFIG, Config, load_config, with_overrides
from npc_server.node import Node
from npc_server.npcs import NpcConfig, load_npcs
from npc_server.serve import hypercorn_config, make_listener
from npc_server.tokens import issue_token
from npc_server.turns import Audience, Conversation

REPO = Path(__file__).resolve().parents[2]
# The demo travels in the package (npc_server/demo/): what `npc-server` serves by default.
DEMO_CONFIG = DEFAULT_CONFIG
DEMO_NPCS = DEFAULT_CONFIG.parent / "npcs"
SECRET = "test-secret-for-npc-server-tests-only"
# Fast but still streaming: a long reply takes a while, so tests can cut it.
FAST_SCRIPTED = {"first_token_ms": 0, "tokens_per_second": 400}


def server_config(
    limits: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    auth: Mapping[str, Any] | None = None,
    scripted: Mapping[str, Any] | None = None,
) -> Config:
    """The shipped config on a free loopback port, with test overrides."""
    config = load_config(DEMO_CONFIG, env={"NPC_SERVER_SECRET": SECRET})
    return with_overrides(
        config,
        server={"host": "127.0.0.1", "port": 0, "use_uvloop": False, **(server or {})},
        limits=dict(limits or {}),
        auth=dict(auth or {}),
        backend_overrides={"scripted": {**FAST_SCRIPTED, **(scripted or {})}},
    )


@dataclass
class RunningServer:
    host: str
    port: int
    node: Node
    config: Config
    secret: str = SECRET
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self, player: str, ttl: float = 3600.0) -> str:
        return issue_token(self.secret, player, ttl)


def conversation_of(server: RunningServer, npc: str, player: str) -> Conversation:
    """The private conversation of `npc` with `player` on the server's node."""
    conversation = server.node.find_conversation(npc, Audience(player=player))
    assert conversation is not None, f"no conversation of {npc} with {player}"
    return conversation


@asynccontextmanager
async def running_server(
    config: Config | None = None,
    npcs: Mapping[str, NpcConfig] | None = None,
    backends: Mapping[str, Backend] | None = None,
) -> AsyncIterator[RunningServer]:
    """A real Hypercorn serving the app on a free loopback port, in this loop."""
    config = config or server_config()
    node = Node(config, npcs if npcs is not None else load_npcs(DEMO_NPCS), backends=backends)
    app = create_app(config, node=node)
    listener = make_listener(config)
    stop = asyncio.Event()
    serving = hypercorn_serve(app, hypercorn_config(config, listener), shutdown_trigger=stop.wait)
    task = asyncio.create_task(serving)
    try:
        yield RunningServer(listener.host, listener.port, node, config)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@dataclass
class ServerProcess:
    """`python -m npc_server` in its own process."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    secret: str = SECRET
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def token(self, player: str, ttl: float = 3600.0) -> str:
        return issue_token(self.secret, player, ttl)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._close_pipe()
        return code

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit by itself; its exit code."""
        code = self.proc.wait(timeout)
        self._close_pipe()
        return code

    def kill(self) -> None:
        """SIGKILL if still running; always releases the pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    _reader: threading.Thread | None = None


def _drain(proc: subprocess.Popen[str], output: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line.rstrip())


LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


def start_server_process(
    env: Mapping[str, str] | None = None,
    args: list[str] | None = None,
    command: Sequence[str] = (sys.executable, "-m", "npc_server"),
    cwd: Path = REPO,
) -> ServerProcess:
    """Start the real command (`command`, run in `cwd`) on a free port and wait until it listens."""
    full_env = {
        **os.environ,
        "NPC_SERVER_SECRET": SECRET,
        "NPC_SERVER_HOST": "127.0.0.1",
        "NPC_SERVER_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [*command, *(args or [])],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    assert proc.stdout is not None
    output: list[str] = []
    for line in proc.stdout:  # bounded: the process prints this line or exits
        output.append(line.rstrip())
        match = LISTENING.search(line)
        if match:
            server = ServerProcess(proc, match.group(1), int(match.group(2)), output=output)
            # Keep reading its output, so a chatty server never blocks on a full pipe.
            server._reader = threading.Thread(target=_drain, args=(proc, output), daemon=True)
            server._reader.start()
            return server
    proc.wait(10)
    proc.stdout.close()
    raise RuntimeError("server exited before listening:\n" + "\n".join(output))
