"""The `npc-chat` command against a real `npc-server` process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import DEMO_NPCS, SECRET, ServerProcess, start_server_process

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0
CHAT = [sys.executable, "-m", "npc_client.chat"]
# Replies long and slow enough to be cut with Ctrl-C (a minute if left alone).
SLOW_CONFIG = """\
[overrides.scripted]
first_token_ms = 0
tokens_per_second = 50
long_reply_chars = 3000
"""


def stop(process: ServerProcess) -> None:
    """Terminate the server and close its output pipe (`terminate()` leaves it open)."""
    try:
        process.terminate()
    finally:
        if process.proc.stdout is not None:
            process.proc.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = start_server_process()
    yield process
    stop(process)


def chat(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_chat_prints_the_streamed_reply(server: ServerProcess) -> None:
    """A line on stdin is said to the NPC and its reply appears on stdout."""
    done = chat(
        "--url",
        server.url,
        "--token",
        server.token("alice"),
        "--npc",
        "merchant",
        stdin="hello\n/quit\n",
    )
    assert done.returncode == 0, done.stderr
    assert "Mira the Merchant: Welcome, alice! Mind the lamp oil" in done.stdout
    assert "talking to Mira the Merchant" in done.stdout


def test_chat_makes_a_dev_token_for_player(server: ServerProcess) -> None:
    """`--player` gets a token from `npc-server token` and chats as that player."""
    done = chat(
        "--url", server.url, "--player", "carol", "--npc", "guard",
        stdin="hello\n", env={"NPC_SERVER_SECRET": SECRET},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "State your business at the gate, carol." in done.stdout


def test_chat_answers_an_action(server: ServerProcess) -> None:
    """An action asking for approval is printed and `/yes` accepts it."""
    done = chat(
        "--url", server.url, "--token", server.token("dave"), "--npc", "merchant",
        stdin="what do you sell?\n/yes\n/quit\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "[action open_shop {}] approve? /yes or /no" in done.stdout
    assert "[action open_shop: accepted]" in done.stdout


def test_chat_reports_a_server_that_is_down() -> None:
    """No server: one clear line on stderr and exit code 3."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    done = chat("--url", url, "--token", "whatever")
    assert done.returncode == 3
    assert done.stderr.strip() == (
        f"npc-chat: cannot reach server at {url}: connection refused — is `npc-server` running?"
    )


def test_chat_reports_a_refused_token(server: ServerProcess) -> None:
    """A bad token: the server's 4500 close is explained and the exit code is 4."""
    done = chat("--url", server.url, "--token", "not-a-token", "--npc", "merchant")
    assert done.returncode == 4
    assert done.stderr.startswith("npc-chat: server refused the token (4500): ")


def test_chat_without_token_says_how_to_get_one() -> None:
    """Neither a token nor a player: a usage message and exit code 2."""
    done = chat("--url", "ws://127.0.0.1:1/ws", env={"NPC_TOKEN": ""})
    assert done.returncode == 2
    assert "npc-server token NAME" in done.stderr


async def read_until(stream: asyncio.StreamReader, marker: str) -> str:
    seen = ""
    async with asyncio.timeout(TIMEOUT):
        while marker not in seen:
            chunk = await stream.read(1024)
            assert chunk, f"output ended before {marker!r}: {seen!r}"
            seen += chunk.decode()
    return seen


async def test_chat_ctrl_c_interrupts_the_reply_then_exits(tmp_path: Path) -> None:
    """Ctrl-C during a reply interrupts it; Ctrl-C at the prompt exits with 0."""
    config = tmp_path / "server.toml"
    config.write_text(SLOW_CONFIG)
    env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_NPCS_DIR": str(DEMO_NPCS)}
    server = await asyncio.to_thread(start_server_process, env)
    try:
        await interrupt_then_quit(server)
    finally:
        stop(server)


async def interrupt_then_quit(server: ServerProcess) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CHAT, "--url", server.url, "--token", server.token("erin"), "--npc", "merchant",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"any news?\n")
        await proc.stdin.drain()
        await read_until(proc.stdout, "Mira the Merchant: ")
        await proc.stdout.read(1)  # the reply has begun streaming
        proc.send_signal(signal.SIGINT)
        tail = await read_until(proc.stdout, "]\n")
        assert "[interrupted: the NPC remembers " in tail
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
