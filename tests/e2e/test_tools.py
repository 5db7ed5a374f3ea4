"""NPC tools through a real server: answered by the game server or the client, timeouts, cuts."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from npc_server.backends.base import GenerationRequest, MemoryEntry
from npc_server.backends.scripted import ScriptedBackend
from npc_server.config import Config, with_overrides
from npc_server.npcs import NpcConfig, NpcConfigError, load_npcs, parse_npc
from npc_server.prompt import build_messages
from tests.backends.openai_stub import OpenAIStub, ToolCall, reply
from tests.support.client import Frame, RawClient, connect
from tests.support.game_server import WEBHOOK_SECRET, Answer, running_game_server
from tests.support.scout import scout
from tests.support.server import DEMO_NPCS, RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SCOUT = scout()


def game_config(url: str = "", **game: Any) -> Config:
    config = dataclasses.replace(server_config(), webhook_secret=WEBHOOK_SECRET)
    return with_overrides(config, game={"url": url, **game})


@asynccontextmanager
async def scout_server(
    url: str = "", npcs: dict[str, NpcConfig] | None = None, **game: Any
) -> AsyncIterator[tuple[RunningServer, RawClient]]:
    async with (
        running_server(game_config(url, **game), npcs=npcs or {"scout": SCOUT}) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        yield server, client


def text_of(frames: list[Frame]) -> str:
    return "".join(f["text"] for f in frames if f["t"] == "delta")


def tool_frames(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f["t"] in ("tool", "tool.end")]


async def say(client: RawClient, npc: str, text: str, say_id: int = 1) -> list[Frame]:
    await client.send({"t": "say", "id": say_id, "npc": npc, "text": text})
    return await client.recv_until(lambda f: f["t"] == "turn.end")


def purse(gold: int) -> Any:
    return lambda body: Answer(200, {"result": {"gold": gold}})


async def test_merchant_asks_the_game_for_the_purse() -> None:
    """A game tool: tool{} to the audience, a signed POST to /tools/<name>, the answer in the text."""
    async with running_game_server() as game:
        game.tools["check_purse"] = purse(42)
        npcs = load_npcs(DEMO_NPCS)
        async with scout_server(game.url, npcs=npcs) as (_server, client):
            frames = await say(client, "merchant", "can I afford that?")
        [ask] = game.tool_calls
        assert ask.path == "/tools/check_purse"
        assert ask.signed_by(WEBHOOK_SECRET, time.time())
        body = ask.json
        start, end = tool_frames(frames)
        assert (start["name"], start["answered_by"], start["args"]) == ("check_purse", "game", {})
        assert (end["call"], end["status"], end["turn"]) == (
            start["call"],
            "answered",
            start["turn"],
        )
        assert body == {
            "tool": "check_purse",  # signed, so the game can check it against the path
            "turn": start["turn"],
            "call": start["call"],
            "npc": "merchant",
            "player": "alice",
            "room": None,
            "args": {},
        }
        text = text_of(frames)
        assert "42 gold" in text and frames[-1]["reason"] == "done"
        assert frames.index(end) < max(i for i, f in enumerate(frames) if f["t"] == "delta")


async def test_without_a_game_server_the_merchant_falls_back() -> None:
    """No [game] url: the tool ends in error at once and the reply uses the NPC's defaults."""
    async with scout_server(npcs=load_npcs(DEMO_NPCS)) as (server, client):
        frames = await say(client, "merchant", "can I afford that?")
        assert [f["status"] for f in tool_frames(frames) if f["t"] == "tool.end"] == ["error"]
        assert "Some gold" in text_of(frames)
        memory = server.node.all_conversations()[0].memory.lines()
        assert [m.role for m in memory] == ["player", "tool", "npc"]
        assert "error" in memory[1].text


async def test_a_failing_game_tool_is_an_error() -> None:
    """A game server answering 500 (or no {result}) ends the call as error; the turn goes on."""
    async with running_game_server() as game:
        game.tools["weather"] = lambda body: Answer(500, {"oops": True})
        async with scout_server(game.url) as (_, client):
            frames = await say(client, "scout", "what is the weather?")
        assert [f["status"] for f in tool_frames(frames)[1:]] == ["error"]
        assert text_of(frames).endswith("The sky is grey.")


async def test_a_game_tool_result_nested_too_deep_is_an_error() -> None:
    """A result nested 300 levels (JSON allows it; no frame or model request can carry
    it: the turn failed) ends the call as error, and the turn goes on."""
    nested = b'{"result": ' + b"[" * 300 + b'"rain"' + b"]" * 300 + b"}"
    async with running_game_server() as game:
        game.tools["weather"] = lambda body: Answer(200, nested)
        async with scout_server(game.url) as (_, client):
            frames = await say(client, "scout", "what is the weather?")
        assert [f["status"] for f in tool_frames(frames)[1:]] == ["error"]
        assert text_of(frames).endswith("The sky is grey.") and frames[-1]["reason"] == "done"


async def test_a_tool_answered_by_the_client() -> None:
    """A client tool: only the speaker's tool.result answers; it is acked and the reply uses it."""
    async with (
        scout_server() as (server, alice),
        connect(server.url) as bob,
    ):
        await bob.hello(server.token("bob"))
        for client, join_id in ((alice, 1), (bob, 1)):
            await client.send({"t": "join", "id": join_id, "room": "camp"})
            await client.expect("ack")
        await alice.send(
            {"t": "say", "id": 2, "npc": "scout", "text": "what do I carry?", "room": "camp"}
        )
        ask = await alice.expect("tool")
        assert (await bob.expect("tool"))["call"] == ask["call"]  # the room sees the call
        await bob.send(
            {"t": "tool.result", "id": 3, "call": ask["call"], "result": {"item": "a rock"}}
        )
        error = await bob.expect("error")
        assert (error["code"], error["id"]) == ("unknown_call", 3)
        # A bytes key cannot go to the model as JSON: refused, and the call still waits.
        odd = {"item": {b"kind": "lantern"}}
        await alice.send({"t": "tool.result", "id": 6, "call": ask["call"], "result": odd})
        error = await alice.expect("error")
        assert (error["code"], error["id"]) == ("bad_frame", 6)
        result = {"item": "a lantern"}
        await alice.send({"t": "tool.result", "id": 4, "call": ask["call"], "result": result})
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        assert any(f["t"] == "ack" and f["id"] == 4 for f in frames)
        assert [f["status"] for f in frames if f["t"] == "tool.end"] == ["answered"]
        assert text_of(frames).endswith("You carry a lantern.")
        bob_frames = await bob.recv_until(lambda f: f["t"] == "turn.end")
        assert [f["status"] for f in bob_frames if f["t"] == "tool.end"] == ["answered"]
        memory = server.node.all_conversations()[0].memory.lines()
        assert memory[1].role == "tool" and memory[1].text == '{"item":"a lantern"}'
        await alice.send({"t": "tool.result", "id": 5, "call": ask["call"], "result": 1})
        assert (await alice.expect("error"))["code"] == "unknown_call"  # answered already


async def test_a_tool_result_without_a_result_answers_null() -> None:
    """protocol.md: `tool.result` with no `result` is the answer null, acked; the call
    ends `answered`, the reply goes on (a null result fills nothing: the defaults), and
    the NPC remembers `null`."""
    async with scout_server() as (server, alice):
        await alice.send({"t": "say", "id": 2, "npc": "scout", "text": "what do I carry?"})
        ask = await alice.expect("tool")
        await alice.send({"t": "tool.result", "id": 3, "call": ask["call"]})
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        assert any(f["t"] == "ack" and f["id"] == 3 for f in frames)
        assert [f["status"] for f in frames if f["t"] == "tool.end"] == ["answered"]
        assert text_of(frames).endswith("You carry nothing.") and frames[-1]["reason"] == "done"
        memory = server.node.all_conversations()[0].memory.lines()
        assert memory[1].role == "tool" and memory[1].text == "null"


async def test_a_tool_nobody_answers_times_out() -> None:
    """Past the tool's timeout_s the call ends as timeout and the reply goes on with defaults."""
    async with scout_server() as (server, client):
        frames = await say(client, "scout", "look around")
        assert [f["status"] for f in tool_frames(frames) if f["t"] == "tool.end"] == ["timeout"]
        assert text_of(frames).endswith("I see nothing.") and frames[-1]["reason"] == "done"
        assert server.node.tools.statistics().pending_client_calls == 0


async def test_interrupt_while_the_game_holds_a_tool_call() -> None:
    """An interrupt while a tool is pending: tool.end cancelled, turn.end, nothing after; the
    request to the game server goes away."""
    async with running_game_server() as game:
        game.tools["weather"] = lambda body: Answer(hang=True)
        async with scout_server(game.url) as (server, client):
            await client.send({"t": "say", "id": 1, "npc": "scout", "text": "weather?"})
            ask = await client.expect("tool")
            await wait_until(lambda: game.hanging == 1, what="the game holding the call")
            await client.send({"t": "interrupt", "id": 2})
            frames = await client.recv_until(lambda f: f["t"] == "turn.end")
            assert [(f["t"], f.get("status")) for f in tool_frames(frames)] == [
                ("tool.end", "cancelled")
            ]
            assert frames[-1]["reason"] == "interrupted"
            await client.send({"t": "ping", "id": 3})
            after = await client.recv_until(lambda f: f["t"] == "pong")
            assert not [f for f in after if f["t"] in ("delta", "tool.end")]
            assert frames[-1]["kept"] == len("Let me ask.")
            await wait_until(lambda: game.hanging == 0, what="the held request to go away")
            assert server.node.turns.turn_count == 0 and ask["turn"] == frames[-1]["turn"]


async def test_interrupt_while_the_client_owes_an_answer() -> None:
    """An interrupt while a client tool is pending cancels it; a late tool.result is unknown."""
    async with scout_server() as (server, client):
        await client.send({"t": "say", "id": 1, "npc": "scout", "text": "what do I carry"})
        ask = await client.expect("tool")
        await client.send({"t": "interrupt", "id": 2})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        assert [f.get("status") for f in tool_frames(frames)] == ["cancelled"]
        await client.send({"t": "tool.result", "id": 3, "call": ask["call"], "result": 1})
        assert (await client.expect("error"))["code"] == "unknown_call"
        assert server.node.tools.statistics().pending_client_calls == 0


async def test_the_model_calls_a_tool_and_continues_with_its_answer() -> None:
    """openai backend: a tool call pauses the reply, the answer goes back as a tool message in a
    second request, and that request's stream continues the turn."""
    async with running_game_server() as server_of_game, OpenAIStub() as stub:
        server_of_game.tools["check_purse"] = purse(7)
        stub.script(
            reply("Let me see. ", ToolCall("check_purse", ("{}",), id="call_purse")),
            reply("Seven gold, ", "enough for a potion."),
        )
        merchant = load_npcs(DEMO_NPCS)["merchant"]
        settings = {"base_url": stub.base_url, "model": "m", "first_token_timeout_s": 2.0}
        npcs = {"merchant": replace(merchant, backend="openai", backend_settings=settings)}
        async with scout_server(server_of_game.url, npcs=npcs) as (_, client):
            frames = await say(client, "merchant", "can I afford that?")
        assert text_of(frames) == "Let me see. Seven gold, enough for a potion."
        assert [f["status"] for f in frames if f["t"] == "tool.end"] == ["answered"]
        assert frames[-1]["usage"] == {"prompt": 24, "completion": 10}  # both requests
        first, second = (r.body for r in stub.requests)
        assert "check_purse" in [t["function"]["name"] for t in first["tools"]]
        *_, assistant, tool = second["messages"]
        assert assistant["role"] == "assistant" and assistant["content"] == "Let me see. "
        assert assistant["tool_calls"][0]["id"] == "call_purse"
        assert assistant["tool_calls"][0]["function"]["name"] == "check_purse"
        assert tool == {"role": "tool", "tool_call_id": "call_purse", "content": '{"gold":7}'}


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            {"name": "x", "answered_by": "server"},
            r"tools\[0\]: 'answered_by' must be one of 'game', 'client'",
        ),
        (
            {"name": "x", "timeout": 3},
            r"tools\[0\]: unknown key 'timeout' \(did you mean 'timeout_s'",
        ),
        ({"name": "x", "timeout_s": 0}, r"tools\[0\]: 'timeout_s' must be a number of seconds > 0"),
        ({"name": "wave"}, r"tools\[0\]: 'wave' is already an action or a tool"),
        ({"description": "no name"}, r"tools\[0\]: every \[\[tools\]\] entry needs a 'name'"),
    ],
)
def test_bad_tools_are_refused_naming_the_file_and_key(tool: dict[str, Any], message: str) -> None:
    """[[tools]] entries are checked like the rest of an NPC file."""
    doc = {"id": "n", "name": "N", "actions": [{"name": "wave"}], "tools": [tool]}
    with pytest.raises(NpcConfigError, match=r"^n\.toml tools\[0\]") as caught:
        parse_npc(doc, "n.toml")
    assert re.search(message, str(caught.value)), caught.value


def test_a_reply_marker_must_name_an_action_or_a_tool() -> None:
    """A scripted reply naming neither an action nor a tool is refused at start."""
    doc = {
        "id": "n",
        "name": "N",
        "tools": [{"name": "peek"}],
        "backend": {"topics": [{"keywords": ["x"], "replies": ["[[poke]]"]}]},
    }
    with pytest.raises(ValueError, match=r"'poke' is not one of .* or \[\[tools\]\] \['peek'\]"):
        ScriptedBackend(parse_npc(doc, "n.toml"), doc["backend"])  # type: ignore[arg-type]


async def test_tool_results_are_bounded_where_they_are_kept() -> None:
    """A big answer is cut to tool_result_chars in the NPC's memory (what a model would see)."""
    async with scout_server(tool_result_chars=40) as (server, client):
        await client.send({"t": "say", "id": 1, "npc": "scout", "text": "what do I carry"})
        ask = await client.expect("tool")
        result = {"item": "a sack of " + "very " * 500 + "heavy stones"}
        await client.send({"t": "tool.result", "call": ask["call"], "result": result})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        assert "You carry a sack of very very" in text_of(frames)
        line = server.node.all_conversations()[0].memory.lines()[1]
        assert line.role == "tool" and len(line.text) == 40 and line.text.endswith("…")


def test_remembered_tool_calls_go_back_to_the_model_as_tool_messages() -> None:
    """A tool line of memory becomes an assistant tool call and its tool answer in the prompt."""
    history = (
        MemoryEntry("player", "alice", "can I afford that?"),
        MemoryEntry("tool", "check_purse", '{"gold":7}', "c-1", "{}"),
        MemoryEntry("npc", "merchant", "Seven gold: yes."),
    )
    npc = load_npcs(DEMO_NPCS)["merchant"]
    messages = build_messages(GenerationRequest(npc, "alice", "and now?", history))
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    call = messages[2]["tool_calls"][0]
    assert (call["id"], call["function"]["name"]) == ("c-1", "check_purse")
    assert messages[3] == {"role": "tool", "tool_call_id": "c-1", "content": '{"gold":7}'}
    assert "check_purse" in messages[0]["content"]  # listed among the NPC's tools
