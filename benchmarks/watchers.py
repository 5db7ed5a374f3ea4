"""`python -m benchmarks.watchers`: watchers of one busy room over SSE vs WebSocket members.

For each size N, two fresh servers in the same run, each pinned to core 0
(the load on core 1): one with N SSE watchers of the room, one with N
WebSocket members of it. In both, one speaker keeps the room's NPC talking
(a new `say` as soon as a turn ends), and one more SSE watcher counts the
events the room publishes. The N members are N sockets of one player, so
that joining costs one `presence` rather than N^2; each socket's session
gets every room frame, as a member's does. Server CPU (user + system, from /proc) over the
measured window, divided by what was delivered:

- per delivered event: CPU / (events the room published x N readers);
- per delivered message: CPU / (SSE events or WebSocket frames counted at
  the readers; sockets may merge a turn's queued deltas into one frame).

The NPC's pace is chosen per N so that the server stays below saturation
(about `DELIVERIES_PER_S` deliveries a second) at the same rate for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import psutil
import websockets

from benchmarks.servers import Proc, install_cleanup, pin, raise_nofile, start_npc_server
from npc_server.tokens import issue_token

SECRET = "bench-watchers-secret-of-at-least-32-bytes"
ROOM = "arena"
DELIVERIES_PER_S = 20_000
SIZES = (100, 1000, 5000)
QUICK_SIZES = (100, 500)
EVENT = b"\nevent: "


@dataclass(frozen=True)
class Measured:
    transport: str
    readers: int
    tokens_per_second: float
    seconds: float
    cpu_s: float
    room_events: int
    delivered_messages: int
    us_per_event: float
    us_per_message: float
    readers_lost: int


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.lost = 0


def watch_request(room: str) -> bytes:
    return f"GET /watch?room={room} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()


async def sse_reader(
    host: str, port: int, counter: Counter, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    """A raw SSE reader: counts `event:` lines, never parses JSON (the server is measured)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(watch_request(ROOM))
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"watch refused: {head[:80]!r}")
        ready.set()
        while data := await reader.read(65536):
            counter.messages += data.count(EVENT) + data.startswith(b"event: ")
    finally:
        counter.lost += not stop.is_set()
        writer.close()


async def ws_member(
    url: str, player: str, counter: Counter, ready: asyncio.Event, stop: asyncio.Event
) -> None:
    async with websockets.connect(url, compression=None, max_queue=None) as ws:
        await ws.send(msgpack.packb({"t": "hello", "token": issue_token(SECRET, player)}))
        await ws.recv()
        await ws.send(msgpack.packb({"t": "join", "id": 1, "room": ROOM}))
        ready.set()
        try:
            async for data in ws:
                counter.messages += 1
                if isinstance(data, bytes) and len(data) < 40 and b"\xa4ping" in data:
                    ts = msgpack.unpackb(data).get("ts")
                    await ws.send(msgpack.packb({"t": "pong", "ts": ts}))
        finally:
            counter.lost += not stop.is_set()


async def speaker(url: str, stop: asyncio.Event) -> None:
    """Keeps the room busy: says again to the merchant whenever its turn ends."""
    async with websockets.connect(url, compression=None, max_queue=None) as ws:
        await ws.send(msgpack.packb({"t": "hello", "token": issue_token(SECRET, "speaker")}))
        await ws.recv()
        await ws.send(msgpack.packb({"t": "join", "id": "j", "room": ROOM}))
        request = 0
        while not stop.is_set():
            request += 1
            say = {"t": "say", "id": request, "npc": "merchant", "text": "hi", "room": ROOM}
            await ws.send(msgpack.packb(say))
            async for data in ws:
                frame = msgpack.unpackb(data)
                if frame.get("t") == "ping":
                    await ws.send(msgpack.packb({"t": "pong", "ts": frame.get("ts")}))
                if frame.get("t") in ("turn.end", "error") or stop.is_set():
                    break


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def connect_all(
    count: int,
    start: Callable[[int, asyncio.Event], Coroutine[Any, Any, None]],
    tasks: list[Any],
) -> None:
    """Open `count` readers, 100 at a time, until each says it is ready."""
    for first in range(0, count, 100):
        batch = [asyncio.Event() for _ in range(min(100, count - first))]
        for offset, ready in enumerate(batch):
            tasks.append(asyncio.create_task(start(first + offset, ready)))
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in batch)), 60)


async def measure(
    server: Proc, transport: str, readers: int, pace: float, seconds: float
) -> Measured:
    host, port = server.host, server.port
    url = f"ws://{host}:{port}/ws"
    counter, reference, stop = Counter(), Counter(), asyncio.Event()
    tasks: list[Any] = []

    async def start(index: int, ready: asyncio.Event) -> None:
        if transport == "sse":
            await sse_reader(host, port, counter, ready, stop)
        else:
            await ws_member(url, "audience", counter, ready, stop)

    try:
        await connect_all(readers, start, tasks)
        ref_ready = asyncio.Event()
        tasks.append(asyncio.create_task(sse_reader(host, port, reference, ref_ready, stop)))
        await ref_ready.wait()
        tasks.append(asyncio.create_task(speaker(url, stop)))
        await asyncio.sleep(2.0)  # warm up: the first turn is under way
        cpu0, events0, messages0 = cpu_seconds(server.pid), reference.messages, counter.messages
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        cpu = cpu_seconds(server.pid) - cpu0
        elapsed = time.perf_counter() - t0
        events, messages = reference.messages - events0, counter.messages - messages0
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    deliveries = max(1, events * readers)
    return Measured(
        transport,
        readers,
        pace,
        round(elapsed, 2),
        round(cpu, 3),
        events,
        messages,
        round(cpu / deliveries * 1e6, 2),
        round(cpu / max(1, messages) * 1e6, 2),
        counter.lost,
    )


def server_env(readers: int) -> dict[str, str]:
    big = str(readers + 10)
    return {
        "NPC_SERVER_WATCH_PUBLIC_ROOMS": ROOM,
        "NPC_SERVER_WATCH_WATCHERS_PER_ROOM": big,
        "NPC_SERVER_WATCH_WATCHERS_PER_ADDRESS": big,
        "NPC_SERVER_LIMITS_ROOM_MEMBERS": big,
        # The members are one player's sockets: N joins would cost N^2 presence frames.
        "NPC_SERVER_LIMITS_MAX_SOCKETS_PER_PLAYER": big,
        "NPC_SERVER_LIMITS_CONNECTS_PER_S_PLAYER": "1000000",
        "NPC_SERVER_LIMITS_CONNECTS_BURST_PLAYER": "1000000",
    }


def pace_for(readers: int) -> float:
    return max(2.0, min(40.0, DELIVERIES_PER_S / readers))


async def run_size(readers: int, seconds: float, run_dir: Path) -> list[Measured]:
    pace = pace_for(readers)
    scripted = {"first_token_ms": 0, "tokens_per_second": pace, "long_reply_chars": 4000}
    results = []
    for transport in ("sse", "websocket"):
        server = start_npc_server(
            f"watchers-{transport}-{readers}", run_dir, SECRET, scripted, server_env(readers)
        )
        try:
            pin(server.pid, 0)
            results.append(await measure(server, transport, readers, pace, seconds))
        finally:
            server.stop()
    return results


def table(rows: list[Measured]) -> str:
    head = "| readers | transport | NPC tokens/s | room events | CPU s | µs CPU / event"
    head += " delivered | µs CPU / message | readers lost |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.readers} | {r.transport} | {r.tokens_per_second:g} | {r.room_events} | "
            f"{r.cpu_s} | {r.us_per_event} | {r.us_per_message} | {r.readers_lost} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watchers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, 5 s each")
    parser.add_argument("--sizes", type=int, nargs="*", help=f"readers per run (default {SIZES})")
    parser.add_argument("--seconds", type=float, help="measured window per run (default 10)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/watchers.json"))
    args = parser.parse_args(argv)
    install_cleanup()
    raise_nofile(65536)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    run_dir = Path(os.environ.get("NPC_BENCH_RUN_DIR", "/tmp/npc-bench-watchers"))
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Measured] = []
    for readers in sizes:
        rows.extend(asyncio.run(run_size(readers, seconds, run_dir)))
        print("\n".join(table(rows[-2:]).splitlines()[2:]), flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
