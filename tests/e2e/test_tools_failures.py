"""A game tool behind a `[game] url` that cannot be used: the call ends in error, the turn goes on.

The URL is put in the config past the settings' rules (see test_webhooks_failures).
"""

from __future__ import annotations

import pytest

from tests.e2e.test_tools import SCOUT, say, text_of, tool_frames
from tests.e2e.test_webhooks_failures import config_with_game_url
from tests.support.client import connect
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
