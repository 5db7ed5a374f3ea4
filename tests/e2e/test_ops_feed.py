"""`GET /ops/events` on a real server: an operator's live feed of node events."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from npc_server.protocol.codes import CloseCode
from tests.support.client import connect
from tests.support.server import running_server, server_config
from tests.support.sse import data, watch

pytestmark = pytest.mark.e2e

KEY = "ops-test-key-0123456789"


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_the_feed_shows_turns_with_timings_and_closes_with_codes() -> None:
    """A turn's start and end (reason, timings) and closes with their codes, live."""
    config = server_config(scripted={"tokens_per_second": 40, "long_reply_chars": 2000})
    async with running_server(replace(config, api_key=KEY)) as server:
        async with watch(server.http_url, "/ops/events", headers=bearer()) as feed:
            assert feed.status == 200
            hello = await feed.next()
            assert hello.event == "feed" and data(hello)["node"] == server.node.node_id
            async with connect(server.url) as alice:
                await alice.hello(server.token("alice"))
                await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "hi"})
                await alice.expect("delta")
                await alice.send({"t": "interrupt", "id": 2})
                await alice.expect("turn.end")
            async with connect(server.url) as mallory:
                await mallory.send({"t": "hello", "token": "forged"})
                assert await mallory.close_code() == CloseCode.AUTH_FAILED
            got = await feed.until(lambda e: e.event == "closed" and data(e)["code"] is not None)
        kinds = [e.event for e in got]
        assert kinds[:5] == ["connected", "session", "turn_started", "turn_ended", "closed"]
        started, ended = data(got[2]), data(got[3])
        assert ended["turn"] == started["turn"] and ended["reason"] == "interrupted"
        assert ended["first_delta_s"] is not None and ended["interrupt_s"] is not None
        assert data(got[4])["peer_code"] == CloseCode.NORMAL
        assert "auth_failed" in kinds
        assert data(got[-1])["code"] == CloseCode.AUTH_FAILED


async def test_without_a_key_the_feed_does_not_exist() -> None:
    """No NPC_SERVER_API_KEY: 404, whatever the request carries."""
    async with running_server(replace(server_config(), api_key=None)) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            for headers in ({}, bearer(), bearer("x")):
                response = await http.get("/ops/events", headers=headers)
                assert response.status_code == 404


async def test_a_missing_or_wrong_key_is_401() -> None:
    """A wrong key, another scheme or none at all: 401 with a Bearer challenge, an
    auth failure and no connection (they were counted as connections, never closed)."""
    from npc_server.events import AuthFailed, Connected, NodeEvent

    async with running_server(replace(server_config(), api_key=KEY)) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            wrong = [{}, bearer("nope"), bearer(KEY + "x"), {"Authorization": f"Basic {KEY}"}]
            for headers in wrong:
                response = await http.get("/ops/events", headers=headers)
                assert response.status_code == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert not [e for e in events if isinstance(e, Connected)]
        assert len([e for e in events if isinstance(e, AuthFailed)]) == len(wrong)


async def test_ops_requests_take_from_the_address_connect_bucket() -> None:
    """Guessing the API key costs connects: past the address's burst, 429."""
    config = replace(
        server_config(limits={"connects_burst_address": 2, "connects_per_s_address": 0.001}),
        api_key=KEY,
    )
    async with running_server(config) as server:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            codes = [
                (await http.get("/ops/events", headers=bearer("x"))).status_code for _ in range(3)
            ]
        assert codes == [401, 401, 429]
