"""The real `npc-server` command refuses a bad configuration: one line naming file and key, exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from npc_server.app import MIN_SECRET_BYTES, InsecureSecret, resolve_secret
from npc_server.cli import COMMANDS
from npc_server.config import load_config, with_overrides
from npc_server.npcs import load_npcs
from tests.backends.openai_stub import OpenAIStub, reply
from tests.support.client import connect
from tests.support.server import DEMO_NPCS, REPO, SECRET, start_server_process

GOOD_NPC = """\
id = "mira"
name = "Mira"

[[actions]]
name = "open_shop"

[backend]
"""
SCRIPTED = 'kind = "scripted"\nfallback = ["Eh?"]\n'
START_TIMEOUT = 60


def run_command(
    args: list[str], env: Mapping[str, str] | None = None, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`python -m npc_server` with only our NPC_SERVER_* variables; returns once it exits
    (`subprocess.TimeoutExpired` after `timeout` if it does not)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NPC_SERVER_")}
    full_env = {**clean, "NPC_SERVER_SECRET": SECRET, "NPC_SERVER_PORT": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "npc_server", *args],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    """Exit 2, one `npc-server:` line on stderr containing every part, no traceback, no listen."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("npc-server:")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout


def npc_dir(tmp_path: Path, backend: str, top: str = "") -> Path:
    directory = tmp_path / "npcs"
    directory.mkdir()
    (directory / "mira.toml").write_text(top + GOOD_NPC + backend, encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("top", "backend", "key"),
    [
        ('bussy = "queue"\n', SCRIPTED, "'bussy' (did you mean 'busy'?)"),
        ("", 'kind = "openia"\n', "'kind' must be one of 'scripted', 'openai', got 'openia'"),
        (
            "",
            SCRIPTED + "tokens_per_sec = 5\n",
            "'tokens_per_sec' (did you mean 'tokens_per_second'?)",
        ),
        (
            "",
            SCRIPTED + '[[backend.topics]]\nkeywrods = ["x"]\nreplies = ["r"]\n',
            "'keywrods' (did you mean 'keywords'?)",
        ),
        (
            "",
            SCRIPTED + '[[backend.topics]]\nkeywords = ["x"]\nreplies = ["[[fly]]"]\n',
            "action 'fly' is not one of the NPC's [[actions]]",
        ),
    ],
)
def test_bad_npc_file_stops_the_start(tmp_path: Path, top: str, backend: str, key: str) -> None:
    """Unknown keys, kinds, backend settings, topic keys and undeclared actions stop the start."""
    directory = npc_dir(tmp_path, backend, top)
    result = run_command(["--npcs", str(directory)])
    assert_refused(result, str(directory / "mira.toml"), key)


def test_openai_without_the_llm_extra_stops_the_start(tmp_path: Path) -> None:
    """kind = "openai" where the openai package cannot be imported names the pip command."""
    shadow = tmp_path / "shadow" / "openai"
    shadow.mkdir(parents=True)
    # Stands in for an environment without the package: importing it fails as a missing one does.
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'openai'\", name='openai')\n"
    )
    directory = npc_dir(
        tmp_path, 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
    )
    result = run_command(["--npcs", str(directory)], {"PYTHONPATH": str(shadow.parent)})
    assert_refused(
        result,
        str(directory / "mira.toml"),
        "needs the 'openai' package",
        "pip install 'npc-server[llm]'",
    )


@pytest.mark.parametrize(
    ("env", "parts"),
    [
        (
            {"NPC_SERVER_LIMITS_HEARTBEET": "5"},
            ("NPC_SERVER_LIMITS_HEARTBEET", "NPC_SERVER_LIMITS_HEARTBEAT"),
        ),
        ({"NPC_SERVER_LIMITS_HEARTBEAT": "-1"}, ("NPC_SERVER_LIMITS_HEARTBEAT", "greater than 0")),
        ({"NPC_SERVER_LIMITS_SOCKETS_POLICY": "kick"}, ("sockets_policy", "'refuse', 'replace'")),
        (
            {"NPC_SERVER_CONFIG": "/nonexistent/server.toml"},
            ("/nonexistent/server.toml", "no such file"),
        ),
        (
            {"NPC_SERVER_NPCS_DIR": "/nonexistent/npcs"},
            ("/nonexistent/npcs", "no such NPC directory"),
        ),
        ({"NPC_SERVER_LOG_LEVEL": "loud"}, ("NPC_SERVER_LOG_LEVEL", "'LOUD'")),
        (  # a digit int() refuses (it was a traceback)
            {"NPC_SERVER_METRICS_BIND": "127.0.0.1:\u00b2"},
            ("NPC_SERVER_METRICS_BIND", "[metrics] bind", "host:port"),
        ),
    ],
)
def test_bad_environment_stops_the_start(env: dict[str, str], parts: tuple[str, ...]) -> None:
    """Misspelt variables, out-of-range values and missing paths from the environment stop it."""
    assert_refused(run_command([], env), *parts)


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (
            ["--config", "/nonexistent/server.toml"],
            ("--config /nonexistent/server.toml", "no such file"),
        ),
        (["--npcs", "/nonexistent/npcs"], ("--npcs /nonexistent/npcs", "no such directory")),
    ],
)
def test_missing_paths_on_the_command_line_stop_the_start(
    args: list[str], parts: tuple[str, ...]
) -> None:
    """--config and --npcs must name an existing file and directory."""
    assert_refused(run_command(args), *parts)


def test_out_of_range_value_in_the_file_stops_the_start(tmp_path: Path) -> None:
    """A bad value in server.toml names that file, the section and the key."""
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n[limits]\nheartbeat = 0\n')
    assert_refused(
        run_command(["--config", str(config)]), f"{config}: [limits] heartbeat", "greater than 0"
    )


def test_port_in_use_is_a_clear_error() -> None:
    """A port that cannot be bound is one line naming [server] host/port, not a traceback."""
    server = start_server_process()
    try:
        result = run_command([], {"NPC_SERVER_PORT": str(server.port)})
        assert_refused(result, f"cannot listen on [server] host/port 127.0.0.1:{server.port}")
    finally:
        server.terminate()


async def test_good_config_with_an_openai_npc_starts_and_answers(tmp_path: Path) -> None:
    """A valid openai NPC passes the start-up checks and its first say streams a reply."""
    async with OpenAIStub() as stub:
        stub.script(reply("Fine wares!"))
        backend = f'kind = "openai"\nbase_url = "{stub.base_url}"\nmodel = "m"\n'
        server = start_server_process(args=["--npcs", str(npc_dir(tmp_path, backend))])
        try:
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
                await client.send({"t": "say", "id": 1, "npc": "mira", "text": "wares?"})
                frames = await client.recv_until(lambda f: f["t"] == "turn.end")
            assert "".join(f["text"] for f in frames if f["t"] == "delta") == "Fine wares!"
            assert frames[-1]["reason"] == "done"
        finally:
            assert server.terminate() == 0
        assert not any("Traceback" in line for line in server.output)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def test_help_lists_every_subcommand() -> None:
    """`npc-server --help` names each subcommand, and each one's own --help works."""
    result = run_command(["--help"])
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, result.stdout
        own = run_command([name, "--help"])
        assert own.returncode == 0 and own.stdout.startswith("usage: npc-server"), own.stderr
    assert "usage: npc-server init" in run_command(["init", "--help"]).stdout


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--production"], {}), ([], {"NPC_SERVER_SERVER_PRODUCTION": "true"})],
)
def test_short_production_secret_is_refused(args: list[str], env: dict[str, str]) -> None:
    """In production a secret under 32 bytes stops the start: exit 2, one line saying why."""
    result = run_command(args, {"NPC_SERVER_SECRET": "x" * 31, **env})
    assert_refused(result, "NPC_SERVER_SECRET is 31 bytes", "at least 32")
    assert "x" * 31 not in result.stderr


def test_secret_length_counts_bytes_and_only_in_production() -> None:
    """32 bytes pass, 31 do not (multi-byte characters count as bytes); development is not checked."""
    production = with_overrides(load_config(env={}), server={"production": True})
    resolve_secret(replace(production, secret="k" * MIN_SECRET_BYTES))
    for short in ("k" * (MIN_SECRET_BYTES - 1), "é" * 15 + "k"):
        with pytest.raises(InsecureSecret, match=f"is {len(short.encode())} bytes"):
            resolve_secret(replace(production, secret=short))
    resolve_secret(replace(load_config(env={}), secret="short"))


async def test_init_writes_a_config_that_loads_and_serves(tmp_path: Path) -> None:
    """`init DIR` writes server.toml and the demo NPCs; they load, and edits to them are served."""
    target = tmp_path / "game"
    result = run_command(["init", str(target)])
    assert result.returncode == 0, result.stderr
    assert f"--config {target / 'server.toml'}" in result.stdout
    config = load_config(target / "server.toml", env={})
    assert config.npcs_path == target / "npcs"
    assert sorted(load_npcs(config.npcs_path)) == sorted(load_npcs(DEMO_NPCS))
    merchant = target / "npcs" / "merchant.toml"
    merchant.write_text(merchant.read_text().replace('name = "', 'name = "Edited ', 1))
    server = start_server_process(args=["--config", str(target / "server.toml")])
    try:
        npcs = await asyncio.to_thread(get_json, f"{server.http_url}/npcs")
        names = {npc["id"]: npc["name"] for npc in npcs}
        assert names["merchant"].startswith("Edited ")
        async with connect(server.url) as client:
            await client.hello(server.token("alice"))
            await client.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
            frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        assert frames[-1]["reason"] == "done"
    finally:
        assert server.terminate() == 0


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    """A second `init` refuses (exit 2, naming the file) and keeps edits; --force rewrites."""
    assert run_command(["init", str(tmp_path)]).returncode == 0
    config = tmp_path / "server.toml"
    config.write_text("# edited\n")
    assert_refused(run_command(["init", str(tmp_path)]), f"{config}: already exists", "--force")
    assert config.read_text() == "# edited\n"
    assert run_command(["init", "--force", str(tmp_path)]).returncode == 0
    assert load_config(config, env={}).npcs_path == tmp_path / "npcs"


def test_init_into_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """`init` onto an existing plain file is one line naming it, not a traceback."""
    blocker = tmp_path / "taken"
    blocker.write_text("")
    assert_refused(run_command(["init", str(blocker)]), str(blocker), "cannot write")


@pytest.mark.parametrize(
    ("args", "part"),
    [
        (["token", "alice", "--ttl", "nan"], "--ttl must be seconds above 0, at most"),
        (["token", "alice", "--ttl", "inf"], "--ttl must be seconds above 0, at most"),
        (["token", "alice", "--ttl", "-5"], "--ttl must be seconds above 0, at most"),
        (["token", ""], "a player id is 1-128 printable characters"),
        (["token", "x" * 129], "a player id is 1-128 printable characters"),
        (["token", "bad\nname"], "a player id is 1-128 printable characters"),
    ],
)
def test_token_refuses_what_hello_would_refuse(args: list[str], part: str) -> None:
    """A ttl that is no time (nan, inf: tracebacks) or already past, a player id the
    server refuses at hello (the token was printed): a usage error, exit 2, no token."""
    result = run_command(args)
    assert result.returncode == 2 and part in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_token_prints_one_hello_accepts() -> None:
    from npc_server.tokens import verify_token

    result = run_command(["token", "alice", "--ttl", "60"])
    assert result.returncode == 0, result.stderr
    claims = verify_token(SECRET, result.stdout.strip())
    assert claims.player == "alice"


@pytest.mark.parametrize("count", ["0", "5000", "two"])
def test_workers_out_of_range_is_a_usage_error_naming_the_flag(count: str) -> None:
    """`--workers 5000` was reported as `override [server] workers`, a key the user
    never wrote; the flag takes what [server] workers takes (1 to 1024)."""
    result = run_command(["--workers", count])
    assert result.returncode == 2
    assert "--workers: must be a whole number from 1 to 1024" in result.stderr
    assert "Traceback" not in result.stderr
