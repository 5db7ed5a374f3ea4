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
from npc_server.backends import Backend
from npc_server.config import load_config, with_overrides
from npc_server.serve import make_listener, prepare, tune_gc
from tests.backends.openai_stub import OpenAIStub, reply
from tests.support.client import connect
from tests.support.server import running_server, server_config


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
