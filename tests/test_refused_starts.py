"""The configurations that passed the checks and then crashed at start: each now stops
the real command with one line naming the file (or variable) and the key, exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.server import DEMO_NPCS
from tests.test_cli import assert_refused, run_command


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("server", "tcp_user_timeout_ms = 99999999999999", "at most 2147483647"),
        ("server", "send_buffer_bytes = 99999999999999", "at most 2147483647"),
        ("server", "backlog = 99999999999999", "at most 2147483647"),
        ("server", "gc_threshold = 99999999999999999999", "at most 2147483647"),
        ("limits", "rate_burst = 99999999999999999999", "at most 9007199254740992"),
        ("limits", "rate_per_s = 1e20", "at most 9007199254740992"),
        ("cluster", 'redis_url = "redis://127.0.0.1:notaport/0"', "Port could not be cast"),
        ("cluster", 'redis_url = "redis://127.0.0.1:6379/0?socket_timeout=abc"', "socket_timeout"),
    ],
)
def test_values_that_crashed_at_start_are_refused(
    tmp_path: Path, table: str, line: str, expected: str
) -> None:
    """TypeError/OverflowError in make_listener or tune_gc, 1011 on every hello, redis-py's
    ValueError: each value is refused with the settings instead."""
    rest = f"{line}\n" if table == "server" else f"[{table}]\n{line}\n"
    path = _config(tmp_path, f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n{rest}')
    key = f"[{table}] {line.partition(' =')[0]}"
    assert_refused(run_command(["--config", str(path)]), f"{path}: {key} must be", expected)


@pytest.mark.parametrize("command", [[], ["token", "alice"]])
def test_a_config_file_that_is_not_utf8_is_refused(tmp_path: Path, command: list[str]) -> None:
    """Serving and `npc-server token` both read the file: neither gives a UnicodeDecodeError."""
    path = tmp_path / "bad8.toml"
    path.write_bytes(b'[server]\nname = "\xff"\n')
    args = [*command[:1], "--config", str(path), *command[1:]]
    assert_refused(run_command(args), f"{path}: not UTF-8 text")


def _latin1(path: Path) -> None:
    path.write_bytes(b'id = "x"\nname = "\xff"\n')


def _directory(path: Path) -> None:
    path.mkdir()


def _dangling(path: Path) -> None:
    path.symlink_to("u@h.1:1")


@pytest.mark.parametrize("make", [_latin1, _directory, _dangling])
def test_npc_files_that_cannot_be_read_are_refused(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """Not UTF-8, a directory `x.toml`, a link to nothing: named, not a traceback."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    make(npcs / "x.toml")
    result = run_command(["--config", str(_config(tmp_path, '[server]\nnpcs_dir = "npcs"\n'))])
    assert_refused(result, f"{npcs / 'x.toml'}: ")


def test_a_missing_npc_directory_names_the_key_or_the_variable(tmp_path: Path) -> None:
    """The line says where the directory was set: the file's key, or the variable."""
    path = _config(tmp_path, '[server]\nnpcs_dir = "/nonexist"\n')
    assert_refused(run_command(["--config", str(path)]), f"{path}: [server] npcs_dir: /nonexist")
    result = run_command(["--config", str(path)], env={"NPC_SERVER_NPCS_DIR": "/nonexist"})
    assert_refused(
        result, "environment variable NPC_SERVER_NPCS_DIR ([server] npcs_dir): /nonexist"
    )


def test_a_bad_override_names_server_toml_and_its_key(tmp_path: Path) -> None:
    """Not the demo NPC file that happened to be built first with it."""
    text = f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n[overrides.scripted]\nfirst_token_ms = "fast"\n'
    path = _config(tmp_path, text)
    result = run_command(["--config", str(path)])
    assert_refused(result, f"{path}: [overrides.scripted] first_token_ms: ")
