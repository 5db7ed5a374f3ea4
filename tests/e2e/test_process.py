"""The real `npc-server` command: start-up, tokens, production mode, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from npc_server.protocol.codes import CloseCode
from npc_server.tokens import DEV_SECRET, verify_token
from tests.support.client import connect
from tests.support.server import DEMO_CONFIG, DEMO_NPCS, REPO, SECRET, start_server_process
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, overrides: str) -> Path:
    """A copy of the shipped config with the demo NPCs and `[overrides.scripted]` set."""
    text = DEMO_CONFIG.read_text()
    text = text.replace('npcs_dir = "npcs"', f'npcs_dir = "{DEMO_NPCS}"')
    assert "[overrides.scripted]\n" in text
    path = tmp_path / "server.toml"
    path.write_text(text.replace("[overrides.scripted]\n", overrides))
    return path


def get(url: str) -> tuple[int, dict[str, object]]:
    """(status, JSON body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


ADMIN = re.compile(r"metrics on (http://[\d.]+:\d+)/metrics")


async def test_sigterm_drains_then_closes_1001(tmp_path: Path) -> None:
    """SIGTERM: draining{retry_after}, the active turn gets its grace, then 1001 and exit 0.
    Meanwhile /readyz answers 503 on the main port and on the metrics bind, so a balancer
    or an orchestrator sends no new player, and /healthz stays 200 ("draining")."""
    config = write_config(
        tmp_path, "[overrides.scripted]\ntokens_per_second = 100\nfirst_token_ms = 0\n"
    )
    env = {
        "NPC_SERVER_SERVER_GRACEFUL_TIMEOUT": "60",
        "NPC_SERVER_METRICS_ENABLED": "true",
        "NPC_SERVER_METRICS_BIND": "127.0.0.1:0",
    }
    server = start_server_process(env=env, args=["--config", str(config)])
    try:
        # The metrics line may come after the listening line start_server_process waits for.
        await wait_until(lambda: any(ADMIN.search(line) for line in server.output))
        [admin] = [m.group(1) for line in server.output if (m := ADMIN.search(line))]
        for base in (server.http_url, admin):
            assert await asyncio.to_thread(get, base + "/readyz") == (200, {"status": "ready"})
        async with connect(server.url) as client:
            await client.hello(server.token("alice"))
            await client.send(
                {"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"}
            )
            turn = (await client.expect("ack"))["turn"]
            await client.expect("delta")
            server.proc.send_signal(signal.SIGTERM)
            draining = await client.expect("draining")
            assert draining["retry_after"] > 0
            for base in (server.http_url, admin):
                ready = await asyncio.to_thread(get, base + "/readyz")
                assert ready == (503, {"status": "draining"}), base
                health = await asyncio.to_thread(get, base + "/healthz")
                assert (health[0], health[1]["status"]) == (200, "draining"), base
            frames = await client.recv_until(lambda f: f["t"] == "turn.end")
            assert (frames[-1]["turn"], frames[-1]["reason"]) == (turn, "done")
            assert await client.close_code() == CloseCode.GOING_AWAY
        assert server.wait() == 0
    finally:
        server.kill()


async def test_drain_grace_ends_long_turns(tmp_path: Path) -> None:
    """A turn longer than the grace does not hold the server: 1001 comes after the grace."""
    config = write_config(
        tmp_path, "[overrides.scripted]\ntokens_per_second = 20\nlong_reply_chars = 100000\n"
    )
    server = start_server_process(
        env={"NPC_SERVER_SERVER_GRACEFUL_TIMEOUT": "0.3"}, args=["--config", str(config)]
    )
    try:
        async with connect(server.url) as client:
            await client.hello(server.token("alice"))
            await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "any rumours?"})
            await client.expect("delta")
            server.proc.send_signal(signal.SIGTERM)
            await client.expect("draining")
            assert await client.close_code() == CloseCode.GOING_AWAY
        assert server.wait() == 0
    finally:
        server.kill()


def test_healthz_and_npcs_of_the_real_command() -> None:
    """The default command serves the demo NPCs and /healthz."""
    server = start_server_process()
    try:
        with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok"
        with urllib.request.urlopen(server.http_url + "/npcs", timeout=5) as response:
            npcs = {n["id"]: n for n in json.loads(response.read())}
        assert set(npcs) == {"merchant", "guard", "questgiver"}
        assert all(n["greeting"] for n in npcs.values())
        assert server.terminate() == 0
    finally:
        server.kill()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "NPC_SERVER_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "npc_server", *args],
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_token_command_signs_with_the_configured_secret() -> None:
    """`npc-server token PLAYER` prints a token for that player, signed with NPC_SERVER_SECRET."""
    result = run_cli("token", "alice", "--ttl", "60", env={"NPC_SERVER_SECRET": SECRET})
    assert result.returncode == 0
    claims = verify_token(SECRET, result.stdout.strip())
    assert claims.player == "alice"


def test_token_command_in_development_mode_warns() -> None:
    """Without a secret the token uses the development secret and says so."""
    result = run_cli("token", "bob")
    assert result.returncode == 0
    assert verify_token(DEV_SECRET, result.stdout.strip()).player == "bob"
    assert "DEVELOPMENT MODE" in result.stderr


def test_production_refuses_to_start_without_a_secret() -> None:
    """`--production` without NPC_SERVER_SECRET exits non-zero with a clear message."""
    result = run_cli("--production", "--port", "0")
    assert result.returncode == 2
    assert "NPC_SERVER_SECRET" in result.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    """An unknown key in the config names itself and the known keys."""
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nheartbeet = 5\n")
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert "heartbeet" in result.stderr and "heartbeat" in result.stderr
