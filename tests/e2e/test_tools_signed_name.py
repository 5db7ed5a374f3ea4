"""A game tool call names its tool in the signed body, and its name is one path segment.

The signature covers `"<t>.<body>"`, not the path: a captured call to
`/tools/check_purse` verified unchanged at `/tools/give_gold` for 300 s, since
nothing signed said which tool it was for. Each runs against the real test game
server on loopback.
"""

from __future__ import annotations

import time

import pytest

from npc_server.game_http import SIGNATURE_HEADER, verify_signature
from npc_server.npcs import ToolSpec, load_npcs
from npc_server.settings import GameSection
from npc_server.tools import ToolQuestion, ToolRouter
from tests.e2e.test_tools import purse, say, scout_server
from tests.support.game_server import WEBHOOK_SECRET, running_game_server
from tests.support.server import DEMO_NPCS

pytestmark = pytest.mark.e2e


async def test_the_signed_body_names_the_tool_of_the_path() -> None:
    """What the game server got for the merchant's `check_purse`: a signed body whose
    `tool` is the path's name, so a replay of it to another tool's path is told apart."""
    async with running_game_server() as game:
        game.tools["check_purse"] = purse(42)
        async with scout_server(game.url, npcs=load_npcs(DEMO_NPCS)) as (_server, client):
            await say(client, "merchant", "can I afford that?")
        [ask] = game.tool_calls
    assert ask.signed_by(WEBHOOK_SECRET, time.time())
    assert ask.path == "/tools/check_purse"
    assert ask.json["tool"] == ask.path.removeprefix("/tools/") == "check_purse"
    # The signature still verifies anywhere (it covers no path): the body is what says
    # it was meant for check_purse, and nothing signed can be changed to say otherwise.
    header = ask.headers[SIGNATURE_HEADER.lower()]
    forged = ask.body.replace(b'"tool":"check_purse"', b'"tool":"give_gold"')
    assert forged != ask.body
    assert not verify_signature(WEBHOOK_SECRET, header, forged, time.time())


async def test_a_tool_name_goes_into_the_url_as_one_segment() -> None:
    """A `?` in a name began the query (`/tools/check` was asked, and answered 404): the
    name is percent-encoded, so the game server routes the very name it was given."""
    async with running_game_server() as game:
        game.tools["check?purse"] = purse(7)
        router = ToolRouter(GameSection(url=game.url), WEBHOOK_SECRET)
        question = ToolQuestion("c-1", "check?purse", {}, "t-1", "merchant", "alice", None)
        answer = await router.ask(ToolSpec("check?purse"), question)
        [ask] = game.tool_calls
    assert answer == ("answered", {"gold": 7})
    assert ask.path == "/tools/check?purse" and ask.json["tool"] == "check?purse"
