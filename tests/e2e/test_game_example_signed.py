"""examples/game_server answers a signed request only at the path its body was signed for.

The signature covers `"<t>.<body>"`, not the path: the example checks that a tool
call's body names the tool of its path, and that an event's body is an action
event, so a captured signed request replayed to another path within the 300 s
tolerance is refused. The bodies are npc-server's own (`ToolQuestion.body`,
`action_event`), signed as npc-server signs them, sent to the example served by
Hypercorn on loopback.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from npc_server.game_http import SIGNATURE_HEADER, signature
from npc_server.tools import ToolQuestion
from npc_server.turns import ActionNotice
from npc_server.webhooks import action_event
from tests.e2e.test_game_example import example
from tests.support.game_server import API_KEY, WEBHOOK_SECRET, serving

pytestmark = pytest.mark.e2e


def signed(body: bytes) -> dict[str, str]:
    header = signature(WEBHOOK_SECRET, body, int(time.time()))
    return {SIGNATURE_HEADER: header, "Content-Type": "application/json"}


def tool_call(name: str) -> bytes:
    return ToolQuestion("c-1", name, {}, "t-1", "merchant", "alice", None).body()


async def test_the_example_answers_a_tool_call_only_for_the_tool_it_names() -> None:
    """A call signed for another tool (or for none: a body that names no tool) is a 400 at
    /tools/check_purse; one signed for check_purse is answered from the game's data."""
    app = example().create_game("http://127.0.0.1:9", API_KEY, WEBHOOK_SECRET)
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as http:
        url = f"http://127.0.0.1:{port}/tools/check_purse"
        own = tool_call("check_purse")
        answer = await http.post(url, content=own, headers=signed(own))
        assert (answer.status_code, answer.json()) == (200, {"result": {"gold": 42}})
        for body in (tool_call("give_gold"), own.replace(b'"tool":"check_purse",', b"")):
            refused = await http.post(url, content=body, headers=signed(body))
            assert refused.status_code == 400, body


async def test_the_example_applies_only_action_events_at_events() -> None:
    """A signed tool call replayed to /events is refused; an action event is applied."""
    app = example().create_game("http://127.0.0.1:9", API_KEY, WEBHOOK_SECRET)
    notice = ActionNotice(
        "done", "a-1", "give_item", {"item": "apple"}, False, 3, "t-1", "merchant", "alice", None
    )
    event = orjson.dumps(action_event(notice, time.time()))
    async with serving(app) as port, httpx.AsyncClient(timeout=10) as http:
        base = f"http://127.0.0.1:{port}"
        call = tool_call("check_purse")
        refused = await http.post(f"{base}/events", content=call, headers=signed(call))
        assert refused.status_code == 400
        taken = await http.post(f"{base}/events", content=event, headers=signed(event))
        assert taken.status_code == 200
        state = (await http.get(f"{base}/players/alice")).json()
        assert state["inventory"] == ["apple"]
