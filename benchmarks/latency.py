"""Client side of the request/response figures: ping RTT, push rate, say, interrupt.

Each function runs in the load process against a server started by the
runner and returns plain JSON-able figures (latencies summarised in ms).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack

from benchmarks.player import Player, ProtocolFailure, close_players, open_players
from benchmarks.probe import CpuWindow, ServerProbe
from benchmarks.stats import summarize
from benchmarks.wsclient import WsClient, connect

Params = dict[str, Any]
Tokens = Callable[[str], str]
Result = dict[str, Any]
SAY_TEXT = "Tell me about the gate."
NPC = "guard"


async def npc_rtt(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """Sequential protocol pings: `ping{id, ts}` -> `pong{ts}` on one authenticated socket."""
    player = Player("rtt")
    await player.open(probe.host, probe.port, tokens(player.name))
    samples: list[float] = []
    window = CpuWindow(probe)
    try:
        for i in range(params["warmup"] + params["samples"]):
            sent = player.send({"t": "ping", "id": i, "ts": i})
            frame, at = await player.expect("pong")
            if frame.get("ts") != i:
                raise ProtocolFailure(f"pong for ts {frame.get('ts')}, expected {i}")
            if i >= params["warmup"]:
                samples.append(at - sent)
    finally:
        player.close()
    return {"rtt": summarize(samples), "other_cpu_pct": window.close()["other_cpu_pct"]}


async def echo_rtt(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """Sequential echoes of the same msgpack bytes as the protocol ping, on a bare server."""
    arrivals: deque[tuple[bytes, float]] = deque()
    ready = asyncio.Event()

    def on_message(data: bytes, at: float) -> None:
        arrivals.append((data, at))
        ready.set()

    client = await connect(probe.host, probe.port, "/ws", on_message)
    samples: list[float] = []
    window = CpuWindow(probe)
    try:
        for i in range(params["warmup"] + params["samples"]):
            payload = msgpack.packb({"t": "ping", "id": i, "ts": i})
            ready.clear()
            sent = time.perf_counter()  # before the write: see Player.send
            client.send(payload)
            async with asyncio.timeout(10):
                while not arrivals:
                    await ready.wait()
                    ready.clear()
            data, at = arrivals.popleft()
            if data != payload:
                raise ProtocolFailure("the echo differs from what was sent")
            if i >= params["warmup"]:
                samples.append(at - sent)
        other = window.close()["other_cpu_pct"]
        push = (
            await _push(client, probe, params, arrivals, ready) if params["push_frames"] else None
        )
    finally:
        client.close()
    return {"rtt": summarize(samples), "push": push, "other_cpu_pct": other}


async def _push(
    client: WsClient,
    probe: ServerProbe,
    params: Params,
    arrivals: deque[tuple[bytes, float]],
    ready: asyncio.Event,
) -> Result:
    """Ask a bare server to push frames as fast as it can; frames/s and CPU per frame."""
    count, size = params["push_frames"], params["push_size"]
    arrivals.clear()
    cpu0, t0 = probe.cpu_seconds(), time.perf_counter()
    client.send(f"PUSH {count} {size}".encode())
    async with asyncio.timeout(120):
        while not arrivals or arrivals[-1][0] != b"DONE":
            await ready.wait()
            ready.clear()
    elapsed = arrivals[-1][1] - t0
    cpu = probe.cpu_seconds() - cpu0
    received = len(arrivals) - 1
    return {
        "frames": received,
        "frame_bytes": size,
        "frames_per_s": round(received / elapsed, 1),
        "server_cpu_us_per_frame": round(1e6 * cpu / max(received, 1), 2),
    }


async def say_latency(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """say -> ack, and say -> first delta minus the configured first-token delay."""
    first_token_s = params["first_token_ms"] / 1000
    player = Player("say")
    await player.open(probe.host, probe.port, tokens(player.name))
    acks: list[float] = []
    firsts: list[float] = []
    try:
        warmup = params["warmup"]  # the first say builds the NPC's backend and conversation
        for i in range(warmup + params["samples"]):
            sent = player.send({"t": "say", "id": i, "npc": NPC, "text": SAY_TEXT})
            ack, ack_at = await player.expect_match("ack", id=i)
            _, first_at = await player.expect("delta")
            if i >= warmup:
                acks.append(ack_at - sent)
                firsts.append(first_at - sent - first_token_s)
            player.send({"t": "interrupt", "id": f"i{i}", "turn": ack["turn"]})
            await player.expect_match("turn.end", turn=ack["turn"])
            await player.expect_match("ack", id=f"i{i}")
            await asyncio.sleep(params["gap_s"])
    finally:
        player.close()
    return {
        "ack": summarize(acks),
        "first_delta_minus_delay": summarize(firsts),
        "first_token_ms": params["first_token_ms"],
    }


async def interrupt_latency(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """interrupt -> turn.end while `players` stream at once; deltas after turn.end counted.

    Each cycle also times one ping -> pong sent the same way (right after a
    delta arrived, mid-stream), so the two can be compared like for like: a
    request that finds the server idle for tens of ms costs more than one in
    a back-to-back ping loop, because the CPU has to wake up first.
    """
    count = params["players"]
    players = await open_players(count, probe.host, probe.port, tokens, prefix="int")
    rng = random.Random(7)
    latencies: list[float] = []
    pings: list[float] = []
    late = {"deltas_after_end": 0, "wrong_reason": 0}
    window = CpuWindow(probe)

    async def cycles(player: Player, start_delay: float, waits: list[int]) -> None:
        await asyncio.sleep(start_delay)
        for cycle, wait_deltas in enumerate(waits):
            player.send({"t": "say", "id": cycle, "npc": NPC, "text": SAY_TEXT})
            ack, _ = await player.expect_match("ack", 30, id=cycle)
            turn = ack["turn"]
            for _ in range(wait_deltas):
                await player.expect("delta", 30)
            sent = player.send({"t": "ping", "id": f"p{cycle}", "ts": cycle})
            _, pong_at = await player.expect_match("pong", 30, ts=cycle)
            pings.append(pong_at - sent)
            await player.expect("delta", 30)
            sent = player.send({"t": "interrupt", "id": f"x{cycle}", "turn": turn})
            end, end_at = await player.expect_match("turn.end", 30, turn=turn)
            latencies.append(end_at - sent)
            late["wrong_reason"] += end.get("reason") != "interrupted"
            late["deltas_after_end"] += await _late_deltas(player, turn, params["grace_s"])

    try:
        async with asyncio.timeout(params["timeout_s"]):
            await asyncio.gather(
                *(
                    cycles(
                        p,
                        rng.uniform(0, params["stagger_s"]),
                        [rng.randint(1, 4) for _ in range(params["cycles"])],
                    )
                    for p in players
                )
            )
    finally:
        cpu = window.close()
        close_players(players)
    return {
        "players": count,
        "cycles": len(latencies),
        "latency": summarize(latencies),
        "ping_in_stream": summarize(pings),
        **late,
        "server_cpu_pct": cpu["server_cpu_pct"],
        "client_cpu_pct": cpu["client_cpu_pct"],
        "other_cpu_pct": cpu["other_cpu_pct"],
    }


async def _late_deltas(player: Player, turn: str, grace_s: float) -> int:
    """Deltas of `turn` that arrive within `grace_s` after its turn.end (must be none)."""
    late = 0
    deadline = time.perf_counter() + grace_s
    while (left := deadline - time.perf_counter()) > 0:
        try:
            frame, _ = await player.recv(left)
        except TimeoutError:
            break
        late += frame.get("t") == "delta" and frame.get("turn") == turn
    return late
