"""The core protocol over a real Hypercorn socket: talk, interrupt, limits, tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from dataclasses import replace

import pytest

from npc_server.npcs import NpcConfig, load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.session import SessionState
from tests.support.client import Frame, RawClient, connect
from tests.support.healthz import undocumented, undocumented_limits, welcome_example
from tests.support.server import DEMO_NPCS, conversation_of, running_server, server_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

LONG = {"tokens_per_second": 200, "long_reply_chars": 4000}


def text_of(frames: list[Frame], turn: str) -> str:
    deltas = [f for f in frames if f["t"] == "delta" and f["turn"] == turn]
    for before, after in itertools.pairwise(deltas):
        assert after["at"] == before["at"] + len(before["text"]), "deltas must be contiguous"
    return "".join(f["text"] for f in deltas)


async def talk(
    client: RawClient, npc: str, text: str, say_id: int = 1
) -> tuple[Frame, list[Frame]]:
    await client.send({"t": "say", "id": say_id, "npc": npc, "text": text})
    ack = await client.expect("ack")
    frames = await client.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"])
    return ack, frames


async def test_whole_conversation() -> None:
    """hello, welcome, say, ack, turn.start, deltas, turn.end: all with gapless seq."""
    async with running_server() as server, connect(server.url) as client:
        welcome = await client.hello(server.token("alice"))
        assert welcome["player"] == "alice" and not welcome["resumed"]
        assert welcome["limits"]["text_chars"] == 2000 and welcome["server"]["node"]
        assert undocumented_limits(welcome) == set()  # every key is in docs/protocol.md
        example = welcome_example()  # and the example shows a welcome as it is today
        assert (set(example), set(example["limits"])) == (set(welcome), set(welcome["limits"]))
        ack, frames = await talk(client, "merchant", "What wares do you sell?")
        turn = ack["turn"]
        start = next(f for f in frames if f["t"] == "turn.start")
        assert (start["npc"], start["player"], start["reply_to"]) == ("merchant", "alice", 1)
        end = frames[-1]
        text = text_of(frames, turn)
        assert end["reason"] == "done" and end["chars"] == end["kept"] == len(text) > 20
        memory = conversation_of(server, "merchant", "alice").memory.lines()
        assert [m.text for m in memory] == ["What wares do you sell?", text]
        ack2, frames2 = await talk(client, "guard", "Can I pass the gate?", say_id=2)
        assert text_of(frames2, ack2["turn"])


async def test_interrupt_mid_turn() -> None:
    """After interrupt no delta of the turn follows turn.end; kept <= chars; memory = kept."""
    async with (
        running_server(server_config(scripted=LONG)) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"})
        ack = await client.expect("ack")
        frames = await client.recv_until(lambda f: f["t"] == "delta" and f["at"] > 50)
        await client.send({"t": "interrupt", "id": 2, "turn": ack["turn"]})
        frames += await client.recv_until(lambda f: f["t"] == "turn.end")
        end = frames[-1]
        assert end["reason"] == "interrupted"
        assert 50 < end["kept"] <= end["chars"] < 4000
        frames += await client.recv_until(lambda f: f["t"] == "ack" and f["id"] == 2)
        await client.send({"t": "ping", "id": 3, "ts": 42})
        frames += await client.recv_until(lambda f: f["t"] == "pong")
        after_end = frames[frames.index(end) + 1 :]
        assert not [f for f in after_end if f["t"] == "delta"]
        received = text_of(frames, ack["turn"])
        assert len(received) >= end["kept"]
        memory = conversation_of(server, "guard", "alice").memory.lines()
        assert memory[-1].text == received[: end["kept"]]
        assert server.node.limiter.active == 0


async def test_interrupt_with_shown_cuts_memory() -> None:
    """interrupt.shown is what the NPC remembers and what kept reports."""
    async with (
        running_server(server_config(scripted=LONG)) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"})
        await client.recv_until(lambda f: f["t"] == "delta" and f["at"] > 30)
        await client.send({"t": "interrupt", "shown": 12})
        end = await client.expect("turn.end")
        assert end["kept"] == 12
        memory = conversation_of(server, "guard", "alice").memory.lines()
        assert len(memory[-1].text) == 12


async def test_unknown_npc_and_turn_errors() -> None:
    """Requests that name nothing real get errors with their id; the socket stays open."""
    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "dragon", "text": "hi"})
        error = await client.expect("error")
        assert (error["code"], error["id"]) == ("unknown_npc", 1) and "merchant" in error["message"]
        await client.send({"t": "interrupt", "id": 2})
        assert (await client.expect("error"))["code"] == "unknown_turn"
        await client.send({"t": "act", "id": 3, "action": "a-x", "accept": True})
        assert (await client.expect("error"))["code"] == "unknown_action"
        await client.send({"t": "leave", "id": 4, "room": "nowhere"})
        assert (await client.expect("error"))["code"] == "not_in_room"
        await client.send({"t": "ping", "id": 5, "ts": 1})
        assert (await client.expect("pong"))["ts"] == 1


def npcs_with_a_bard(long_chars: int) -> dict[str, NpcConfig]:
    """The demo NPCs plus a bard whose replies are `long_chars` long."""
    npcs = load_npcs(DEMO_NPCS)
    bard = replace(
        npcs["merchant"],
        id="bard",
        backend_settings={**npcs["merchant"].backend_settings, "long_reply_chars": long_chars},
    )
    return {**npcs, "bard": bard}


async def test_stalled_reader_is_closed_4000_and_others_are_not_slowed() -> None:
    """A client that stops reading is closed with 4000 within its queue bound; others go on."""
    config = server_config(
        limits={"queue_bytes": 16_384, "write_timeout": 2.0},
        server={"send_buffer_bytes": 4096},
        scripted={"tokens_per_second": 0},
    )
    async with running_server(config, npcs=npcs_with_a_bard(300_000)) as server:
        async with connect(server.url) as stalled, connect(server.url) as healthy:
            await stalled.hello(server.token("slow"))
            await healthy.hello(server.token("fast"))
            stalled.ws.transport.pause_reading()
            await stalled.send({"t": "say", "id": 1, "npc": "bard", "text": "sing me a song"})
            await wait_until(
                lambda: bool(server.node.hub.sessions_of("slow")[0].last_seq), what="first write"
            )
            [session] = server.node.hub.sessions_of("slow")
            for i in range(3):  # the healthy player talks throughout
                ack, frames = await talk(
                    healthy, "merchant", "what wares do you sell?", say_id=i + 1
                )
                assert frames[-1]["reason"] == "done" and text_of(frames, ack["turn"])
            await wait_until(
                lambda: session.state is SessionState.DETACHED, what="slow session closed"
            )
            bard = conversation_of(server, "bard", "slow")
            await wait_until(lambda: bard.idle, what="the bard to finish while the player is away")
            reply = bard.memory.lines()[-1].text
            assert len(reply) >= 300_000  # generation never slowed down
            stats = session.queue.statistics()
            # Bounded: a few frames, and text only up to the queue bound plus the one
            # turn in flight, which is held (merged) so that a resume loses nothing.
            assert stats.peak_depth <= 4
            assert stats.peak_bytes <= 16_384 + len(reply.encode())
            assert session.state is SessionState.DETACHED
            stalled.ws.transport.resume_reading()
            assert await stalled.close_code(timeout=15) == CloseCode.SLOW_CONSUMER
            assert "too slow" in (stalled.ws.close_reason or "")  # a close names its cause


async def test_bad_frames_get_errors_then_4501() -> None:
    """Garbage, text and non-map frames get bad_frame errors; the third in a row closes 4501."""
    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        await client.send_raw(b"\xc1")
        await client.send({"t": "future"})
        assert (await client.recv())["code"] == "bad_frame"
        assert (await client.recv())["code"] == "unknown_type"
        await client.send_raw("not binary")  # unknown_type reset the streak: 1
        await client.send_raw(b"\x93\x01\x02\x03")  # 2
        await client.send({"t": 7})  # 3
        for _ in range(3):
            assert (await client.recv())["code"] == "bad_frame"
        assert await client.close_code() == CloseCode.PROTOCOL_VIOLATION


async def test_oversized_frame_closes_1009() -> None:
    """A message over limits.frame_bytes closes the socket with 1009."""
    async with running_server(server_config(limits={"frame_bytes": 1024})) as server:
        async with connect(server.url) as client:
            await client.hello(server.token("alice"))
            await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "x" * 2000})
            assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG


async def test_too_long_text_is_an_error_not_a_close() -> None:
    """say.text over text_chars is refused with too_long; the socket stays usable."""
    async with (
        running_server(server_config(limits={"text_chars": 10})) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "x" * 11})
        error = await client.expect("error")
        assert (error["code"], error["id"]) == ("too_long", 1)
        await client.send({"t": "say", "id": 2, "npc": "merchant", "text": "hello"})
        assert (await client.expect("ack"))["id"] == 2


async def test_missing_hello_closes_4500() -> None:
    """No hello within auth_timeout closes with 4500."""
    async with (
        running_server(server_config(auth={"auth_timeout": 0.2})) as server,
        connect(server.url) as client,
    ):
        assert await client.close_code() == CloseCode.AUTH_FAILED


async def test_frame_before_hello_closes_4500() -> None:
    """A say before hello closes with 4500."""
    async with running_server() as server, connect(server.url) as client:
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "hi"})
        assert await client.close_code() == CloseCode.AUTH_FAILED


async def test_bad_token_closes_4500() -> None:
    """A token signed with another secret closes with 4500."""
    async with running_server() as server, connect(server.url) as client:
        from npc_server.tokens import issue_token

        await client.send(
            {"t": "hello", "token": issue_token("another-secret-of-the-same-length-xx", "alice")}
        )
        assert await client.close_code() == CloseCode.AUTH_FAILED


async def test_expired_token_closes_4002() -> None:
    """An expired token closes with 4002 so the client knows to get a new one."""
    async with running_server() as server, connect(server.url) as client:
        await client.send({"t": "hello", "token": server.token("alice", ttl=-10)})
        assert await client.close_code() == CloseCode.TOKEN_EXPIRED


async def test_heartbeat_timeout_closes_4001() -> None:
    """A client that never answers ping is closed with 4001; its session stays resumable."""
    async with (
        running_server(server_config(limits={"heartbeat": 0.2})) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        ping = await client.recv()
        assert ping["t"] == "ping" and "seq" not in ping
        assert await client.close_code() == CloseCode.HEARTBEAT_TIMEOUT
        [session] = server.node.hub.sessions_of("alice")
        assert session.state is SessionState.DETACHED


async def test_heartbeat_answered_keeps_socket_open() -> None:
    """Answering ping with pong keeps the socket alive across several intervals."""
    async with (
        running_server(server_config(limits={"heartbeat": 0.1})) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        for _ in range(5):
            ping = await client.expect("ping")
            await client.send({"t": "pong", "ts": ping["ts"]})
        await client.send({"t": "ping", "id": 1, "ts": 7})
        assert (await client.expect("pong"))["ts"] == 7


async def test_the_pages_send_no_referrer() -> None:
    """/play and /play/watch.html take a token in their URL: they and their assets say
    `Referrer-Policy: no-referrer`, so the requests they make do not carry it on."""
    import httpx

    async with running_server() as server, httpx.AsyncClient(base_url=server.http_url) as http:
        for path in ("/play", "/play/watch.html", "/play/app.js", "/play/style.css"):
            answer = await http.get(path, params={"token": "t"})
            assert answer.status_code == 200 and answer.content
            assert answer.headers["Referrer-Policy"] == "no-referrer"


async def test_healthz() -> None:
    """GET /healthz reports ok, the NPCs and live counts."""
    import json
    import urllib.request

    async with running_server() as server:
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(server.http_url + "/healthz", timeout=5).read()
        )
        health = json.loads(body)
        assert health["status"] == "ok" and health["npcs"] == ["guard", "merchant", "questgiver"]
        assert health["sessions"] == 0 and health["generations"] == 0
        assert undocumented(health) == set()  # every field is in docs/protocol.md


@pytest.mark.parametrize("enabled", [False, True])
async def test_websocket_compression_follows_the_setting(enabled: bool) -> None:
    """permessage-deflate is refused unless websocket_compression is on."""
    config = server_config(server={"websocket_compression": enabled})
    async with (
        running_server(config) as server,
        connect(server.url, compression="deflate") as client,
    ):
        await client.hello(server.token("alice"))
        extensions = (
            client.ws.response.headers.get("Sec-WebSocket-Extensions")
            if client.ws.response
            else None
        )
        assert (extensions is not None) is enabled
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
        assert (await client.expect("turn.end"))["reason"] == "done"


async def test_context_changes_the_npcs_next_turns() -> None:
    """context{data} is game state for the NPC's next turns: the guard shuts the gate at night."""

    async def ask_gate(client: RawClient, say_id: int) -> str:
        ack, frames = await talk(client, "guard", "can I pass the gate?", say_id=say_id)
        return text_of(frames, ack["turn"])

    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        day = await ask_gate(client, 1)
        await client.send({"t": "context", "id": 2, "data": {"time": "night"}, "npc": "guard"})
        assert (await client.expect("ack"))["id"] == 2
        night = await ask_gate(client, 3)
        assert "dawn" in night and ("Shut" in night or "shut" in night)
        assert "Shut" not in day and "shut till" not in day
        await client.send({"t": "context", "id": 4, "data": {"time": "noon"}})
        await client.expect("ack")
        await client.send({"t": "context", "id": 5, "data": {"x": 1}, "npc": "dragon"})
        assert (await client.expect("error"))["code"] == "unknown_npc"


async def test_generation_cap_answers_busy_and_recovers() -> None:
    """Past max_generations a say gets busy with retry_after; once a turn ends, says work again."""
    config = server_config(limits={"max_generations": 1}, scripted=LONG)
    async with running_server(config) as server:
        async with connect(server.url) as alice, connect(server.url) as bob:
            await alice.hello(server.token("alice"))
            await bob.hello(server.token("bob"))
            await alice.send(
                {"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"}
            )
            await alice.expect("delta")
            await bob.send({"t": "say", "id": 1, "npc": "merchant", "text": "hello"})
            error = await bob.expect("error")
            assert (error["code"], error["id"]) == ("busy", 1)
            assert error["retry_after"] > 0
            await alice.send({"t": "interrupt"})
            await alice.expect("turn.end")
            await bob.send({"t": "say", "id": 2, "npc": "merchant", "text": "hello"})
            assert (await bob.expect("turn.end"))["reason"] == "done"


async def test_latest_seen_is_the_cut_when_interrupt_has_no_shown() -> None:
    """seen{turn, shown} then a bare interrupt: kept and the NPC's memory end at that seen."""
    async with (
        running_server(server_config(scripted=LONG)) as server,
        connect(server.url) as client,
    ):
        await client.hello(server.token("alice"))
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "tell me about the gate"})
        turn = (await client.expect("ack"))["turn"]
        await client.recv_until(lambda f: f["t"] == "delta" and f["at"] > 40)
        await client.send({"t": "seen", "id": 2, "turn": turn, "shown": 9})
        await client.recv_until(lambda f: f["t"] == "ack" and f["id"] == 2)
        await client.send({"t": "interrupt"})
        end = await client.recv_until(lambda f: f["t"] == "turn.end")
        assert (end[-1]["reason"], end[-1]["kept"]) == ("interrupted", 9)
        memory = conversation_of(server, "guard", "alice").memory.lines()
        assert len(memory[-1].text) == 9


async def test_dev_tokens_refuse_bodies_that_do_not_fit_with_400() -> None:
    """/dev/token and /dev/watch-token (development mode): bytes that are not UTF-8, JSON
    nested past the parser, not an object, a name the token check would refuse later:
    400 (the first two were 500s), and a good body still gets its token."""
    import httpx

    JSON_TYPE = {"Content-Type": "application/json"}
    bodies = [b'{"player": "\xff"}', b"[" * 100_000, b"[1]", b"", b'{"player": "a\\u0000b"}']
    bodies += [b'{"room": "\xff"}', b'{"room": "a room"}']
    development = dataclasses.replace(server_config(), secret=None)
    async with (
        running_server(development) as server,
        httpx.AsyncClient(base_url=server.http_url) as http,
    ):
        for path in ("/dev/token", "/dev/watch-token"):
            for body in bodies:
                answer = await http.post(path, content=body, headers=JSON_TYPE)
                assert answer.status_code == 400, (path, body[:20])
        good = await http.post("/dev/token", json={"player": "alice"})
        assert good.status_code == 200 and good.json()["dev"] is True
        # The player ids hello accepts, no fewer: 128 characters (it stopped at 64).
        longest = await http.post("/dev/token", json={"player": "p" * 128})
        assert longest.status_code == 200
        too_long = await http.post("/dev/token", json={"player": "p" * 129})
        assert too_long.status_code == 400 and "1 to 128" in too_long.text
        room = await http.post("/dev/watch-token", json={"room": "inn"})
        assert room.status_code == 200 and room.json()["token"]


async def test_a_hello_whose_client_is_not_a_string_is_welcomed() -> None:
    """`hello.client` is informative: a v1 client that sends another type is served."""
    async with running_server() as server, connect(server.url) as client:
        await client.send({"t": "hello", "token": server.token("alice"), "client": 5})
        welcome = await client.recv()
        assert welcome["t"] == "welcome" and welcome["player"] == "alice"
