"""Action webhooks to a real game server on loopback: signed, retried, never in a turn's way."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from npc_server.config import Config, with_overrides
from npc_server.game_http import GameHttpError, HttpAnswer
from npc_server.npcs import NpcConfig, parse_npc
from npc_server.webhooks import WebhookSender
from tests.support.client import Frame, RawClient, connect
from tests.support.game_server import (
    WEBHOOK_SECRET,
    Answer,
    Received,
    running_game_server,
)
from tests.support.server import RunningServer, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

KEEPER = parse_npc(
    {
        "id": "keeper",
        "name": "Keeper",
        "actions": [
            {"name": "gift", "approval": False},
            {"name": "offer", "approval": True, "timeout_s": 0.05},
        ],
        "backend": {
            "kind": "scripted",
            "topics": [
                {"keywords": ["gift"], "replies": ["Here. [[gift item=apple]] Enjoy it."]},
                {"keywords": ["offer"], "replies": ["A map? [[offer item=map]] Yours."]},
                {
                    "keywords": ["ramble"],
                    "replies": ["Well. [[gift item=pebble]] " + "and so on " * 300],
                },
            ],
        },
    },
    "keeper.toml",
)
FAST = {"webhook_backoff_s": 0.01, "webhook_backoff_max_s": 0.02, "webhook_timeout_s": 2.0}


def game_config(url: str, **game: Any) -> Config:
    config = dataclasses.replace(server_config(), webhook_secret=WEBHOOK_SECRET)
    return with_overrides(config, game={"url": url, **FAST, **game})


@asynccontextmanager
async def keeper_server(url: str, **game: Any) -> AsyncIterator[tuple[RunningServer, RawClient]]:
    npcs: Mapping[str, NpcConfig] = {"keeper": KEEPER}
    async with (
        running_server(game_config(url, **game), npcs=npcs) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        yield server, client


async def ask(client: RawClient, text: str, say_id: int = 1) -> list[Frame]:
    await client.send({"t": "say", "id": say_id, "npc": "keeper", "text": text})
    return await client.recv_until(lambda f: f["t"] == "turn.end")


def sender(server: RunningServer) -> WebhookSender:
    return server.node.webhooks


def kinds(events: list[Received]) -> list[str]:
    return [e.json["event"] for e in events]


async def test_events_are_signed_as_the_game_checks_them() -> None:
    """Each event is a JSON POST to /events with an idempotency key and a valid signature."""
    async with running_game_server() as game, keeper_server(game.url) as (_server, client):
        frames = await ask(client, "a gift please")
        await wait_until(lambda: len(game.events) == 2, what="taken and done")
        taken, done = game.events
        assert kinds(game.events) == ["taken", "done"]
        action = next(f for f in frames if f["t"] == "action")
        body = taken.json
        assert body["action"] == {
            "id": action["action"],
            "name": "gift",
            "args": {"item": "apple"},
            "approval": False,
            "at": action["at"],
        }
        assert (body["turn"], body["npc"], body["player"]) == (action["turn"], "keeper", "alice")
        now = time.time()
        for event in game.events:
            assert event.path == "/events"
            assert event.headers["content-type"] == "application/json"
            assert event.headers["idempotency-key"] == event.json["id"]
            assert event.signed_by(WEBHOOK_SECRET, now)
            assert not event.signed_by("another-secret", now)
            assert not event.signed_by(WEBHOOK_SECRET, now + 3600)  # a stale replay
        assert taken.json["id"] != done.json["id"]


async def test_every_action_outcome_is_sent() -> None:
    """accepted, declined, expired and retracted each reach the game server."""
    async with running_game_server() as game, keeper_server(game.url) as (_server, client):
        for say_id, answer in ((1, True), (2, False)):
            frames = await ask(client, "an offer?", say_id)
            action = next(f for f in frames if f["t"] == "action")
            await client.send(
                {"t": "act", "id": 10 + say_id, "action": action["action"], "accept": answer}
            )
            await client.expect("action.end")
        await ask(client, "an offer?", 3)
        await client.expect("action.end")  # nobody answers: it expires
        await client.send({"t": "say", "id": 4, "npc": "keeper", "text": "ramble on"})
        action = await client.expect("action")
        await client.send({"t": "interrupt", "id": 5, "shown": 1})
        end = await client.expect("action.end")
        assert end["status"] == "retracted"
        await wait_until(lambda: len(game.events) == 8, what="eight events")
        assert kinds(game.events) == [
            *("taken", "accepted", "taken", "declined", "taken", "expired"),
            *("taken", "retracted"),
        ]
        assert game.events[-1].json["action"]["id"] == action["action"]
        # Who answered: named on accepted and declined, null on the rest (a room turn the
        # game started, where `player` is "", is tests/e2e/test_game_room_turns.py's).
        assert [e.json["answered_by"] for e in game.events] == [
            *(None, "alice", None, "alice", None, None),
            *(None, None),
        ]


async def test_failed_deliveries_are_retried_with_the_same_key() -> None:
    """5xx answers are retried with backoff until the game takes the event, once, same id."""
    async with (
        running_game_server() as game,
        keeper_server(game.url, webhook_workers=1) as (server, client),
    ):
        game.answer_events(Answer(500), Answer(503), Answer(429))
        await ask(client, "a gift")
        await wait_until(lambda: sender(server).statistics().delivered == 2, what="delivery")
        keys = [e.json["id"] for e in game.events]
        assert len(keys) == 5 and len(set(keys)) == 2  # three failures, then both delivered
        assert keys[:4] == [keys[0]] * 4  # one worker: in order, the first until delivered
        assert [e.json["seq"] for e in game.events] == [1, 1, 1, 1, 2]
        stats = sender(server).statistics()
        assert stats.retries == 3 and stats.dropped_failed == 0


async def test_events_are_dropped_after_the_retries_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A game server that keeps failing: each event is tried 1 + retries times, then dropped."""
    async with (
        running_game_server() as game,
        keeper_server(game.url, webhook_retries=2) as (
            server,
            client,
        ),
    ):
        game.answer_events(*[Answer(500)] * 6)
        with caplog.at_level(logging.WARNING, "npc_server.webhooks"):
            await ask(client, "a gift")
            await wait_until(lambda: sender(server).statistics().dropped_failed == 2, what="drops")
        assert len(game.events) == 6
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{server.http_url}/healthz")).json()
        assert health["webhooks"]["dropped_failed"] == 2 and health["webhooks"]["delivered"] == 0
        drops = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 2 and all(r.levelno == logging.WARNING for r in drops)
        assert "HTTP 500, after 3 attempts" in drops[0].getMessage()


async def test_a_rejected_event_is_not_retried() -> None:
    """A 4xx answer (other than 408/425/429) is final: dropped as rejected, not retried."""
    async with running_game_server() as game, keeper_server(game.url) as (server, client):
        game.answer_events(Answer(400, {"error": "no such item"}))
        await ask(client, "a gift")
        await wait_until(lambda: sender(server).statistics().delivered == 1, what="the second")
        stats = sender(server).statistics()
        assert stats.dropped_rejected == 1 and stats.retries == 0 and len(game.events) == 2


async def test_a_hanging_game_server_never_stalls_turns(caplog: pytest.LogCaptureFixture) -> None:
    """Webhooks held open by the game do not delay turns; past the queue bound they are dropped."""
    async with (
        running_game_server() as game,
        keeper_server(game.url, webhook_workers=1, webhook_queue=1, webhook_timeout_s=60) as (
            server,
            client,
        ),
    ):
        game.answer_events(*[Answer(hang=True)] * 10)
        for say_id in range(1, 4):
            frames = await ask(client, "a gift", say_id)
            assert frames[-1]["reason"] == "done"
            assert [f["status"] for f in frames if f["t"] == "action.end"] == ["done"]
        await wait_until(lambda: game.hanging == 1, what="one delivery held by the game")
        stats = sender(server).statistics()
        assert stats.queued == 1 and stats.dropped_full == 4
        logged = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
        assert len(logged) == 3  # drops 1, 2 and 4: counted each, logged sparsely


async def test_an_absent_game_server_never_stalls_turns() -> None:
    """Nothing listens at the URL: turns run as usual and events are dropped after retries."""
    async with running_game_server() as game:
        url = game.url  # the game server is gone once this block ends
    async with keeper_server(url, webhook_retries=1) as (server, client):
        frames = await ask(client, "a gift")
        assert frames[-1]["reason"] == "done"
        assert [f["status"] for f in frames if f["t"] == "action.end"] == ["done"]
        await wait_until(lambda: sender(server).statistics().dropped_failed == 2, what="drops")
        assert sender(server).statistics().retries == 2


def test_no_game_url_sends_nothing() -> None:
    """Without [game] url the sender is off and refuses events at once."""
    webhooks = WebhookSender(server_config().game, WEBHOOK_SECRET)
    assert not webhooks.enabled
    assert not webhooks.send_nowait({"id": "a:taken", "event": "taken"})
    assert webhooks.statistics().queued == 0


async def test_game_server_records_requests() -> None:
    """The test game server answers scripted statuses in order, then 200 (a sanity check)."""
    async with running_game_server() as server, httpx.AsyncClient() as http:
        server.answer_events(Answer(503))
        first = await http.post(f"{server.url}/events", content=b"{}")
        second = await http.post(f"{server.url}/events", content=b"{}")
        assert (first.status_code, second.status_code) == (503, 200)
        assert [e.body for e in server.events] == [b"{}", b"{}"]


async def test_backoff_doubles_up_to_its_cap() -> None:
    """Retries wait webhook_backoff_s, doubling each time, never over webhook_backoff_max_s."""
    game = {"url": "http://game.invalid", "webhook_retries": 5}
    settings = with_overrides(
        server_config(), game={**game, "webhook_backoff_s": 0.5, "webhook_backoff_max_s": 3.0}
    ).game
    waits: list[float] = []
    keys: list[str] = []

    async def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> HttpAnswer:
        keys.append(headers["Idempotency-Key"])
        raise GameHttpError("connection refused")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    webhooks = WebhookSender(settings, WEBHOOK_SECRET, post=post, sleep=sleep)
    webhooks.start()
    try:
        assert webhooks.send_nowait({"id": "a-1:taken", "event": "taken"})
        await webhooks.idle()
    finally:
        await webhooks.aclose()
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert keys == ["a-1:taken"] * 6
    assert webhooks.statistics().dropped_failed == 1
