"""The server API under /api/ over real HTTP: auth, each endpoint, errors that name the field."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from npc_server.app import create_app
from npc_server.backends.base import GenerationRequest
from npc_server.config import Config, with_overrides
from npc_server.contexts import TrustedContexts
from npc_server.npcs import NpcConfig
from npc_server.prompt import build_messages
from npc_server.protocol.codes import CloseCode
from tests.support.client import RawClient, connect, refused_hello
from tests.support.game_server import API_KEY
from tests.support.server import RunningServer, running_server, server_config
from tests.support.sse import data, watch

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"tokens_per_second": 200, "long_reply_chars": 4000}


def api_config(
    api_key: str | None = API_KEY, game: Mapping[str, Any] | None = None, **kwargs: Any
) -> Config:
    """The test config with the API key (and [game] settings) set."""
    config = dataclasses.replace(server_config(**kwargs), api_key=api_key)
    return with_overrides(config, game=dict(game or {})) if game else config


@asynccontextmanager
async def api_server(
    config: Config | None = None,
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    async with (
        running_server(config or api_config()) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        yield server, http


async def player(server: RunningServer, client: RawClient, name: str, room: str | None) -> None:
    await client.hello(server.token(name))
    if room is not None:
        await client.send({"t": "join", "id": 1, "room": room})
        await client.expect("ack")


async def test_api_is_404_without_a_key() -> None:
    """With no NPC_SERVER_API_KEY every /api/ path is 404, even with a bearer header."""
    async with api_server(api_config(api_key=None)) as (_, http):
        for path in ("/api/tokens", "/api/say"):
            answer = await http.post(path, json={"player": "alice"}, headers=AUTH)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
        assert (await http.get("/api/openapi.json")).status_code == 404


async def test_missing_or_wrong_key_is_401() -> None:
    """No header, another scheme, or a wrong key: 401 with a JSON error, nothing done."""
    async with api_server() as (server, http):
        for headers in (
            {},
            {"Authorization": f"Basic {API_KEY}"},
            {"Authorization": "Bearer wrong-key"},
            {"Authorization": f"Bearer {API_KEY}x"},
        ):
            answer = await http.post("/api/tokens", json={"player": "alice"}, headers=headers)
            assert answer.status_code == 401, headers
            assert answer.json()["error"]["code"] == "unauthorized"
        answer = await http.get("/api/rooms/tavern", headers={"Authorization": "Bearer nope"})
        assert answer.status_code == 401
        assert server.node.statistics().sessions == 0


async def test_tokens_admit_the_player_on_the_socket() -> None:
    """POST /api/tokens issues a token that the WebSocket accepts for that player."""
    async with api_server() as (server, http), connect(server.url) as client:
        answer = await http.post("/api/tokens", json={"player": "alice", "ttl": 60}, headers=AUTH)
        assert answer.status_code == 200
        body = answer.json()
        assert body["player"] == "alice" and body["expires_in"] == 60
        welcome = await client.hello(body["token"])
        assert welcome["player"] == "alice"


@pytest.mark.parametrize(
    ("path", "body", "status", "names"),
    [
        ("/api/tokens", {"player": 5}, 400, "'player'"),
        ("/api/tokens", {}, 400, "'player'"),
        ("/api/tokens", {"player": "alice", "ttl": -1}, 400, "'ttl'"),
        ("/api/tokens", {"player": "alice", "tll": 60}, 400, "'tll'"),
        ("/api/say", {"npc": "guard"}, 400, "'player' and 'room'"),
        ("/api/say", {"npc": "nobody", "room": "r"}, 404, "'npc'"),
        ("/api/say", {"npc": "guard", "room": "bad room!"}, 400, "'room'"),
        ("/api/say", {"npc": "guard", "player": "ghost", "text": "hi"}, 409, "'player'"),
        ("/api/say", {"npc": "guard", "room": "nowhere", "text": "hi"}, 404, "'room'"),
        ("/api/context", {"player": "alice", "data": [1]}, 400, "'data'"),
        ("/api/interrupt", {"turn": "t-nope"}, 404, "'turn'"),
        ("/api/interrupt", {}, 400, "'turn'"),
    ],
)
async def test_bad_bodies_name_the_field(
    path: str, body: dict[str, Any], status: int, names: str
) -> None:
    """A wrong, missing or unknown field gets a JSON error whose message names it."""
    async with api_server() as (_, http):
        answer = await http.post(path, json=body, headers=AUTH)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert set(error) >= {"code", "message"}
        assert names in error["message"]


async def test_bodies_that_are_not_json_objects_are_400() -> None:
    """Not JSON, or JSON that is not an object, is a 400 saying what a body must be."""
    async with api_server() as (_, http):
        for content in (b"{nope", b"[1, 2]"):
            answer = await http.post("/api/tokens", content=content, headers=AUTH)
            assert answer.status_code == 400
            assert "JSON object" in answer.json()["error"]["message"]
        answer = await http.post("/api/nothing-here", json={}, headers=AUTH)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        big = {"player": "alice", "data": {"notes": "x" * 70_000}}
        answer = await http.post("/api/context", json=big, headers=AUTH)
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_large"


async def test_openapi_describes_every_endpoint() -> None:
    """/api/openapi.json is an OpenAPI 3.1 document listing every route of the API: the
    app's own routes under /api/ (a route added without a description fails this)."""
    async with api_server() as (server, http):
        doc = (await http.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    app = create_app(server.config, node=server.node)
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # `<player:player>`: `{player}`
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") and rule.rule != "/api/openapi.json"
    }
    assert set(doc["paths"]) == routes
    assert {"/api/kick", "/api/unban", "/api/players/{player}"} <= routes


async def test_game_caused_turn_reaches_the_whole_room() -> None:
    """POST /api/say to a room: every member sees a turn.start saying the game caused it."""
    async with (
        api_server() as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await player(server, alice, "alice", "gate")
        await player(server, bob, "bob", "gate")
        body = {"npc": "guard", "room": "gate", "event": "theft", "text": "A thief at the gate!"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        turn = answer.json()["turn"]
        for client in (alice, bob):
            frames = await client.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == turn)
            start = next(f for f in frames if f["t"] == "turn.start")
            assert (start["caused_by"], start["event"], start["room"]) == ("game", "theft", "gate")
            assert "reply_to" not in start
            text = "".join(f["text"] for f in frames if f["t"] == "delta")
            assert frames[-1]["reason"] == "done" and len(text) == frames[-1]["chars"] > 0


async def test_game_caused_turn_to_one_player() -> None:
    """POST /api/say to a player streams the turn to that player's socket."""
    async with api_server() as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", None)
        body = {"npc": "merchant", "player": "alice", "event": "greet"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        turn = answer.json()["turn"]
        start = await alice.expect("turn.start")
        assert start["turn"] == turn and start["player"] == "alice"
        assert start["caused_by"] == "game" and start["event"] == "greet"
        await alice.recv_until(lambda f: f["t"] == "turn.end")


async def test_trusted_context_wins_over_the_client() -> None:
    """Game state from POST /api/context overrides what the client says it is."""
    async with api_server() as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", None)
        await alice.send({"t": "context", "id": 2, "data": {"time": "day"}})
        await alice.expect("ack")
        body = {"player": "alice", "npc": "merchant", "data": {"time": "night"}}
        answer = await http.post("/api/context", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        await alice.send({"t": "say", "id": 3, "npc": "merchant", "text": "what do you sell?"})
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        text = "".join(f["text"] for f in frames if f["t"] == "delta")
        night = ("Stall's shut", "At this hour?")
        assert any(line in text for line in night), text


async def test_the_game_mints_watch_tokens_for_spectators() -> None:
    """POST /api/watch-tokens: the game gets a watch token without the server's secret;
    it opens exactly its rooms' streams (another room is 403), for `ttl` seconds."""
    async with api_server() as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", "hall")
        body = {"rooms": ["hall", "gate", "hall"], "ttl": 120}
        answer = await http.post("/api/watch-tokens", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        minted = answer.json()
        assert minted["rooms"] == ["hall", "gate"] and minted["expires_in"] == 120
        assert answer.headers["cache-control"] == "no-store"
        async with watch(server.http_url, params={"room": "hall", "token": minted["token"]}) as w:
            assert w.status == 200
            live = await w.next()
            assert live.event == "live" and data(live)["room"] == "hall"
        token = minted["token"]
        async with watch(server.http_url, params={"room": "cellar", "token": token}) as w:
            assert w.status == 403
        default = await http.post("/api/watch-tokens", json={"rooms": ["hall"]}, headers=AUTH)
        assert default.json()["expires_in"] == round(server.node.config.watch.token_ttl)
        bodies: list[dict[str, Any]] = [
            {},
            {"rooms": []},
            {"rooms": "hall"},
            {"rooms": ["bad room!"]},
            {"rooms": ["hall"] * 65},
            {"rooms": ["hall"], "ttl": 0},
            {"rooms": ["hall"], "x": 1},
        ]
        for bad in bodies:
            refused = await http.post("/api/watch-tokens", json=bad, headers=AUTH)
            assert refused.status_code == 400, bad
            assert refused.json()["error"]["code"] == "invalid"
        assert (await http.post("/api/watch-tokens", json=body)).status_code == 401


async def test_posts_for_other_scopes_never_push_out_a_playing_players_context() -> None:
    """Past the scope cap, posts for rooms nobody is in (or players not connected) go
    first: a connected player's trusted state is kept, so the client's claim never wins
    again (it did: 10,000 room posts pushed alice's out)."""
    async with api_server() as (server, http), connect(server.url) as alice:
        server.node.contexts.trusted.max_scopes = 5  # the cap (10,000) in small
        await player(server, alice, "alice", None)
        await alice.send({"t": "context", "id": 2, "data": {"time": "day"}})
        await alice.expect("ack")
        body = {"player": "alice", "npc": "merchant", "data": {"time": "night"}}
        assert (await http.post("/api/context", json=body, headers=AUTH)).status_code == 200
        for i in range(20):
            flood = (
                {"room": f"r{i}", "data": {"x": 1}} if i % 2 else {"player": f"p{i}", "data": {}}
            )
            assert (await http.post("/api/context", json=flood, headers=AUTH)).status_code == 200
        assert len(server.node.contexts.trusted) == 5
        await alice.send({"t": "say", "id": 3, "npc": "merchant", "text": "what do you sell?"})
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        text = "".join(f["text"] for f in frames if f["t"] == "delta")
        assert any(line in text for line in ("Stall's shut", "At this hour?")), text
        assert server.node.contexts.trusted.evicted_in_use == 0


def test_prompt_marks_trusted_and_client_context() -> None:
    """The system prompt shows the game's state as true and the client's as unverified."""
    npc = NpcConfig(id="m", name="Mira")
    request = GenerationRequest(
        npc, "alice", "hi", context={"gold": 999, "mood": "happy"}, trusted={"gold": 3}
    )
    system = build_messages(request)[0]["content"]
    game, _, client = system.partition("Context the player's client reports (unverified")
    assert "from the game server" in game and "gold: 3" in game
    assert "mood: happy" in client and "gold" not in client


async def test_interrupt_through_the_api() -> None:
    """POST /api/interrupt ends a running turn: turn.end{interrupted}, no delta after it."""
    config = api_config(scripted=LONG)
    async with api_server(config) as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", None)
        await alice.send({"t": "say", "id": 2, "npc": "guard", "text": "tell me of the gate"})
        turn = (await alice.expect("ack"))["turn"]
        await alice.recv_until(lambda f: f["t"] == "delta" and f["at"] > 20)
        answer = await http.post("/api/interrupt", json={"turn": turn}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["interrupted"]
        frames = await alice.recv_until(lambda f: f["t"] == "turn.end")
        assert frames[-1]["reason"] == "interrupted"
        await alice.send({"t": "ping", "id": 9})
        after = await alice.recv_until(lambda f: f["t"] == "pong")
        assert not [f for f in after if f["t"] == "delta"]


async def test_kick_closes_every_socket_of_the_player() -> None:
    """POST /api/kick closes each of the player's sockets with 4508; the sessions are gone."""
    async with (
        api_server() as (server, http),
        connect(server.url) as first,
        connect(server.url) as second,
        connect(server.url) as other,
    ):
        await player(server, first, "alice", None)
        await player(server, second, "alice", None)
        await player(server, other, "bob", None)
        answer = await http.post("/api/kick", json={"player": "alice"}, headers=AUTH)
        assert answer.json() == {"player": "alice", "sessions": 2, "sockets": 2}
        assert await first.close_code() == 4508 == int(CloseCode.KICKED)
        assert await second.close_code() == CloseCode.KICKED
        assert second.ws.close_reason == "kicked by the game server"  # a close names its cause
        assert not CloseCode.KICKED.should_reconnect
        alice = (await http.get("/api/players/alice", headers=AUTH)).json()
        assert alice["sessions"] == [] and not alice["online"]
        await other.send({"t": "ping", "id": 1})
        assert (await other.expect("pong"))["id"] == 1


async def test_a_kick_with_a_ban_keeps_the_player_out_until_it_is_lifted() -> None:
    """Kicked with `ban`, alice's own token, a fresh one and her resume are all refused
    with 4508 (the reason says how long); bob is not; her player entry shows the ban;
    once lifted, her old token opens a session again."""
    async with (
        api_server() as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        token = server.token("alice")
        await alice.hello(token)
        await player(server, bob, "bob", None)
        kick = {"player": "alice", "ban": 600}
        answer = await http.post("/api/kick", json=kick, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"player": "alice", "sessions": 1, "sockets": 1, "banned_for": 600}
        assert await alice.close_code() == CloseCode.KICKED
        reason = await refused_hello(server.url, token)
        assert reason.startswith("banned for ") and reason.endswith(" more seconds")
        assert 595 <= int(reason.split()[2]) <= 600
        fresh = (await http.post("/api/tokens", json={"player": "alice"}, headers=AUTH)).json()
        assert (await refused_hello(server.url, fresh["token"])).startswith("banned")
        resume = {"session": alice.session, "seq": alice.last_seq}
        assert (await refused_hello(server.url, token, resume)).startswith("banned")
        info = (await http.get("/api/players/alice", headers=AUTH)).json()
        assert 595 <= info["banned_for"] <= 600 and info["sessions"] == []
        assert (await http.get("/api/players/bob", headers=AUTH)).json()["banned_for"] == 0
        await bob.send({"t": "ping", "id": 1})
        assert (await bob.expect("pong"))["id"] == 1
        lift = await http.post("/api/unban", json={"player": "alice"}, headers=AUTH)
        assert lift.json() == {"player": "alice", "lifted": True}
        again = await http.post("/api/unban", json={"player": "alice"}, headers=AUTH)
        assert again.json() == {"player": "alice", "lifted": False}
        async with connect(server.url) as back:
            welcome = await back.hello(token)
            assert welcome["resumed"] is False
        info = (await http.get("/api/players/alice", headers=AUTH)).json()
        assert info["banned_for"] == 0


async def test_a_kick_without_a_ban_leaves_the_player_free_to_return() -> None:
    """A plain kick bans nobody: the same token says hello again at once."""
    async with api_server() as (server, http), connect(server.url) as alice:
        token = server.token("alice")
        await alice.hello(token)
        answer = await http.post("/api/kick", json={"player": "alice"}, headers=AUTH)
        assert "banned_for" not in answer.json()
        assert await alice.close_code() == CloseCode.KICKED
        async with connect(server.url) as back:
            assert (await back.hello(token))["t"] == "welcome"


async def test_a_ban_that_is_not_whole_seconds_in_range_is_400_and_kicks_nobody() -> None:
    async with api_server() as (server, http), connect(server.url) as alice:
        await alice.hello(server.token("alice"))
        for ban in (0, -5, 1.5, "60", True, 30 * 86400 + 1):
            answer = await http.post(
                "/api/kick", json={"player": "alice", "ban": ban}, headers=AUTH
            )
            assert answer.status_code == 400, (ban, answer.text)
            assert "'ban'" in answer.json()["error"]["message"]
        await alice.send({"t": "ping", "id": 1})
        assert (await alice.expect("pong"))["id"] == 1
        unknown = await http.post("/api/unban", json={"player": "alice", "x": 1}, headers=AUTH)
        assert unknown.status_code == 400


async def test_rooms_and_players_can_be_read() -> None:
    """GET /api/rooms/<room> lists members; GET /api/players/<player> lists sessions."""
    async with (
        api_server() as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await player(server, alice, "alice", "tavern")
        await player(server, bob, "bob", "tavern")
        room = (await http.get("/api/rooms/tavern", headers=AUTH)).json()
        assert room == {"room": "tavern", "members": ["alice", "bob"]}
        missing = await http.get("/api/rooms/cellar", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_room"
        info = (await http.get("/api/players/alice", headers=AUTH)).json()
        assert info["online"] and info["rooms"] == ["tavern"]
        assert [s["session"] for s in info["sessions"]] == [alice.session]
        assert info["sessions"][0]["state"] == "attached"


async def test_a_snapshot_keeps_the_game_as_the_cause() -> None:
    """A player joining while a game-caused turn runs gets its turn.start with caused_by."""
    config = api_config(scripted=LONG)
    async with (
        api_server(config) as (server, http),
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        await player(server, alice, "alice", "gate")
        body = {"npc": "guard", "room": "gate", "event": "alarm", "text": "the gate is open"}
        turn = (await http.post("/api/say", json=body, headers=AUTH)).json()["turn"]
        await alice.recv_until(lambda f: f["t"] == "delta" and f["at"] > 20)
        await player(server, bob, "bob", "gate")
        start = await bob.expect("turn.start")
        assert (start["turn"], start["caused_by"], start["event"]) == (turn, "game", "alarm")


async def test_a_game_say_past_the_generation_cap_is_429() -> None:
    """At max_generations a game say is refused with 429, retry_after and Retry-After."""
    config = api_config(scripted=LONG, limits={"max_generations": 1})
    async with api_server(config) as (server, http), connect(server.url) as alice:
        await player(server, alice, "alice", None)
        await alice.send({"t": "say", "id": 2, "npc": "guard", "text": "tell me of the gate"})
        await alice.expect("delta")
        body = {"npc": "merchant", "player": "alice", "event": "greet"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        error = answer.json()["error"]
        assert error["code"] == "busy" and error["retry_after"] == 1.0


def test_trusted_contexts_are_bounded_and_layered() -> None:
    """Room state under player state, per-NPC over all-NPC; a byte budget; oldest scope goes."""
    store = TrustedContexts(max_bytes_per_scope=100, max_scopes=2)
    assert store.set_nowait("room:gate", None, {"time": "night", "alarm": True}, 10)
    assert store.set_nowait("player:alice", None, {"gold": 3}, 10)
    assert store.set_nowait("player:alice", "merchant", {"gold": 5}, 10)
    assert store.for_npc("alice", "gate", "merchant") == {"time": "night", "alarm": True, "gold": 5}
    assert store.for_npc("alice", None, "guard") == {"gold": 3}
    assert not store.set_nowait("player:alice", "guard", {"x": 1}, 81)  # 10 + 10 + 81 > 100
    assert store.set_nowait("player:bob", None, {"gold": 1}, 10)  # a third scope
    assert store.for_npc("alice", "gate", "guard") == {"gold": 3}  # the room's was oldest
    assert len(store) == 2


def test_trusted_contexts_in_use_are_forgotten_last() -> None:
    """Over the cap the oldest scope not in use goes; only when all are in use does the
    oldest go, counted."""
    playing = {"player:alice", "room:hall"}
    store = TrustedContexts(max_bytes_per_scope=100, max_scopes=3, in_use=playing.__contains__)
    for scope in ("player:alice", "room:hall", "room:empty", "player:away"):
        assert store.set_nowait(scope, None, {"k": scope}, 10)
    assert store.for_npc("alice", "hall", "guard") == {"k": "player:alice"}
    assert store.for_npc("nobody", "empty", "guard") == {}  # the oldest not in use went
    assert store.evicted_in_use == 0
    playing.add("player:away")
    assert store.set_nowait("player:bob", None, {"k": "bob"}, 10)  # all in use now
    assert store.evicted_in_use == 1 and len(store) == 3
    assert store.for_npc("bob", None, "guard") == {"k": "bob"}  # the post just made stays


async def test_a_game_say_to_an_unknown_npc_is_404_naming_the_known_ones() -> None:
    """The documented answer (game-server.md) of a say to an NPC the server lacks."""
    async with api_server() as (_, http):
        answer = await http.post("/api/say", json={"npc": "nobody", "player": "x"}, headers=AUTH)
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["code"] == "unknown_npc" and "guard, merchant, questgiver" in error["message"]


async def test_a_bare_interrupt_cuts_a_turn_the_game_started_for_the_player() -> None:
    """Interrupts: a private turn the game started counts as the player's own."""
    async with (
        api_server(api_config(scripted=LONG)) as (server, http),
        connect(server.url) as alice,
    ):
        await player(server, alice, "alice", None)
        body = {"npc": "guard", "player": "alice", "event": "alarm", "text": "a thief!"}
        said = await http.post("/api/say", json=body, headers=AUTH)
        assert said.status_code == 200, said.text
        turn = said.json()["turn"]
        start = await alice.expect("turn.start")
        assert (start["turn"], start["caused_by"]) == (turn, "game")
        await alice.recv_until(lambda f: f["t"] == "delta")
        await alice.send({"t": "interrupt", "id": 9})
        end = await alice.recv_until(lambda f: f["t"] == "turn.end")
        assert (end[-1]["turn"], end[-1]["reason"]) == (turn, "interrupted")
