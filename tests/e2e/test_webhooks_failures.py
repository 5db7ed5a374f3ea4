"""Webhooks that cannot be delivered: counted and logged, never a dead worker or a failed stop.

A `[game] url` that cannot be used (a port out of range, an unclosed `[`) is
put in the config as it is, past the settings' rules: whatever they refuse at
start-up, the sender must survive one that gets through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping

import httpx
import pytest

from npc_server.config import Config, with_overrides
from npc_server.game_http import HttpAnswer, post_json
from npc_server.webhooks import WebhookSender
from tests.support.client import connect
from tests.support.game_server import WEBHOOK_SECRET, running_game_server
from tests.support.redis import free_port
from tests.support.server import running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

WAIT = 10.0


def config_with_game_url(url: str) -> Config:
    config = with_overrides(
        dataclasses.replace(server_config(), webhook_secret=WEBHOOK_SECRET),
        game={"webhook_retries": 3, "webhook_backoff_s": 0.01, "webhook_backoff_max_s": 0.02},
    )
    return dataclasses.replace(config, game=dataclasses.replace(config.game, url=url))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999", "http://[invalid"], ids=["port-range", "bracket"]
)
async def test_an_unusable_game_url_drops_events_and_the_server_stops_cleanly(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard points the way: `taken` and `done` are dropped as failed at once (no
    retry can help), logged and in /healthz; the server then stops without an error."""
    with caplog.at_level(logging.WARNING, "npc_server.webhooks"):
        async with running_server(config_with_game_url(url)) as server:
            webhooks = server.node.webhooks
            async with connect(server.url) as client:
                await client.hello(server.token("alice"))
                await client.send(
                    {"t": "say", "id": 1, "npc": "guard", "text": "which way to the market?"}
                )
                frames = await client.recv_until(lambda f: f["t"] == "turn.end")
            assert [f["status"] for f in frames if f["t"] == "action.end"] == ["done"]
            await wait_until(lambda: webhooks.statistics().dropped_failed == 2, WAIT, "drops")
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{server.http_url}/healthz")).json()
            counts = health["webhooks"]
            assert counts["dropped_failed"] == 2 and counts["retries"] == 0
            assert all(not worker.done() for worker in webhooks._workers)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 2 and "unusable URL" in drops[0] and "not retried" in drops[0]


@pytest.mark.server_errors("a delivery that raises what it should not, on purpose")
async def test_a_worker_survives_a_delivery_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one delivery drops that event (counted, ERROR with its traceback); the
    same worker delivers the next, and closing does not raise."""
    settings = with_overrides(
        server_config(), game={"url": "http://game.invalid", "webhook_workers": 1}
    ).game
    posts: list[str] = []

    async def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        posts.append(headers["Idempotency-Key"])
        if len(posts) == 1:
            raise RuntimeError("a bug in the first delivery")
        return HttpAnswer(200, b"")

    webhooks = WebhookSender(settings, WEBHOOK_SECRET, post=post)
    webhooks.start()
    try:
        with caplog.at_level(logging.ERROR, "npc_server.webhooks"):
            assert webhooks.send_nowait({"id": "a-1:taken", "event": "taken"})
            assert webhooks.send_nowait({"id": "a-1:done", "event": "done"})
            async with asyncio.timeout(WAIT):
                await webhooks.idle()
        stats = webhooks.statistics()
        assert (stats.delivered, stats.dropped_failed, posts) == (1, 1, ["a-1:taken", "a-1:done"])
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "a-1:taken" in error.getMessage() and error.exc_info is not None
    finally:
        await webhooks.aclose()


@pytest.mark.server_errors("a delivery that raises what it should not, on purpose")
async def test_a_crashed_delivery_is_counted_in_healthz(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery that crashes is a bug: /healthz counts it under `webhooks.bugs` (and in
    `dropped_failed`), apart from the game server's failures; the next event still
    reaches the game server."""
    async with (
        running_game_server() as game,
        running_server(config_with_game_url(game.url)) as server,
    ):
        webhooks = server.node.webhooks
        posted: list[str] = []

        async def crash_first(
            url: str, body: bytes, headers: Mapping[str, str], timeout: float
        ) -> HttpAnswer:
            posted.append(headers["Idempotency-Key"])
            if len(posted) == 1:
                raise RuntimeError("a bug in the first delivery")
            return await post_json(url, body, headers, timeout)

        monkeypatch.setattr(webhooks, "_post", crash_first)
        async with connect(server.url) as client:
            await client.hello(server.token("alice"))
            await client.send(
                {"t": "say", "id": 1, "npc": "guard", "text": "which way to the market?"}
            )
            await client.recv_until(lambda f: f["t"] == "turn.end")  # `taken` and `done` sent
        async with asyncio.timeout(WAIT):
            await webhooks.idle()
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{server.http_url}/healthz")).json()
    counts = health["webhooks"]
    assert (counts["bugs"], counts["dropped_failed"], counts["delivered"]) == (1, 1, 1)
    assert len(posted) == 2 and counts["retries"] == 0
    assert [event.json["id"] for event in game.events] == posted[1:]  # the one not crashed
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "(1 so far)" in error.getMessage()


async def test_the_url_in_a_drop_line_has_no_password(caplog: pytest.LogCaptureFixture) -> None:
    """A game URL with credentials is logged with the password masked."""
    port = free_port()  # nothing listens there: refused, retried, dropped
    config = config_with_game_url(f"http://game:s3cretpw@127.0.0.1:{port}")
    webhooks = WebhookSender(config.game, WEBHOOK_SECRET)
    webhooks.start()
    try:
        with caplog.at_level(logging.WARNING, "npc_server.webhooks"):
            assert webhooks.send_nowait({"id": "a-1:taken", "event": "taken"})
            async with asyncio.timeout(WAIT):
                await webhooks.idle()
        [drop] = [r.getMessage() for r in caplog.records]
        assert "s3cretpw" not in drop and f"http://game:***@127.0.0.1:{port}/events" in drop
    finally:
        await webhooks.aclose()
