"""`GET /watch` on a real server: watchers follow a room while players talk over `/ws`."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent

from npc_server.config import with_overrides
from npc_server.events import Closed, NodeEvent
from npc_server.protocol.codes import CloseCode
from npc_server.tokens import issue_token, issue_watch_token
from tests.support.client import Frame, RawClient, connect
from tests.support.server import RunningServer, running_server, server_config
from tests.support.sse import Watch, data, watch
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

ROOM = "hall"
# Replies long enough to be watched mid-stream, fast enough for a test.
STREAMING = {"tokens_per_second": 200, "long_reply_chars": 400}
# Frames only a player's own socket gets, never a room's.
PRIVATE = {"welcome", "ack", "members", "ping", "pong", "error"}


def watch_token(server: RunningServer, *rooms: str, ttl: float = 600.0) -> str:
    return issue_watch_token(server.secret, list(rooms or [ROOM]), ttl)


def watch_params(server: RunningServer, room: str = ROOM) -> dict[str, str]:
    return {"room": room, "token": watch_token(server, room)}


async def member(client: RawClient, server: RunningServer, player: str) -> None:
    await client.hello(server.token(player))
    await client.send({"t": "join", "id": "j", "room": ROOM})
    await client.expect("ack")


def room_frames(frames: list[Frame]) -> list[Frame]:
    """A member's frames as a watcher gets them: no private ones, no seq, deltas per turn merged."""
    return merge_deltas([{k: v for k, v in f.items() if k != "seq"} for f in frames])


def watched_frames(events: list[ServerSentEvent]) -> list[Frame]:
    kept = [e for e in events if e.event not in ("live", "reset")]
    frames = [data(e) for e in kept]
    assert [f["t"] for f in frames] == [e.event for e in kept]  # `event:` is the frame type
    return merge_deltas(frames)


def merge_deltas(frames: list[Frame]) -> list[Frame]:
    # Queues merge a turn's deltas differently per reader; the text they carry must agree.
    out: list[Frame] = []
    text: dict[str, Frame] = {}
    for frame in frames:
        if frame["t"] in PRIVATE:
            continue
        if frame["t"] == "delta" and frame["turn"] in text:
            text[frame["turn"]]["text"] += frame["text"]
            continue
        frame = dict(frame)
        out.append(frame)
        if frame["t"] == "delta":
            text[frame["turn"]] = frame
    return out


def turn_text(events: list[ServerSentEvent], turn: str) -> str:
    text = ""
    for event in events:
        if event.event == "delta" and data(event)["turn"] == turn:
            fields = data(event)
            text = text[: fields["at"]] + fields["text"]
    return text


def ended(turns: int) -> Any:
    count = [0]

    def done(frame: ServerSentEvent | Frame) -> bool:
        kind = frame.event if isinstance(frame, ServerSentEvent) else frame.get("t")
        count[0] += kind == "turn.end"
        return count[0] >= turns

    return done


async def test_a_watcher_sees_exactly_the_frames_a_member_sees() -> None:
    """Two players talk to two NPCs at once; a watcher gets what a silent member gets."""
    async with running_server(server_config(scripted=STREAMING)) as server:
        async with (
            connect(server.url) as alice,
            connect(server.url) as bob,
            connect(server.url) as carol,
        ):
            for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                await member(client, server, name)
            async with watch(server.http_url, params=watch_params(server)) as watcher:
                assert watcher.status == 200
                assert "text/event-stream" in watcher.source.response.headers["content-type"]
                live = await watcher.next()
                assert live.event == "live" and data(live)["members"] == ["alice", "bob", "carol"]
                carol.received.clear()
                await bob.send({"t": "typing", "on": True, "room": ROOM, "npc": "guard"})
                await alice.send(
                    {"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": ROOM}
                )
                await bob.send({"t": "say", "id": 2, "npc": "guard", "text": "hello", "room": ROOM})
                await carol.recv_until(ended(2))
                await watcher.until(ended(2))
                expected = room_frames(carol.received)
                assert [f["t"] for f in expected].count("said") == 2
                assert watched_frames(watcher.events[1:]) == expected
                ids = [e.id for e in watcher.events]
                numbers = [int(i.rpartition("-")[2]) for i in ids]
                assert numbers == list(range(numbers[0], numbers[0] + len(ids)))


async def test_a_reconnect_with_last_event_id_leaves_no_gap_and_no_duplicate() -> None:
    """A watcher drops mid-turn and comes back with Last-Event-ID: every event once, in order."""
    async with running_server(server_config(scripted=STREAMING)) as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            params = watch_params(server)
            async with watch(server.http_url, params=params) as first:
                await first.next()
                await alice.send(
                    {"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": ROOM}
                )
                await first.until(lambda e: e.event == "delta")
                await first.until(lambda e: e.event == "delta")
            last = first.last_id
            assert last is not None
            async with watch(
                server.http_url, params=params, headers={"Last-Event-ID": last}
            ) as again:
                await again.until(lambda e: e.event == "turn.end")
            end = data(again.events[-1])
            events = first.events + again.events
            numbers = [int(e.id.rpartition("-")[2]) for e in events]
            assert numbers == list(range(numbers[0], numbers[0] + len(events)))
            assert all(e.event != "live" for e in again.events)
            turn = end["turn"]
            assert len(turn_text(events, turn)) == end["chars"] == end["kept"]
            await alice.recv_until(lambda f: f.get("t") == "turn.end")
            said = "".join(f["text"] for f in alice.received if f.get("t") == "delta")
            assert turn_text(events, turn) == said


async def test_beyond_the_replay_window_a_reset_and_a_snapshot_follow() -> None:
    """An id the window no longer covers (or from another log) gets reset, the active turn, live."""
    config = server_config(scripted={"tokens_per_second": 100, "long_reply_chars": 3000})
    config = with_overrides(config, watch={"replay_events": 8})
    async with running_server(config) as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            params = watch_params(server)
            async with watch(server.http_url, params=params) as first:
                await first.next()
            old = first.last_id
            assert old is not None
            await alice.send({"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": ROOM})
            await alice.recv_until(ended_after_deltas(12))
            for stale in (old, "ffffffff-3"):
                async with watch(
                    server.http_url, params=params, headers={"Last-Event-ID": stale}
                ) as w:
                    reset = await w.next()
                    assert reset.event == "reset" and not reset.id
                    start, delta, live = await w.next(), await w.next(), await w.next()
                    assert start.event == "turn.start" and data(start)["npc"] == "merchant"
                    assert delta.event == "delta" and data(delta)["at"] == 0
                    assert not start.id and not delta.id  # the snapshot is not in the log
                    assert len(data(delta)["text"]) >= 12
                    assert live.event == "live" and live.id
                    following = await w.next()
                    assert following.event == "delta"
                    assert data(following)["at"] >= len(data(delta)["text"])
            await alice.send({"t": "interrupt", "id": 2})
            await alice.expect("turn.end")


def ended_after_deltas(count: int) -> Any:
    seen = [0]

    def done(frame: Frame) -> bool:
        seen[0] += frame.get("t") == "delta"
        return seen[0] >= count

    return done


async def test_a_stalled_watcher_is_closed_while_players_stream_on() -> None:
    """A raw socket that stops reading is closed as a slow consumer; the players' turns finish."""
    config = server_config(
        limits={"queue_frames": 16, "write_timeout": 1.0},
        server={"send_buffer_bytes": 4096},
        scripted={"tokens_per_second": 2000, "long_reply_chars": 30_000},
    )
    async with running_server(config) as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as alice, connect(server.url) as bob:
            await member(alice, server, "alice")
            await member(bob, server, "bob")
            stalled = socket.socket()
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            stalled.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(stalled, (server.host, server.port))
            query = f"room={ROOM}&token={watch_token(server)}"
            request = f"GET /watch?{query} HTTP/1.1\r\nHost: x\r\n\r\n"
            await loop.sock_sendall(stalled, request.encode())
            try:
                await wait_until(lambda: watcher_count(server) == 1, what="the watcher")
                await alice.send(
                    {"t": "say", "id": 1, "npc": "merchant", "text": "hi", "room": ROOM}
                )
                await wait_until(lambda: bool(slow_closes(events)), timeout=20, what="a slow close")
                ends = await asyncio.gather(*(c.expect("turn.end", 60) for c in (alice, bob)))
                assert [end["reason"] for end in ends] == ["done", "done"]
                assert watcher_count(server) == 0
            finally:
                stalled.close()
        [closed] = slow_closes(events)
        assert closed.transport == "sse" and closed.player is None


def slow_closes(events: list[NodeEvent]) -> list[Closed]:
    return [
        e
        for e in events
        if isinstance(e, Closed) and e.transport == "sse" and e.code == CloseCode.SLOW_CONSUMER
    ]


def watcher_count(server: RunningServer) -> int:
    return sum(1 for s in server.node.sockets if getattr(s, "transport", "") == "sse")


async def status_of(server: RunningServer, params: dict[str, str]) -> tuple[int, Watch]:
    async with watch(server.http_url, params=params) as w:
        return w.status, w


async def test_bad_expired_or_missing_tokens_are_401() -> None:
    """A bad token, an expired one, a player token or none for a private room: 401."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            expired = issue_watch_token(server.secret, [ROOM], ttl=-5)
            for token in ("nonsense", expired, issue_token(server.secret, "alice")):
                status, _ = await status_of(server, {"room": ROOM, "token": token})
                assert status == 401
            async with watch(server.http_url, params={"room": ROOM}) as w:
                assert w.status == 401
                assert "token" in (await w.source.response.aread()).decode()


async def test_a_room_not_in_the_token_is_403_and_an_unknown_room_404() -> None:
    """A token for another room is 403; a valid token for a room nobody is in is 404."""
    async with running_server() as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            status, _ = await status_of(server, {"room": ROOM, "token": watch_token(server, "x")})
            assert status == 403
            status, _ = await status_of(server, watch_params(server, "empty"))
            assert status == 404
            status, _ = await status_of(server, {"room": "bad room!"})
            assert status == 400


async def test_a_public_room_needs_no_token_even_before_anyone_joins() -> None:
    """Rooms listed in [watch] public_rooms stream to anyone, members or not."""
    config = with_overrides(server_config(), watch={"public_rooms": ("arena",)})
    async with running_server(config) as server:
        async with watch(server.http_url, params={"room": "arena"}) as w:
            live = await w.next()
            assert w.status == 200 and live.event == "live" and data(live)["members"] == []
            async with connect(server.url) as alice:
                await alice.hello(server.token("alice"))
                await alice.send({"t": "join", "id": 1, "room": "arena"})
                presence = await w.next()
                assert presence.event == "presence" and data(presence)["player"] == "alice"


async def test_watchers_past_the_limits_get_429_with_retry_after() -> None:
    """Per room and per address: the watcher over the limit is told 429 and when to retry."""
    for limit in ({"watchers_per_room": 2}, {"watchers_per_address": 2}):
        config = with_overrides(server_config(), watch=limit)
        async with running_server(config) as server:
            async with connect(server.url) as alice:
                await member(alice, server, "alice")
                params = watch_params(server)
                async with watch(server.http_url, params=params) as one:
                    await one.next()
                    async with watch(server.http_url, params=params) as two:
                        await two.next()
                        async with watch(server.http_url, params=params) as three:
                            assert three.status == 429, limit
                            assert int(three.source.response.headers["Retry-After"]) > 0
                async with watch(server.http_url, params=params) as again:
                    assert again.status == 200


async def test_an_idle_stream_gets_keepalive_comments() -> None:
    """A quiet room's stream carries `:` comments at the keep-alive interval."""
    config = with_overrides(
        server_config(limits={"heartbeat": 1.0}), watch={"public_rooms": (ROOM,), "keepalive": 0.2}
    )
    async with running_server(config) as server:
        async with watch(server.http_url, params={"room": ROOM}) as w:
            lines = w.source.response.aiter_lines()
            comments = 0
            async with asyncio.timeout(10):
                async for line in lines:
                    comments += line.startswith(":")
                    if comments >= 2:
                        break
            assert comments == 2


async def test_a_disconnect_releases_the_watcher_and_the_token_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Closing the stream frees the watcher at once; no log line holds the token."""
    caplog.set_level(logging.DEBUG)
    config = with_overrides(server_config(), watch={"watchers_per_address": 1})
    async with running_server(config) as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            params = watch_params(server)
            for _ in range(3):  # the address's one slot is free again each time
                async with watch(server.http_url, params=params) as w:
                    assert w.status == 200
                    await w.next()
                    assert watcher_count(server) == 1
                await wait_until(lambda: watcher_count(server) == 0, what="release")
    server_side = [
        r for r in caplog.records if r.name.startswith(("npc_server", "hypercorn", "quart"))
    ]
    assert server_side, "the server logs nothing at DEBUG: the check would prove nothing"
    assert all(params["token"] not in r.getMessage() for r in server_side)


async def test_a_watch_token_cannot_open_a_player_session() -> None:
    """A watch token in a hello is refused with 4500: watching never grants a seat."""
    async with running_server() as server:
        async with connect(server.url) as mallory:
            await mallory.send({"t": "hello", "token": watch_token(server)})
            assert await mallory.close_code() == CloseCode.AUTH_FAILED


async def test_drain_ends_streams_with_a_draining_event() -> None:
    """On drain a watcher gets `draining` with a retry delay, then the stream ends."""
    from npc_server.app import drain

    async with running_server() as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            async with watch(server.http_url, params=watch_params(server)) as w:
                await w.next()
                draining = asyncio.create_task(drain(server.node, grace=0.1))
                event = await w.next()
                assert event.event == "draining" and data(event)["retry_after"] > 0
                await draining
                assert watcher_count(server) == 0


async def test_a_last_event_id_that_is_no_position_gets_a_reset_and_holds_no_slot() -> None:
    """`Last-Event-ID` naming the log's epoch with a number int() refuses (², an
    Arabic-Indic one, -1): a reset and a snapshot, as for any id the log cannot replay.
    It was a 200 with an empty body and a traceback, and the address's watcher slot
    stayed taken: behind a proxy, everyone's."""
    config = with_overrides(server_config(), watch={"watchers_per_address": 1})
    async with running_server(config) as server:
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            params = watch_params(server)
            async with watch(server.http_url, params=params) as first:
                live = await first.next()
            assert live.id is not None
            epoch = live.id.rpartition("-")[0]
            await wait_until(lambda: watcher_count(server) == 0, what="release")
            for number in ("\u00b2", "\u0661", "-1", ""):  # as ?last_id= (headers are ASCII)
                asked = {**params, "last_id": f"{epoch}-{number}"}
                async with watch(server.http_url, params=asked) as w:
                    assert w.status == 200, number
                    assert (await w.next()).event == "reset"
                await wait_until(lambda: watcher_count(server) == 0, what="release")


async def test_a_refused_watch_is_no_connection_and_an_accepted_one_is_paired_with_its_close() -> (
    None
):
    """400, 401, 403 and 404 answers emit no `connected` (they were counted in
    npc_server_connections_total{transport="sse"} and logged with no `closed`); the
    stream that opens emits `connected`, then `closed` when it ends."""
    from npc_server.events import Connected

    async with running_server() as server:
        events: list[NodeEvent] = []
        server.node.events.subscribe(events.append)
        async with connect(server.url) as alice:
            await member(alice, server, "alice")
            for params, expected in (
                ({"room": "bad room!"}, 400),
                ({"room": ROOM, "token": "nonsense"}, 401),
                ({"room": ROOM, "token": watch_token(server, "x")}, 403),
                (watch_params(server, "empty"), 404),
            ):
                status, _ = await status_of(server, params)
                assert status == expected, params
            assert not [e for e in events if isinstance(e, Connected) and e.transport == "sse"]
            async with watch(server.http_url, params=watch_params(server)) as w:
                assert w.status == 200
                await w.next()
            await wait_until(lambda: any(isinstance(e, Closed) for e in events), what="closed")
        sse = [e for e in events if getattr(e, "transport", None) == "sse"]
        assert [e.KIND for e in sse if e.KIND in ("connected", "closed")] == ["connected", "closed"]


async def test_refused_watch_requests_take_from_the_address_connect_bucket() -> None:
    """Past `connects_burst_address` refused requests, /watch answers 429 with
    Retry-After before any token check (a loop of bad tokens was a log line each,
    unbounded); the bucket is the one WebSocket connects take from. A good request takes
    nothing from it, so watchers are never locked out by their address's reconnects."""
    limits = {"connects_burst_address": 4, "connects_per_s_address": 0.001}
    async with running_server(server_config(limits=limits)) as server:
        async with connect(server.url) as alice:  # takes one
            await member(alice, server, "alice")
            statuses = [
                (await status_of(server, {"room": ROOM, "token": "bad"}))[0] for _ in range(3)
            ]
            assert statuses == [401, 401, 401]
            status, w = await status_of(server, {"room": ROOM, "token": "bad"})
            assert status == 429 and w.source.response.headers["Retry-After"]
            async with watch(server.http_url, params=watch_params(server)) as good:
                assert good.status == 200
            async with connect(server.url) as late:  # the same address's bucket is spent
                assert await late.close_code() == CloseCode.RATE_LIMITED


async def test_a_reconnect_that_is_up_to_date_gets_its_retry_at_once() -> None:
    """Back with the id of the newest event, a watcher has nothing to replay: its stream
    still starts at once with `retry: 1000`, not at the next event or keep-alive (15 s)."""
    async with running_server() as server, connect(server.url) as alice:
        await member(alice, server, "alice")
        params = watch_params(server)
        async with watch(server.http_url, params=params) as first:
            await first.next()  # `live`: the newest event
        last = first.last_id
        assert last is not None
        async with (
            httpx.AsyncClient(base_url=server.http_url) as http,
            http.stream("GET", "/watch", params=params, headers={"Last-Event-ID": last}) as body,
        ):
            assert body.status_code == 200
            chunk = await asyncio.wait_for(anext(body.aiter_raw()), 5.0)
            assert chunk == b"retry: 1000\n"
