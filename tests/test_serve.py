"""Start-up: backends built before listening, the listening socket's options, the collector."""

from __future__ import annotations

import gc
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import npc_server.node as node_module
from npc_server.app import create_app
from npc_server.backends import Backend, BackendConfigError
from npc_server.config import load_config, with_overrides
from npc_server.npcs import NpcConfigError
from npc_server.serve import make_listener, prepare, tune_gc
from npc_server.settings import MAX_C_INT, MAX_COUNT
from tests.backends.openai_stub import OpenAIStub, reply
from tests.support.client import connect
from tests.support.server import DEMO_NPCS, running_server, server_config


def test_listener_sets_user_timeout_and_send_buffer() -> None:
    """The socket handed to Hypercorn carries TCP_USER_TIMEOUT and the send buffer cap."""
    config = with_overrides(
        load_config(env={}),
        server={
            "host": "127.0.0.1",
            "port": 0,
            "tcp_user_timeout_ms": 7000,
            "send_buffer_bytes": 65536,
        },
    )
    listener = make_listener(config)
    sock = socket.socket(fileno=listener.fd)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
        # Linux doubles the requested size for its own bookkeeping.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
        assert listener.port > 0
    finally:
        sock.close()


def test_tune_gc_raises_the_threshold_and_freezes() -> None:
    """tune_gc collects generation 0 less often and freezes start-up objects; 0 leaves it alone."""
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(123_456)
        assert gc.get_threshold() == (123_456, 50, 50)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def openai_npc_dir(tmp_path: Path, base_url: str) -> Path:
    directory = tmp_path / "npcs"
    directory.mkdir()
    (directory / "mira.toml").write_text(
        f'id = "mira"\nname = "Mira"\n[backend]\nkind = "openai"\n'
        f'base_url = "{base_url}"\nmodel = "m"\n',
        encoding="utf-8",
    )
    return directory


async def test_prepare_builds_every_backend_before_the_app_exists(tmp_path: Path) -> None:
    """prepare() loads the NPCs and builds their backends; create_app hands them to the node."""
    config = replace(
        load_config(env={}), npcs_path=openai_npc_dir(tmp_path, "http://127.0.0.1:9/v1")
    )
    prepared = prepare(config)
    assert "npc_server.backends.openai" in sys.modules  # imported now, not on a first say
    app = create_app(config, prepared.npcs, backends=prepared.backends)
    node = app.extensions["npc_server.node"]
    assert node.backends == prepared.backends and set(node.backends) == {"mira"}
    await prepared.backends["mira"].aclose()


async def test_first_say_uses_the_prebuilt_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With backends built at start-up, the node never creates one while serving a say."""

    def no_lazy_backend(*args: object, **kwargs: object) -> Backend:
        raise AssertionError("a backend was created inside the event loop")

    monkeypatch.setattr(node_module, "create_backend", no_lazy_backend)
    async with OpenAIStub() as stub:
        stub.script(reply("Hello there."))
        config = replace(server_config(), npcs_path=openai_npc_dir(tmp_path, stub.base_url))
        prepared = prepare(config)
        async with (
            running_server(config, prepared.npcs, prepared.backends) as server,
            connect(server.url) as client,
        ):
            await client.hello(server.token("alice"))
            await client.send({"t": "say", "id": 1, "npc": "mira", "text": "hi"})
            frames = await client.recv_until(lambda f: f["t"] == "turn.end")
            assert "".join(f["text"] for f in frames if f["t"] == "delta") == "Hello there."
            assert server.node.backends["mira"] is prepared.backends["mira"]


# The largest values the rules let through are ones start-up and the protocol can use.


def test_the_largest_socket_options_the_rules_accept_are_set() -> None:
    """backlog, TCP_USER_TIMEOUT and SO_SNDBUF at 2**31 - 1 (a C int) listen, no TypeError."""
    config = with_overrides(
        load_config(env={}),
        server={
            "host": "127.0.0.1",
            "port": 0,
            "backlog": MAX_C_INT,
            "tcp_user_timeout_ms": MAX_C_INT,
            "send_buffer_bytes": MAX_C_INT,
        },
    )
    sock = socket.socket(fileno=make_listener(config).fd)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == MAX_C_INT
    finally:
        sock.close()


def test_the_largest_gc_threshold_the_rules_accept_is_set() -> None:
    """gc.set_threshold takes a C int: the rule's bound, no OverflowError."""
    before = gc.get_threshold()
    try:
        tune_gc(MAX_C_INT)
        assert gc.get_threshold() == (MAX_C_INT, 50, 50)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_largest_limits_the_rules_accept_reach_the_client_in_welcome() -> None:
    """welcome.limits is msgpack: every limit it carries, at its bound, still encodes
    (2**64 closed every hello with 1011)."""
    sent = ("frame_bytes", "text_chars", "queue_bytes", "rate_burst", "context_keys")
    limits: dict[str, object] = {key: MAX_COUNT for key in sent}
    limits |= {"rate_per_s": float(MAX_COUNT), "context_bytes": MAX_COUNT}
    async with running_server(server_config(limits=limits)) as server:
        async with connect(server.url) as client:
            welcome = await client.hello(server.token("alice"))
    assert welcome["limits"]["rate_burst"] == MAX_COUNT
    assert welcome["limits"]["rate_per_s"] == MAX_COUNT


# Start-up errors name the file (or variable) and the key.


def _server_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_missing_npc_directory_names_the_key_of_the_file(tmp_path: Path) -> None:
    """`[server] npcs_dir` naming no directory says which file set it."""
    path = _server_toml(tmp_path, '[server]\nnpcs_dir = "/nonexist"\n')
    with pytest.raises(NpcConfigError) as info:
        prepare(load_config(path, env={}))
    assert str(info.value) == f"{path}: [server] npcs_dir: /nonexist: no such NPC directory"


def test_a_missing_npc_directory_names_the_variable(tmp_path: Path) -> None:
    """NPC_SERVER_NPCS_DIR naming no directory says so, not the file's key."""
    path = _server_toml(tmp_path, "")
    with pytest.raises(NpcConfigError) as info:
        prepare(load_config(path, env={"NPC_SERVER_NPCS_DIR": "/nonexist"}))
    assert str(info.value) == (
        "environment variable NPC_SERVER_NPCS_DIR ([server] npcs_dir): "
        "/nonexist: no such NPC directory"
    )


@pytest.mark.parametrize(
    ("table", "line", "key"),
    [
        ("overrides.scripted", 'first_token_ms = "fast"', "first_token_ms"),
        ("backends.scripted", "long_reply_chars = -5", "long_reply_chars"),
    ],
)
def test_a_bad_server_wide_backend_value_is_reported_against_server_toml(
    tmp_path: Path, table: str, line: str, key: str
) -> None:
    """A value of server.toml's [overrides.<kind>] or [backends.<kind>] that a backend
    refuses names server.toml and the key, not the first NPC file built with it."""
    path = _server_toml(tmp_path, f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n[{table}]\n{line}\n')
    with pytest.raises(BackendConfigError) as info:
        prepare(load_config(path, env={}))
    assert str(info.value).startswith(f"{path}: [{table}] {key}: "), info.value
    assert key in str(info.value).partition(": ")[2].partition(": ")[2]


@pytest.mark.parametrize("table", ["overrides.scripted", "backends.scripted"])
def test_an_unknown_server_wide_backend_key_is_one_clean_message(
    tmp_path: Path, table: str
) -> None:
    """What the command prints for a typo in server.toml's tables is the build's own
    message: it once came out wrapped in a second one ("[overrides.scripted]
    tokens_per_sec: NPC 'guard': [backend]: unknown key ...")."""
    path = _server_toml(
        tmp_path, f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n[{table}]\ntokens_per_sec = 0\n'
    )
    with pytest.raises(BackendConfigError) as info:
        prepare(load_config(path, env={}))
    message = str(info.value)
    assert message.startswith(
        f"{path}: [{table}]: unknown key 'tokens_per_sec' (did you mean 'tokens_per_second'?); "
        "valid keys: "
    ), message
    assert message.count("unknown key") == 1 and "NPC" not in message, message


def test_a_bad_value_of_the_npc_file_is_still_reported_against_it(tmp_path: Path) -> None:
    """The NPC file stays the one named when its own [backend] value is refused, even
    with server-wide tables present."""
    npcs = tmp_path / "npcs"
    npcs.mkdir()
    npc = npcs / "mira.toml"
    npc.write_text('id = "mira"\nname = "Mira"\n[backend]\nfirst_token_ms = "slow"\n')
    path = _server_toml(tmp_path, "[overrides.scripted]\ntokens_per_second = 0\n")
    with pytest.raises(BackendConfigError, match=rf"^{npc}: .*first_token_ms"):
        prepare(load_config(path, env={}))


def test_a_start_up_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share one stdout pipe: print() wrote the newline apart (PYTHONUNBUFFERED),
    and two workers' lines ran together into one ("...questgiver)npc-server node ..."),
    so a reader counting them missed a worker (the cluster benchmark did, in CI)."""
    import sys

    from npc_server.serve import say_line

    writes: list[str] = []

    class Recorder:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    say_line("npc-server node abc on http://127.0.0.1:1")
    assert writes == ["npc-server node abc on http://127.0.0.1:1\n"]
