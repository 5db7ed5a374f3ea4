"""The Python client (`npc_client`) and the game server's side of npc-server, against a
real server: client tools, game-caused turns, kicks and other terminal closes, token
renewal, and the protocol's close and error codes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from npc_client import (
    Action,
    CloseCode,
    ConnectionClosedError,
    ConnectionState,
    ErrorCode,
    NpcClient,
    NpcError,
    Text,
    ToolCall,
    Turn,
    Unavailable,
    UnknownCall,
    connect,
)
from npc_client.errors import error_from_frame, should_reconnect
from npc_client.tokens import refresh_delay

from npc_server.config import Config
from npc_server.npcs import load_npcs
from npc_server.protocol.codes import CloseCode as ServerCloseCode
from npc_server.tokens import issue_token
from npc_server.transports.websocket import WebSocketEdge
from tests.support.game_server import API_KEY
from tests.support.redis import RedisServer, redis_server
from tests.support.scout import scout
from tests.support.server import (
    DEMO_NPCS,
    REPO,
    SECRET,
    RunningServer,
    running_server,
    server_config,
    start_server_process,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROTOCOL_MD = REPO / "docs" / "protocol.md"

# An NPC with tools its client answers (as tests/e2e/test_tools.py declares one). The
# timeouts are long: a call the client failed to answer would outlast the test's TIMEOUT,
# except `glance`, which is meant to time out.
SCOUT = scout(inventory_s=30, glance_s=0.2)


def api_config(**kwargs: Any) -> Config:
    """The test config with the game API on (`NPC_SERVER_API_KEY`)."""
    return dataclasses.replace(server_config(**kwargs), api_key=API_KEY)


@asynccontextmanager
async def api_server(
    config: Config | None = None, with_scout: bool = False
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    npcs = {**load_npcs(DEMO_NPCS), "scout": SCOUT} if with_scout else None
    async with (
        running_server(config or api_config(), npcs=npcs) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT) as http,
    ):
        yield server, http


@asynccontextmanager
async def client(
    server: RunningServer, player: str = "alice", **options: Any
) -> AsyncIterator[NpcClient]:
    npc = await connect(server.url, server.token(player), **options)
    try:
        yield npc
    finally:
        await npc.close()


def edge_of(server: RunningServer, npc: NpcClient) -> WebSocketEdge:
    for edge in server.node.sockets:
        session = edge.session if isinstance(edge, WebSocketEdge) else None
        if isinstance(edge, WebSocketEdge) and session is not None and session.id == npc.session:
            return edge
    raise AssertionError(f"no server socket for session {npc.session}")


async def read_all(turn: Turn) -> list[Text | Action]:
    async with asyncio.timeout(TIMEOUT):
        return [item async for item in turn]


def text_of(items: list[Text | Action]) -> str:
    return "".join(item for item in items if isinstance(item, Text))


def memory_of(server: RunningServer) -> list[tuple[str, str]]:
    """(role, text) of the only conversation's memory on the server."""
    [conversation] = server.node.all_conversations()
    return [(line.role, line.text) for line in conversation.memory.lines()]


# --- tools answered by the client --------------------------------------------


async def test_a_client_tool_is_answered_from_tool_calls() -> None:
    """`tool_calls()` yields the call the NPC asks this client; `answer()` resumes the reply
    with the result, and the call's `tool.end` (answered) is on the handle and the turn."""
    async with api_server(with_scout=True) as (server, _), client(server) as npc:
        calls = npc.tool_calls()
        turn = await npc.say("scout", "what do I carry?")
        call = await asyncio.wait_for(anext(calls), TIMEOUT)
        assert isinstance(call, ToolCall)
        assert (call.name, call.args, call.answered_by, call.turn) == (
            "inventory",
            {},
            "client",
            turn.id,
        )
        assert call.for_me and call.status is None and not call.answered
        await call.answer({"item": "a lantern"})
        assert call.answered
        assert text_of(await read_all(turn)).endswith("You carry a lantern.")
        assert turn.reason == "done"
        assert await asyncio.wait_for(call.wait(), TIMEOUT) == "answered" == call.status
        assert turn.tool_calls == [call]
        assert memory_of(server)[1] == ("tool", '{"item":"a lantern"}')
        assert npc.statistics().tools_answered == 1


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_tool_handlers_answer_by_themselves(kind: str) -> None:
    """`tools={name: handler}` answers each call of that tool with the handler's result
    (a coroutine function or a plain one); such calls are not yielded by `tool_calls()`."""
    asked: list[ToolCall] = []

    async def async_inventory(call: ToolCall) -> dict[str, str]:
        asked.append(call)
        return {"item": "a coil of rope"}

    def sync_inventory(call: ToolCall) -> dict[str, str]:
        asked.append(call)
        return {"item": "a coil of rope"}

    handler = async_inventory if kind == "async" else sync_inventory
    async with (
        api_server(with_scout=True) as (server, _),
        client(server, tools={"inventory": handler}) as npc,
    ):
        turn = await npc.say("scout", "what do I carry?")
        assert text_of(await read_all(turn)).endswith("You carry a coil of rope.")
        [call] = turn.tool_calls
        assert asked == [call]
        assert (call.status, call.answered) == ("answered", True)
        assert npc.statistics().tools_answered == 1


async def test_a_raising_tool_handler_answers_an_error_at_once() -> None:
    """A handler that raises answers `{"error": …}` (what the server tells a model of a
    failed call) at once: the NPC goes on with its defaults, long before the tool's
    30 s timeout."""

    async def inventory(call: ToolCall) -> Any:
        raise RuntimeError("the inventory service is down")

    async with (
        api_server(with_scout=True) as (server, _),
        client(server, tools={"inventory": inventory}) as npc,
    ):
        turn = await npc.say("scout", "what do I carry?")
        assert text_of(await read_all(turn)).endswith("You carry nothing.")
        assert turn.tool_calls[0].status == "answered"
        role, line = memory_of(server)[1]
        assert role == "tool"
        assert line == '{"error":"the tool failed: RuntimeError: the inventory service is down"}'


async def test_an_answer_after_the_call_ended_is_unknown_call() -> None:
    """A call cut by an interrupt ends `cancelled`, one nobody answers in time ends
    `timeout`; answering either then raises `UnknownCall` (the server's unknown_call)."""
    async with api_server(with_scout=True) as (server, _), client(server) as npc:
        calls = npc.tool_calls()
        turn = await npc.say("scout", "what do I carry?")
        call = await asyncio.wait_for(anext(calls), TIMEOUT)
        await turn.interrupt()
        await read_all(turn)
        assert (turn.reason, await asyncio.wait_for(call.wait(), TIMEOUT)) == (
            "interrupted",
            "cancelled",
        )
        with pytest.raises(UnknownCall) as late:
            await call.answer({"item": "too late"})
        assert late.value.code == ErrorCode.UNKNOWN_CALL
        assert str(late.value.code) == "unknown_call"

        turn = await npc.say("scout", "look around")
        call = await asyncio.wait_for(anext(calls), TIMEOUT)
        assert text_of(await read_all(turn)).endswith("I see nothing.")
        assert call.status == "timeout"
        with pytest.raises(UnknownCall):
            await npc.answer_tool(call.id, {"item": "too late"})
        assert npc.statistics().tools_answered == 0


async def test_a_handler_that_finishes_after_the_timeout_sends_nothing() -> None:
    """A handler still running when its call times out: its late result is dropped
    quietly (no error, no exception), and the client goes on."""
    release = asyncio.Event()

    async def glance(call: ToolCall) -> dict[str, str]:
        await call.wait()  # until the server gives up on it
        release.set()
        return {"item": "a hawk"}

    async with (
        api_server(with_scout=True) as (server, _),
        client(server, tools={"glance": glance}) as npc,
    ):
        turn = await npc.say("scout", "look around")
        assert text_of(await read_all(turn)).endswith("I see nothing.")
        await asyncio.wait_for(release.wait(), TIMEOUT)
        await asyncio.wait_for(npc.ping(), TIMEOUT)
        assert turn.tool_calls[0].status == "timeout"
        assert npc.statistics().tools_answered == 0
        assert npc.state is ConnectionState.OPEN


async def test_in_a_room_only_the_speaker_is_asked() -> None:
    """Every member sees a room turn's tool call and its end; only the speaker's client is
    asked (its handler answers); another member's answer is `UnknownCall`."""
    bob_asked: list[ToolCall] = []

    def bob_inventory(call: ToolCall) -> dict[str, str]:
        bob_asked.append(call)
        return {"item": "bob's boots"}

    async with (
        api_server(with_scout=True) as (server, _),
        client(server, "alice", tools={"inventory": lambda call: {"item": "a map"}}) as alice,
        client(server, "bob", tools={"inventory": bob_inventory}) as bob,
    ):
        await alice.join("camp")
        await bob.join("camp")
        bobs_turns = bob.turns()
        mine = await alice.say("scout", "what do I carry?", room="camp")
        theirs = await asyncio.wait_for(anext(bobs_turns), TIMEOUT)
        assert theirs.id == mine.id
        texts = await asyncio.wait_for(asyncio.gather(read_all(mine), read_all(theirs)), TIMEOUT)
        assert text_of(texts[0]) == text_of(texts[1])
        assert text_of(texts[0]).endswith("You carry a map.")
        [seen_by_bob] = theirs.tool_calls
        assert not seen_by_bob.for_me and seen_by_bob.status == "answered"
        assert mine.tool_calls[0].for_me and bob_asked == []
        with pytest.raises(UnknownCall):
            await seen_by_bob.answer({"item": "bob's boots"})


# --- game-caused turns ----------------------------------------------------------


async def test_a_game_caused_turn_says_so() -> None:
    """`POST /api/say` with an event: the player's turn has `caused_by == "game"`, the
    `event`, no `reply_to`, and its actions; a turn of a say has `caused_by` None."""
    async with api_server() as (server, http), client(server) as npc:
        turns = npc.turns()
        body = {"npc": "guard", "player": "alice", "event": "theft", "text": "alice took a pear"}
        answer = await http.post("/api/say", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        turn = await asyncio.wait_for(anext(turns), TIMEOUT)
        assert (turn.id, turn.npc, turn.player) == (answer.json()["turn"], "guard", "alice")
        assert (turn.caused_by, turn.event, turn.reply_to, turn.mine) == (
            "game",
            "theft",
            None,
            False,
        )
        items = await read_all(turn)
        assert [a.name for a in items if isinstance(a, Action)] == ["draw_sword"]
        assert "Thief!" in text_of(items)
        said = await npc.say("guard", "hello")
        await read_all(said)
        assert (said.caused_by, said.event) == (None, None)


async def test_a_game_caused_room_turn_has_no_player() -> None:
    """A game say to a room: every member gets the turn, with `player == ""`."""
    async with api_server() as (server, http), client(server) as npc:
        await npc.join("gate")
        turns = npc.turns()
        body = {"npc": "guard", "room": "gate", "event": "alarm", "text": "the gate is open"}
        assert (await http.post("/api/say", json=body, headers=AUTH)).status_code == 200
        turn = await asyncio.wait_for(anext(turns), TIMEOUT)
        assert (turn.caused_by, turn.event, turn.player, turn.room) == (
            "game",
            "alarm",
            "",
            "gate",
        )
        await read_all(turn)
        assert turn.reason == "done"


# --- closes for good leave nothing behind --------------------------------------------


def client_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running code of the npc_client package."""
    tasks = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and f"{os.sep}npc_client{os.sep}" in code.co_filename:
            tasks.append(task)
    return tasks


async def kick(server: RunningServer, http: httpx.AsyncClient, npc: NpcClient) -> None:
    answer = await http.post("/api/kick", json={"player": npc.player}, headers=AUTH)
    assert answer.json()["sockets"] == 1


def close_with(code: ServerCloseCode) -> Callable[..., Any]:
    async def close(server: RunningServer, http: httpx.AsyncClient, npc: NpcClient) -> None:
        edge_of(server, npc).request_close(code, "test")

    return close


@pytest.mark.parametrize(
    ("how", "code"),
    [
        (kick, 4508),
        (close_with(ServerCloseCode.TOKEN_EXPIRED), 4002),  # no token_provider to renew it
        (close_with(ServerCloseCode.AUTH_FAILED), 4500),
    ],
    ids=["kicked", "expired", "auth"],
)
async def test_a_close_for_good_by_the_server_leaves_no_task(
    how: Callable[..., Any], code: int
) -> None:
    """After a terminal close by the server (no `close()` call) the client is CLOSED, did
    not reconnect, and none of its tasks is left: nothing is destroyed pending by GC."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: problems.append(str(context["message"])))
    try:
        async with api_server() as (server, http):
            npc = await connect(server.url, server.token("alice"))
            said = await npc.say("merchant", "hello")
            await read_all(said)  # consuming text set the `seen` reporter going
            await how(server, http, npc)
            try:
                await asyncio.wait_for(npc.wait_closed(), TIMEOUT)
            except ConnectionClosedError as exc:
                closed = (exc.code, exc.reconnectable)
            else:
                raise AssertionError("wait_closed() did not raise")
            assert closed == (code, False)
            assert npc.state is ConnectionState.CLOSED
            assert npc.statistics().reconnect_attempts == 0
            assert client_tasks() == []
            del npc, said
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not [p for p in problems if "destroyed but it is pending" in p], problems


async def test_a_kick_is_close_code_4508_and_ends_everything_waiting() -> None:
    """4508 is `CloseCode.KICKED`: the client stops; iterators end, and an action waiting
    for approval, a tool call waiting for its answer and the turn it paused raise."""
    async with api_server(with_scout=True) as (server, http), client(server) as npc:
        turns, events, calls = npc.turns(), npc.events(), npc.tool_calls()
        shop = await npc.say("merchant", "what do you sell?")
        [action] = [item for item in await read_all(shop) if isinstance(item, Action)]
        assert action.approval and action.status is None
        paused = await npc.say("scout", "what do I carry?")
        call = await asyncio.wait_for(anext(calls), TIMEOUT)
        await kick(server, http, npc)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(npc.wait_closed(), TIMEOUT)
        assert closed.value.code == CloseCode.KICKED
        assert npc.closed_error is closed.value
        for waiting in (action.wait(), call.wait(), read_all(paused)):
            with pytest.raises(ConnectionClosedError) as failed:
                await asyncio.wait_for(waiting, TIMEOUT)
            assert failed.value is closed.value
        for stream in (turns, events, calls):
            assert [item async for item in stream] == []


# --- token renewal ------------------------------------------------------------------

TTL = 2  # seconds: JWT times are whole seconds, so a token lives 1-2 s from its issue


async def test_a_short_lived_token_is_renewed_before_it_expires() -> None:
    """With a token provider the client sends `refresh` ahead of `exp` (here 0.5 s, a
    quarter of a 2 s lifetime): across several lifetimes, with no grace after `exp`, the
    server never closes with 4002 and the socket is never replaced."""
    config = api_config(auth={"expiry_grace": 0})
    async with api_server(config) as (server, http):
        started = time.monotonic()
        provided: list[float] = []
        lifetimes_over = asyncio.Event()

        async def new_token() -> str:
            body = {"player": "alice", "ttl": TTL}
            answer = await http.post("/api/tokens", json=body, headers=AUTH)
            provided.append(time.monotonic() - started)
            if provided[-1] > 3 * TTL:
                lifetimes_over.set()
            return str(answer.json()["token"])

        states: list[ConnectionState] = []
        npc = await connect(server.url, await new_token(), token_provider=new_token,
                            on_state=states.append)  # fmt: skip
        try:
            edge = edge_of(server, npc)
            await asyncio.wait_for(lifetimes_over.wait(), 5 * TTL + TIMEOUT)
            await asyncio.wait_for(npc.ping(), TIMEOUT)
            stats = npc.statistics()
            assert states == [ConnectionState.OPEN], "the socket closed (4002?) and resumed"
            assert (stats.connects, stats.reconnect_attempts) == (1, 0)
            # Every token provided was sent in a refresh, but the first and one in flight.
            assert stats.refreshes >= len(provided) - 2
            assert stats.refreshes >= 3
            assert edge_of(server, npc) is edge and not edge.closing.is_set()
        finally:
            await npc.close()


def test_the_refresh_margin_fits_the_tokens_lifetime() -> None:
    """Renewal is due min(60 s, a quarter of the lifetime) before `exp`; a token
    without `exp` is never renewed ahead."""
    now = 1_000_000.0
    assert refresh_delay(issue_token(SECRET, "alice", 3600, now=now), now) == 3600 - 60
    assert refresh_delay(issue_token(SECRET, "alice", 20, now=now), now) == 15
    assert refresh_delay(issue_token(SECRET, "alice", 2, now=now), now) == 1.5
    assert refresh_delay(issue_token(SECRET, "alice", 2, now=now), now + 1.9) == 0
    assert refresh_delay(issue_token(SECRET, "alice", 3600, now=now), now, margin=10) == 3590
    assert refresh_delay("not-a-jwt", now) is None


# --- codes ----------------------------------------------------------------------------


def doc_table(heading: str) -> dict[str, str]:
    """The first column of the table under `## heading` in protocol.md -> its last column."""
    section = PROTOCOL_MD.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"`?[\w.]+`?", cells[0]):
            rows[cells[0].strip("`")] = cells[-1]
    return rows


def test_every_documented_close_code_is_known_and_handled_as_documented() -> None:
    """`CloseCode` has every close code of protocol.md, and the client reconnects after
    exactly those the doc says to reconnect after (4508, kicked, is not one)."""
    table = doc_table("Close codes")
    assert {int(code) for code in table if code != "code"} == {int(c) for c in CloseCode}
    for code, advice in table.items():
        if code == "code":
            continue
        reconnect = not advice.startswith(("stop", "fix"))
        assert should_reconnect(int(code)) is reconnect, (code, advice)
    assert not should_reconnect(CloseCode.KICKED)
    assert (should_reconnect(4444), should_reconnect(4999), should_reconnect(3000)) == (
        True,
        False,
        False,
    )


def test_every_documented_error_code_has_its_exception() -> None:
    """`ErrorCode` has every error code of protocol.md; each maps to an `NpcError`
    subclass carrying `retry_after` (`unavailable`'s among them)."""
    table = doc_table("Error codes")
    codes = {code for code in table if code != "code"}
    assert codes == {str(c) for c in ErrorCode}
    for code in codes:
        error = error_from_frame({"t": "error", "code": code, "message": "m", "retry_after": 2})
        assert type(error) is not NpcError and error.code == code
        assert error.retry_after == 2.0
    assert isinstance(error_from_frame({"code": "unknown_call"}), UnknownCall)


async def test_a_4029_close_waits_seconds_before_resuming() -> None:
    """Rate limited (4029): the client resumes after a backoff of seconds, not at once."""
    async with api_server() as (server, _):
        changes: list[tuple[ConnectionState, float]] = []
        reopened = asyncio.Event()

        def on_state(state: ConnectionState) -> None:
            changes.append((state, time.monotonic()))
            if state is ConnectionState.OPEN and len(changes) > 1:
                reopened.set()

        async with client(server, on_state=on_state) as npc:
            edge_of(server, npc).request_close(ServerCloseCode.RATE_LIMITED)
            await asyncio.wait_for(reopened.wait(), TIMEOUT)
            (lost, at), (back, back_at) = changes[-2:]
            assert (lost, back) == (ConnectionState.RECONNECTING, ConnectionState.OPEN)
            assert back_at - at >= 1.0  # 2 s, jittered down to half at most
            assert npc.statistics().resumed == 1


def cluster_config(tmp_path: Path, redis: RedisServer) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(
        f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n'
        "[overrides.scripted]\nfirst_token_ms = 0\ntokens_per_second = 200\n"
        f'[cluster]\nredis_url = "{redis.url}"\n',
        encoding="utf-8",
    )
    return path


async def redis_available(http: httpx.AsyncClient, available: bool) -> None:
    """Until the node's /healthz says it can (or cannot) reach Redis (its own report,
    polled with a deadline)."""
    for _ in range(600):  # 30 s
        if (await http.get("/healthz")).json()["cluster"]["available"] is available:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the node never reported available={available}")


async def test_a_join_without_redis_raises_unavailable_with_retry_after(tmp_path: Path) -> None:
    """Cluster mode with Redis away: `join` raises `Unavailable` with `retry_after`, the
    connection stays open, and the join works once Redis is back."""
    with redis_server() as redis:
        node = start_server_process(env={"NPC_SERVER_CONFIG": str(cluster_config(tmp_path, redis))})
        try:
            async with (
                httpx.AsyncClient(base_url=node.http_url, timeout=TIMEOUT) as http,
                await connect(node.url, node.token("alice")) as npc,
            ):
                await redis_available(http, True)
                redis.stop()
                await redis_available(http, False)
                with pytest.raises(Unavailable) as refused:
                    await npc.join("inn")
                assert refused.value.code == ErrorCode.UNAVAILABLE
                assert str(refused.value.code) == "unavailable"
                assert refused.value.retry_after is not None and refused.value.retry_after > 0
                assert npc.state is ConnectionState.OPEN
                redis.start()
                await redis_available(http, True)
                await npc.join("inn")
        finally:
            assert node.terminate() == 0
