"""Log lines of a real server: the command with --log-format json, and in-process detail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from npc_server.backends import GenerationError, GenerationRequest, Piece, TextPiece
from npc_server.protocol.codes import CloseCode
from tests.support.client import connect
from tests.support.server import (
    ServerProcess,
    running_server,
    server_config,
    start_server_process,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every log line so far, parsed; all but the listening line must be JSON."""
    lines = [line for line in server.output if line and "listening on http" not in line]
    return [json.loads(line) for line in lines]


def with_message(server: ServerProcess, message: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(server) if r["message"] == message]


@pytest.fixture
def json_server() -> Iterator[ServerProcess]:
    server = start_server_process(args=["--log-format", "json"])
    try:
        yield server
    finally:
        server.kill()


async def test_the_command_logs_each_event_as_one_json_object(json_server: ServerProcess) -> None:
    """connect, auth failure (why), session (outcome), turn end (timings), close (code)."""
    server = json_server
    bad = server.token("mallory")[:-4] + "AAAA"  # a real-looking token, badly signed
    async with connect(server.url) as mallory:
        await mallory.send({"t": "hello", "token": bad})
        assert await mallory.close_code() == CloseCode.AUTH_FAILED
    async with connect(server.url) as alice:
        welcome = await alice.hello(server.token("alice"))
        await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "what wares?"})
        await alice.expect("delta")
        await alice.send({"t": "interrupt", "id": 2})
        await alice.expect("turn.end")
    await wait_until(lambda: len(with_message(server, "closed")) == 2, what="two close lines")
    [failed] = with_message(server, "auth failed")
    assert failed["code"] == 4500 and failed["reason"] and failed["level"] == "INFO"
    assert len(with_message(server, "connected")) == 2
    [attached] = with_message(server, "session attached")
    assert (attached["player"], attached["session"]) == ("alice", welcome["session"])
    assert attached["outcome"] == "new"
    [turn] = with_message(server, "turn ended")
    assert (turn["npc"], turn["player"], turn["reason"]) == ("merchant", "alice", "interrupted")
    assert turn["turn"].startswith("t-") and turn["kept"] <= turn["chars"]
    assert 0 <= turn["first_delta_s"] <= turn["duration_s"] and turn["interrupt_s"] >= 0
    refused, left = with_message(server, "closed")
    assert (refused["code"], refused["session"]) == (4500, None)
    assert (left["code"], left["peer_code"], left["session"]) == (None, 1000, welcome["session"])
    assert bad not in "\n".join(server.output)


def test_each_start_up_line_appears_once() -> None:
    """The development warning and the listening line are written once each; so is the
    warning that a game URL without a webhook secret gets unsigned requests."""
    env = {"NPC_SERVER_SECRET": "", "NPC_SERVER_GAME_URL": "http://127.0.0.1:9"}
    server = start_server_process(env=env)
    try:
        server.terminate()
    finally:
        server.kill()
    out = "\n".join(server.output)
    assert out.count("DEVELOPMENT MODE") == 1
    assert out.count("without NPC_SERVER_WEBHOOK_SECRET: webhooks and tool calls") == 1
    assert out.count("listening on http") == 1 and "Running on" not in out


def test_a_signed_game_url_starts_without_the_unsigned_warning() -> None:
    """With the webhook secret set, no such warning."""
    env = {"NPC_SERVER_GAME_URL": "http://127.0.0.1:9", "NPC_SERVER_WEBHOOK_SECRET": "s" * 32}
    server = start_server_process(env=env)
    try:
        server.terminate()
    finally:
        server.kill()
    out = "\n".join(server.output)
    assert "listening on http" in out and "WEBHOOK_SECRET" not in out


class FailingBackend:
    """Says a word, then fails like a model server that went away."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        yield TextPiece("Halt")
        raise GenerationError("the model server went away")

    async def aclose(self) -> None:
        return None


async def test_backend_errors_are_warnings_with_npc_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed generation is one WARNING on npc_server.backends (not an ERROR)."""
    caplog.set_level("INFO")
    async with running_server(server_config(), backends={"guard": FailingBackend()}) as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"))
            await alice.send({"t": "say", "id": 1, "npc": "guard", "text": "let me in"})
            await alice.expect("turn.end")
    [record] = [r for r in caplog.records if r.name == "npc_server.backends"]
    assert record.levelname == "WARNING" and record.getMessage() == "backend error"
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["npc"], fields["backend"], fields["reason"]) == ("guard", "scripted", "error")
    assert fields["message"] == "the model server went away"


async def test_a_failed_resume_logs_its_outcome(caplog: pytest.LogCaptureFixture) -> None:
    """A resume of a session the node no longer holds logs outcome=snapshot."""
    caplog.set_level("INFO")
    async with running_server() as server:
        async with connect(server.url) as alice:
            await alice.hello(server.token("alice"), resume={"session": "s-gone-1", "seq": 4})
    [record] = [r for r in caplog.records if r.getMessage() == "session attached"]
    assert record.fields["outcome"] == "snapshot"  # type: ignore[attr-defined]
