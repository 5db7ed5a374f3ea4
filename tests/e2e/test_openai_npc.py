"""An NPC on the `openai` backend, through a real server: stream, act, cut, fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from npc_server.npcs import NpcConfig, load_npcs
from tests.backends.openai_stub import (
    EndlessScenario,
    ErrorScenario,
    OpenAIStub,
    ToolCall,
    reply,
)
from tests.support.client import connect
from tests.support.server import DEMO_NPCS, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with OpenAIStub() as server:
        yield server


def llm_npcs(stub: OpenAIStub) -> dict[str, NpcConfig]:
    """The demo merchant, pointed at the stub model server."""
    npcs = load_npcs(DEMO_NPCS)
    settings = {"base_url": stub.base_url, "model": "test-model", "first_token_timeout_s": 2.0}
    return {"merchant": replace(npcs["merchant"], backend="openai", backend_settings=settings)}


async def test_llm_npc_streams_text_actions_and_usage(stub: OpenAIStub) -> None:
    """Content deltas stream as turn text, a tool call becomes an action at its offset, usage lands in turn.end."""
    stub.script(
        reply("Take a look. ", ToolCall("open_shop", ('{"sec', 'tion": "potions"}')), "Fine wares!")
    )
    async with running_server(npcs=llm_npcs(stub)) as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "context", "data": {"location": "market"}})
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "what do you sell?"})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        text = "".join(f["text"] for f in frames if f["t"] == "delta")
        assert text == "Take a look. Fine wares!"
        [action] = [f for f in frames if f["t"] == "action"]
        assert (action["name"], action["args"], action["at"]) == (
            "open_shop",
            {"section": "potions"},
            13,
        )
        end = frames[-1]
        assert (end["reason"], end["chars"], end["usage"]) == (
            "done",
            24,
            {"prompt": 12, "completion": 5},
        )
        body = stub.requests[0].body
        assert body["messages"][-1]["content"].endswith("what do you sell?")
        assert "market" in body["messages"][0]["content"]


async def test_interrupt_closes_the_upstream_stream_at_once(stub: OpenAIStub) -> None:
    """interrupt over the socket ends the turn and the model server sees its client leave."""
    stub.default = EndlessScenario()
    async with running_server(npcs=llm_npcs(stub)) as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "sing"})
        await client.recv_until(lambda f: f["t"] == "delta" and f["at"] > 30)
        await client.send({"t": "interrupt"})
        sent_at = time.monotonic()
        end = await client.expect("turn.end")
        assert end["reason"] == "interrupted"
        request = stub.requests[0]
        await asyncio.wait_for(request.gone.wait(), 1.0)
        assert request.gone_at is not None
        assert request.gone_at - sent_at < 0.1  # milliseconds in practice; generous for CI
        await asyncio.wait_for(stub.no_connections(), 1.0)


async def test_upstream_failure_is_a_backend_error_and_other_turns_go_on(stub: OpenAIStub) -> None:
    """A 500 from the model ends the turn with error and backend_error; the next turn works."""
    stub.script(
        ErrorScenario(500, "model crashed"),
        ErrorScenario(500, "again"),
        ErrorScenario(500, "and again"),
    )
    async with running_server(npcs=llm_npcs(stub)) as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "hello"})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        error = next(f for f in frames if f["t"] == "error")
        assert (error["code"], error["id"]) == ("backend_error", 1)
        assert "500" in error["message"]
        assert frames[-1]["reason"] == "error"
        await client.send({"t": "say", "id": 2, "npc": "merchant", "text": "hello again"})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
        assert frames[-1]["reason"] == "done"
        assert server.node.limiter.active == 0
