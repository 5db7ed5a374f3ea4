"""CPU a node spends per publication in its broker: in memory, on Redis, and leaner variants.

    .venv/bin/python -m benchmarks.broker_cost [--players 500] [--seconds 3]

In one process (uvloop), against a redis-server on loopback: `players`
subscribers (each a counting sink, as a session's queue would be), each on
its own `player:` channel, get a `Delta` at 20 tokens/s; publications are
made in ticks of 5 ms, as a busy node's loop iterations. Reported: this
process's CPU per publication (`time.process_time`) over a window, for

- `memory`: the in-memory broker (one process, the baseline);
- `redis`: `RedisBroker` with no other node listening: after the first
  publication on each channel (answered by this node's own subscription
  alone) it keeps the channel local, as for a player connected to one node;
- `redis_listened`: the same with another process subscribed to every
  channel (`PSUBSCRIBE npc:player:*`, read and discarded outside this
  process), so that every publication goes to Redis and comes back as this
  node's echo: the path of a room spanning nodes;
- `raw_resp`: local delivery plus the envelope written as RESP to a plain
  asyncio connection, replies counted (no redis-py, no echo): the floor of
  a leaner publisher;
- `raw_resp_echo`: the same, with the channels subscribed on a second plain
  connection whose messages hiredis parses and whose own echo is dropped by
  its first bytes: a leaner publisher and reader together.

The differences to `memory` are what the Redis path adds per token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from benchmarks.redis_proc import redis_url, start_redis
from benchmarks.redis_sim import Counting, _resp
from benchmarks.servers import LOAD_CPU, REPO, SERVER_CPU, pin, stop_all
from npc_server.brokers import wire
from npc_server.brokers.memory import MemoryBroker
from npc_server.brokers.redis import PREFIX, RedisBroker
from npc_server.protocol.frames import Delta, ServerFrame

TICK_S = 0.005
Publish = Callable[[str, ServerFrame], None]


class Sink:
    """A subscriber that counts what it gets (a session's queue, without a socket)."""

    def __init__(self, index: int) -> None:
        self.id = f"s{index}"
        self.player = f"u{index}"
        self.count = 0

    def push_nowait(self, frame: ServerFrame) -> None:
        self.count += 1

    def drop_turn_nowait(self, turn: str) -> int:
        return 0


LISTENER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*2\\r\\n$10\\r\\nPSUBSCRIBE\\r\\n$12\\r\\nnpc:player:*\\r\\n")
got = b""
while b"psubscribe" not in got:  # Redis applied it: every PUBLISH counts this listener
    got += s.recv(1024)
print("ready", flush=True)
while s.recv(1 << 20):
    pass
"""


@contextlib.contextmanager
def another_node_listening(port: int) -> Iterator[None]:
    """A process outside this one subscribed to every `player:` channel, reading it all."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


class EchoReader(asyncio.Protocol):
    """Parses pub/sub messages with hiredis; drops this node's own by their first bytes."""

    def __init__(self, own: bytes) -> None:
        import hiredis

        self.reader = hiredis.Reader()
        self.own = own
        self.subscribed = 0
        self.wanted = 0
        self.ready = asyncio.Event()
        self.echoes = 0

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if reply[0] == b"message" and reply[2].startswith(self.own):
                self.echoes += 1
            elif reply[0] == b"subscribe":
                self.subscribed += 1
                if self.subscribed >= self.wanted:
                    self.ready.set()


class RawResp:
    """Local delivery plus one RESP write of PUBLISH commands per tick; replies counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = MemoryBroker()
        self.pending: list[bytes] = []
        self.sent = 0
        self.transport: asyncio.Transport | None = None
        self.echo_transport: asyncio.BaseTransport | None = None
        self.proto = Counting()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, self.proto = await loop.create_connection(Counting, "127.0.0.1", self.port)

    def publish_nowait(self, channel: str, frame: ServerFrame) -> None:
        self.local.publish_nowait(channel, frame)
        data = wire.encode_frame("raw", frame, None)
        self.pending.append(_resp(b"PUBLISH", (PREFIX + channel).encode(), data))

    async def subscribe_echo(self, channels: list[str]) -> None:
        """Subscribe the channels on a second connection: Redis echoes every publication."""
        loop = asyncio.get_running_loop()
        reader = EchoReader(b"\x95" + msgpack.packb([wire.VERSION, "raw"])[1:])
        transport, _ = await loop.create_connection(lambda: reader, "127.0.0.1", self.port)
        for i in range(0, len(channels), 1000):
            names = [(PREFIX + c).encode() for c in channels[i : i + 1000]]
            transport.write(_resp(b"SUBSCRIBE", *names))
        reader.wanted = len(channels)
        async with asyncio.timeout(10):
            await reader.ready.wait()
        self.echo_transport = transport

    def close(self) -> None:
        """Close both connections: a subscriber left open would listen in later variants."""
        for transport in (self.transport, self.echo_transport):
            if transport is not None:
                transport.close()

    async def flush(self) -> None:
        if self.pending and self.transport is not None:
            batch, self.pending = self.pending, []
            self.transport.write(b"".join(batch))
            self.sent += len(batch)
            await self.proto.until(self.sent)


async def _drive(
    publish: Publish, channels: list[str], seconds: float, after: Callable[[], Awaitable[None]]
) -> float:
    """Publish at 20 tokens/s per channel in ticks; CPU seconds per publication."""
    rate = 20.0 * len(channels)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    done = 0
    while (now := time.perf_counter()) - t0 < seconds:
        due = int(rate * (now - t0)) - done
        for i in range(due):
            k = done + i
            publish(channels[k % len(channels)], Delta(f"t-{k % len(channels)}", " dawn,", k % 20))
        done += max(due, 0)
        await after()
        await asyncio.sleep(TICK_S)
    return (time.process_time() - cpu0) / max(done, 1)


async def _variant(name: str, port: int, players: int, seconds: float) -> float:
    sinks = [Sink(i) for i in range(players)]
    channels = [f"player:{s.player}" for s in sinks]

    async def nothing() -> None:
        return None

    if name == "memory":
        memory = MemoryBroker()
        for channel, sink in zip(channels, sinks, strict=True):
            memory.subscribe(channel, sink)
        return await _drive(memory.publish_nowait, channels, seconds, nothing)
    if name in ("raw_resp", "raw_resp_echo"):
        raw = RawResp(port)
        await raw.start()
        if name == "raw_resp_echo":
            await raw.subscribe_echo(channels)
        for channel, sink in zip(channels, sinks, strict=True):
            raw.local.subscribe(channel, sink)
        try:
            return await _drive(raw.publish_nowait, channels, seconds, raw.flush)
        finally:
            raw.close()
    with contextlib.ExitStack() as stack:
        if name == "redis_listened":
            stack.enter_context(another_node_listening(port))
        return await _redis_broker(name, port, channels, sinks, seconds)


async def _redis_broker(
    name: str, port: int, channels: list[str], sinks: list[Sink], seconds: float
) -> float:
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", f"bench-{name}")
    await broker.start()
    try:
        for channel, sink in zip(channels, sinks, strict=True):
            broker.subscribe(channel, sink)
        async with asyncio.timeout(10):
            await broker.wait_subscribed()
        return await _drive(broker.publish_nowait, channels, seconds, _yield)
    finally:
        await broker.aclose()


async def _yield() -> None:
    return None


VARIANTS = ("memory", "redis", "redis_listened", "raw_resp", "raw_resp_echo")


async def run(port: int, players: int, seconds: float, repeats: int) -> dict[str, Any]:
    per: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for name in VARIANTS:
            per[name].append(round(1e6 * await _variant(name, port, players, seconds), 2))
    best = {name: min(values) for name, values in per.items()}
    return {
        "players": players,
        "tokens_per_s": 20 * players,
        "seconds": seconds,
        "us_per_publication": per,
        "best_us": best,
        "added_over_memory_us": {k: round(v - best["memory"], 2) for k, v in best.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.broker_cost", description=__doc__)
    p.add_argument("--players", type=int, default=500)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "broker-cost.json")
    args = p.parse_args(argv)
    run_dir = args.out.parent / "raw" / f"{time.strftime('%Y%m%dT%H%M%S')}-broker-cost"
    redis = start_redis(run_dir, "redis-broker-cost", cpu=LOAD_CPU)
    pin(0, SERVER_CPU)
    try:
        import uvloop

        result = uvloop.run(run(redis.port, args.players, args.seconds, args.repeats))
    finally:
        stop_all()
    result["redis_url"] = redis_url(redis)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
