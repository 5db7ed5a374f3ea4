"""The `npc-chat` command against a real `npc-server` process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from npc_client import connect
from npc_client.terminal import Wrapper

from tests.support.game_server import API_KEY
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


NO_WRAP = {**os.environ, "COLUMNS": ""}
API_AUTH = {
    "Authorization": f"Bearer {API_KEY}"
}  # a pipe, and no $COLUMNS: replies are not wrapped


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
        env={**os.environ, "COLUMNS": "", **(env or {})},  # no wrapping unless a test asks
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
    greeting, reply = [line for line in done.stdout.splitlines() if line.startswith("Mira the M")]
    assert "Welcome, dave!" in greeting
    assert " [open shop?] " in reply  # where she does it
    assert "[Mira the Merchant asks: open shop? Answer /yes or /no]\n" in done.stdout
    assert "[open shop: accepted]\n" in done.stdout
    assert "{}" not in done.stdout


def test_chat_shows_the_greeting_on_connect(server: ServerProcess) -> None:
    """The NPC's greeting opens the chat before anything is said."""
    done = chat(
        "--url", server.url, "--token", server.token("fred"), "--npc", "guard", stdin="/quit\n"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "Brann of the Gate Watch: Halt. State your business at the gate, fred."


def test_chat_wraps_replies_at_word_boundaries(server: ServerProcess) -> None:
    """With 40 columns every line fits, and the reply is spread over several lines."""
    done = chat(
        "--url", server.url, "--token", server.token("gwen"), "--npc", "merchant",
        stdin="how much is a potion?\n/quit\n", env={"COLUMNS": "40"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 40 for line in lines), lines
    start = next(i for i, line in enumerate(lines) if line.startswith("Mira the Merchant: "))
    assert "twelve silver" in " ".join(lines[start:]).casefold()
    assert len(lines) - start >= 4


@pytest.mark.parametrize("width", [12, 20, 33])
def test_wrapper_breaks_only_between_words(width: int) -> None:
    """Fed in any pieces, the wrapper never splits a word that fits and keeps every word."""
    text = (
        'Mira laughs. "You drive a hard bargain, traveller. Fine: ten silver, and take '
        'this for your trouble," she says, and hands over a loaf.'
    )
    whole = Wrapper(width)
    expected = whole.feed(text) + whole.flush()
    for size in (1, 3, 7):
        wrapper = Wrapper(width)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert "".join(wrapper.feed(p) for p in pieces) + wrapper.flush() == expected
    lines = expected.split("\n")
    assert all(len(line) <= width for line in lines)
    assert expected.split() == text.split()
    assert all(line == line.strip() for line in lines)


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
    try:
        async with asyncio.timeout(TIMEOUT):
            while marker not in seen:
                chunk = await stream.read(1024)
                assert chunk, f"output ended before {marker!r}: {seen!r}"
                seen += chunk.decode()
    except TimeoutError:
        raise AssertionError(
            f"no {marker!r} within {TIMEOUT} s; the chat printed {seen!r}"
        ) from None
    return seen


async def read_line(stream: asyncio.StreamReader, prefix: str) -> str:
    """Read until a whole line starting with `prefix` arrived; that line."""
    seen = ""
    async with asyncio.timeout(TIMEOUT):
        while not re.search(f"(^|\n){re.escape(prefix)}[^\n]*\n", seen):
            chunk = await stream.read(1024)
            assert chunk, f"output ended before a line {prefix!r}: {seen!r}"
            seen += chunk.decode()
    line = seen[seen.rindex(f"\n{prefix}") + 1 if f"\n{prefix}" in seen else 0 :]
    return line.split("\n", 1)[0]


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
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=NO_WRAP,
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


# A pause before the first word, then about three seconds of text.
PAUSED_CONFIG = """\
[overrides.scripted]
first_token_ms = 1000
tokens_per_second = 50
long_reply_chars = 800
"""


async def test_chat_keeps_a_streaming_reply_whole(tmp_path: Path) -> None:
    """Room notices that come while a reply streams wait below it, not inside it."""
    config = tmp_path / "server.toml"
    config.write_text(PAUSED_CONFIG)
    env = {"NPC_SERVER_CONFIG": str(config), "NPC_SERVER_NPCS_DIR": str(DEMO_NPCS)}
    server = await asyncio.to_thread(start_server_process, env)
    proc = await asyncio.create_subprocess_exec(
        *CHAT, "--url", server.url, "--token", server.token("hana"), "--npc", "merchant",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=NO_WRAP,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"/join tavern\nany news?\n")
        await proc.stdin.drain()
        seen = await read_until(proc.stdout, "[joined tavern")
        seen += await read_until(proc.stdout, "Mira the Merchant: ")  # her reply has begun
        async with await connect(server.url, server.token("ivan")) as bob:
            await bob.join("tavern")  # both land within her first second of silence
            await bob.say("guard", "Evening, all!", room="tavern")
            seen += await read_until(proc.stdout, "[tavern] ivan to Brann of the Gate Watch")
        reply = seen[seen.rindex("Mira the Merchant: ") :].split("\n", 1)[0]
        assert len(reply) > 700, "the reply was cut by a notice"
        assert "[tavern]" not in reply and "ivan" not in reply
        assert seen.index("[tavern] ivan joined") > seen.rindex("Mira the Merchant: ")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stop(server)


async def test_chat_ctrl_c_with_an_approval_pending_asks_before_quitting(
    server: ServerProcess,
) -> None:
    """Ctrl-C at the prompt while an action waits for an answer asks; a second one quits,
    cleanly: nothing on stderr (the question's watcher once left a traceback there)."""
    proc = await asyncio.create_subprocess_exec(
        *CHAT, "--url", server.url, "--token", server.token("jade"), "--npc", "merchant",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=NO_WRAP,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b"what do you sell?\n")
        await proc.stdin.drain()
        await read_until(proc.stdout, "Answer /yes or /no]\n")  # printed once her reply ended
        proc.send_signal(signal.SIGINT)
        asked = await read_until(proc.stdout, "Ctrl-C again quits]\n")
        assert "[open shop waits for your answer: /yes or /no. Ctrl-C again quits]" in asked
        assert proc.returncode is None
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        assert proc.stderr is not None
        assert (await proc.stderr.read()).decode() == ""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# Fast replies, every NPC (the guard's own pacing is 15 tokens a second).
FAST_CONFIG = """\
[overrides.scripted]
first_token_ms = 0
tokens_per_second = 400
"""


async def test_chat_prints_the_actions_of_a_game_caused_turn(tmp_path: Path) -> None:
    """A turn the game server causes (`POST /api/say`) is printed with its actions where
    the NPC takes them; one asking approval asks, and `/yes` answers it."""
    config = tmp_path / "server.toml"
    config.write_text(FAST_CONFIG)
    env = {
        "NPC_SERVER_CONFIG": str(config),
        "NPC_SERVER_NPCS_DIR": str(DEMO_NPCS),
        "NPC_SERVER_API_KEY": API_KEY,
    }
    server = await asyncio.to_thread(start_server_process, env)
    proc = await asyncio.create_subprocess_exec(
        *CHAT, "--url", server.url, "--token", server.token("kai"), "--npc", "merchant",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=NO_WRAP,
    )  # fmt: skip
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await read_until(proc.stdout, "talking to Mira the Merchant")  # connected
        async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http:
            theft = {"npc": "guard", "player": "kai", "event": "theft", "text": "kai took a pear"}
            answer = await http.post("/api/say", json=theft, headers=API_AUTH)
            assert answer.status_code == 200, answer.text
            guard = await read_line(proc.stdout, "Brann of the Gate Watch (")
            assert guard.startswith("Brann of the Gate Watch (game event: theft, to kai): ")
            assert "Thief!" in guard and " [draw sword] " in guard
            shop = {"npc": "merchant", "player": "kai", "event": "browse", "text": "the wares"}
            answer = await http.post("/api/say", json=shop, headers=API_AUTH)
            assert answer.status_code == 200, answer.text
            seen = await read_until(proc.stdout, "Answer /yes or /no]\n")
            mira = seen[seen.rindex("Mira the Merchant (game event: browse, to kai): ") :]
            assert " [open shop?] " in mira.split("\n", 1)[0]
            assert "[Mira the Merchant asks: open shop? Answer /yes or /no]" in mira
        proc.stdin.write(b"/yes\n")
        await proc.stdin.drain()
        await read_until(proc.stdout, "[open shop: accepted]\n")
        proc.stdin.write(b"/quit\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stop(server)
