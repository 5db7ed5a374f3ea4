"""Client-negotiated pacing (`hello.delta_ms`) over a real Hypercorn socket.

Write times are the server's: a hook on the session records `node.clock()`
as each frame is handed to the socket, so nothing here rests on the client's
wall clock.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Delta, ServerFrame
from tests.support.client import Frame, RawClient, connect
from tests.support.server import (
    RunningServer,
    conversation_of,
    running_server,
    server_config,
)

pytestmark = pytest.mark.e2e

# A fast stream: a piece every 2.5 ms, so a 50 ms window merges about 20.
FAST = {"tokens_per_second": 400, "long_reply_chars": 1200}
PROMPT = "tell me about the gate"


async def paced_hello(
    server: RunningServer, client: RawClient, player: str, delta_ms: int | None
) -> tuple[Frame, list[tuple[float, ServerFrame]]]:
    """hello with `delta_ms`; the welcome and a list the server's writes are recorded in."""
    frame: dict[str, Any] = {"t": "hello", "token": server.token(player)}
    if delta_ms is not None:
        frame["delta_ms"] = delta_ms
    await client.send(frame)
    welcome = await client.expect("welcome")
    session = server.node.hub.get(welcome["session"])
    assert session is not None
    writes: list[tuple[float, ServerFrame]] = []
    node_written, clock = session.on_written, server.node.clock

    def record(written: ServerFrame) -> None:
        writes.append((clock(), written))
        node_written(written)

    session.on_written = record
    return welcome, writes


async def say_and_read(client: RawClient, say_id: int = 1) -> tuple[str, list[Frame]]:
    await client.send({"t": "say", "id": say_id, "npc": "guard", "text": PROMPT})
    ack = await client.expect("ack")
    frames = await client.recv_until(lambda f: f["t"] == "turn.end" and f["turn"] == ack["turn"])
    return str(ack["turn"]), frames


def text_of(frames: list[Frame], turn: str) -> str:
    deltas = [f for f in frames if f["t"] == "delta" and f["turn"] == turn]
    for before, after in itertools.pairwise(deltas):
        assert after["at"] == before["at"] + len(before["text"]), "deltas must be contiguous"
    return "".join(f["text"] for f in deltas)


def delta_times(writes: list[tuple[float, ServerFrame]]) -> list[float]:
    return [at for at, frame in writes if isinstance(frame, Delta)]


async def test_welcome_grants_delta_ms_capped_by_config() -> None:
    """welcome.limits.delta_ms is 0 unless asked, what was asked, or the configured cap."""
    config = server_config(limits={"max_delta_ms": 200})
    async with running_server(config) as server:
        for asked, granted in ((None, 0), (50, 50), (5000, 200)):
            async with connect(server.url) as client:
                welcome, _ = await paced_hello(server, client, f"p{asked}", asked)
                assert welcome["limits"]["delta_ms"] == granted


async def test_negative_delta_ms_is_refused_with_a_clear_error() -> None:
    """A bad hello.delta_ms is closed with 4500 (as any bad hello) naming the key, and opens no session."""
    async with running_server() as server, connect(server.url) as client:
        await client.send({"t": "hello", "token": server.token("alice"), "delta_ms": -1})
        assert await client.close_code() == CloseCode.AUTH_FAILED
        assert "hello.delta_ms" in (client.ws.close_reason or "")
        assert not server.node.hub.sessions_of("alice")


async def test_paced_stream_merges_deltas_spaced_by_the_window() -> None:
    """delta_ms=50: fewer, merged deltas, >= ~50 ms apart on the server's clock, same text."""
    async with running_server(server_config(scripted=FAST)) as server:
        async with connect(server.url) as client:
            welcome, writes = await paced_hello(server, client, "alice", 50)
            assert welcome["limits"]["delta_ms"] == 50
            turn, frames = await say_and_read(client)
            generated = conversation_of(server, "guard", "alice").memory.lines()[-1].text
    text = text_of(frames, turn)
    assert text == generated and len(text) == frames[-1]["chars"] > 500
    times = delta_times(writes)
    assert len(times) == sum(1 for f in frames if f["t"] == "delta")
    assert len(times) * 4 < len(text.split()), "a piece per word: deltas must have merged"
    # The last delta may go early: turn.end flushes what waits, in order.
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert gaps and min(gaps) >= 0.045
    assert [type(frame).__name__ for _, frame in writes[-2:]] == ["Delta", "TurnEnd"]


async def test_turn_end_is_not_delayed_behind_a_held_delta() -> None:
    """With a 5 s window, turn.end goes as soon as the turn ends, held text just before it."""
    config = server_config(limits={"max_delta_ms": 5000}, scripted=FAST)
    async with running_server(config) as server, connect(server.url) as client:
        _, writes = await paced_hello(server, client, "alice", 5000)
        turn, frames = await say_and_read(client)
    assert len(text_of(frames, turn)) == frames[-1]["chars"]
    kinds = [type(frame).__name__ for _, frame in writes]
    assert kinds[-2:] == ["Delta", "TurnEnd"] and kinds.count("Delta") == 2
    first_delta, end = delta_times(writes)[0], writes[-1][0]
    assert end - first_delta < 4.0, "turn.end waited for the pacing window"


async def test_interrupt_in_a_held_window_sends_no_delta_after_turn_end() -> None:
    """Deltas held in the window are dropped by an interrupt; none follows turn.end."""
    config = server_config(limits={"max_delta_ms": 5000}, scripted={"tokens_per_second": 200})
    async with running_server(config) as server, connect(server.url) as client:
        _, writes = await paced_hello(server, client, "alice", 5000)
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": PROMPT})
        ack = await client.expect("ack")
        frames = await client.recv_until(lambda f: f["t"] == "delta")
        await client.send({"t": "interrupt", "id": 2, "turn": ack["turn"]})
        frames += await client.recv_until(lambda f: f["t"] == "turn.end")
        end = frames[-1]
        await client.send({"t": "ping", "id": 3, "ts": 1})
        after = await client.recv_until(lambda f: f["t"] == "pong")
    assert end["reason"] == "interrupted"
    assert not [f for f in after if f["t"] == "delta"]
    assert len(delta_times(writes)) == 1
    assert end["kept"] <= len(text_of(frames, ack["turn"]))
