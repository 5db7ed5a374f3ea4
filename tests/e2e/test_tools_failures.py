"""Tool calls that fail: the turn goes on, each failure is counted by reason, and the log
has a line for the 1st, 2nd, 4th, 8th ... of each reason, never one per call.

A `[game] url` that cannot be used is put in the config past the settings' rules
(see test_webhooks_failures).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from npc_server.backends.base import GenerationRequest, Piece, TextPiece, ToolCallPiece
from npc_server.config import with_overrides
from tests.e2e.test_metrics import API_KEY, scrape, value
from tests.e2e.test_tools import SCOUT, game_config, say, text_of, tool_frames
from tests.e2e.test_webhooks_failures import config_with_game_url
from tests.support.client import connect
from tests.support.game_server import Answer, running_game_server
from tests.support.server import running_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "http://[invalid"], ids=["port-range", "bracket"]
)
async def test_an_unusable_game_url_ends_the_tool_call_in_error(url: str) -> None:
    async with (
        running_server(config_with_game_url(url), npcs={"scout": SCOUT}) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        frames = await say(client, "scout", "what is the weather?")
        assert [f["status"] for f in tool_frames(frames)[1:]] == ["error"]
        assert text_of(frames).endswith("The sky is grey.") and frames[-1]["reason"] == "done"
        assert server.node.tools.statistics().errors == 1
        assert server.node.tools.statistics().failures["game_failed"] == 1


class CallingBackend:
    """A backend gone wrong: one turn asks for a tool the NPC does not have five
    times, and three times for `weather`, which the game server answers with a 500."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        for name in ["summon_dragon"] * 5 + ["weather"] * 3:
            call = ToolCallPiece(name, {})
            yield call
            yield TextPiece(f"{call.answer.status} ")

    async def aclose(self) -> None:
        return None


def counted(line: str) -> int:
    """The count a sparse line ends with: `... (4 so far for this reason)`."""
    count, found, _ = line.rpartition("(")[2].partition(" so far for this reason)")
    assert found, line
    return int(count)


async def test_failed_calls_are_counted_by_reason_and_logged_sparsely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Five unknown-tool calls log the 1st, 2nd and 4th; three bad answers the 1st and
    2nd, each with the count so far; /healthz and /metrics count all eight by reason."""
    async with running_game_server() as game:
        game.tools["weather"] = lambda body: Answer(500, {"oops": True})
        config = with_overrides(game_config(game.url), metrics={"enabled": True})
        config = dataclasses.replace(config, api_key=API_KEY)
        backends = {"scout": CallingBackend()}
        async with (
            running_server(config, npcs={"scout": SCOUT}, backends=backends) as server,
            connect(server.url) as client,
        ):
            await client.hello(server.token("alice"))
            with caplog.at_level(logging.WARNING, "npc_server.tools"):
                frames = await say(client, "scout", "anything")
            assert text_of(frames) == "error " * 8 and frames[-1]["reason"] == "done"
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{server.http_url}/healthz")).json()
            samples = await scrape(server.http_url)
    lines = [r.getMessage() for r in caplog.records if r.name == "npc_server.tools"]
    unknown = [line for line in lines if "unknown tool 'summon_dragon'" in line]
    bad = [line for line in lines if "without a JSON {result}" in line]
    assert len(lines) == len(unknown) + len(bad) == 5
    assert [counted(line) for line in unknown] == [1, 2, 4]
    assert [counted(line) for line in bad] == [1, 2]
    failures = health["tools"]["failures"]
    assert (failures["unknown_tool"], failures["bad_answer"], failures["timeout"]) == (5, 3, 0)
    assert len(game.tool_calls) == 3
    for reason, count in (("unknown_tool", 5), ("bad_answer", 3), ("game_failed", 0)):
        assert value(samples, "npc_server_tool_failures_total", reason=reason) == count
