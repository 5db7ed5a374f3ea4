"""What one redis-server costs per streamed token, and where it saturates: a load simulation.

    .venv/bin/python -m benchmarks.redis_sim            # the sweep below, ~2 minutes
    .venv/bin/python -m benchmarks.redis_sim --quick    # a few points, ~20 s

Many simulated nodes run against one redis-server on loopback (`--save ""`),
each doing what `RedisBroker` does (npc_server/brokers/redis.py): a publishing
connection that sends, once per loop tick, one pipeline of `PUBLISH` commands
(a wire envelope of a real `Delta` frame each, `brokers.wire.encode_frame`)
and waits for its replies before the next; and a subscribing connection
subscribed to its share of channels: `session:` and `player:` of each of its
players (so Redis echoes every publication back to its origin, as it does to
a real node) and the `room:` channels of rooms with a member on it. A
fraction `cross` of the players stream into a room of two whose other member
is on another node, so those tokens are delivered twice. Each player streams
at `rate` tokens/s (turns of 20 pieces, as the scripted guard).

Measured per point (INFO deltas over the window, after a warm-up): Redis's
own CPU (`used_cpu_sys` + `used_cpu_user`) per published token and in % of
a core, commands/s, bytes in and out per second and per token, memory, and
whether the simulated nodes kept up with their token rate. Redis is pinned
to one core and the simulated nodes to the other, several nodes per process
(asyncio tasks, each with its own two connections).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import redis_proc
from benchmarks.servers import LOAD_CPU, REPO, SERVER_CPU, Proc, spawn, stop_all
from npc_server.brokers.wire import encode_frame
from npc_server.protocol.frames import Delta

Result = dict[str, Any]
RESULTS = REPO / "benchmarks" / "results"
TICK_S = 0.005  # a busy node's loop iteration; one pipeline per tick
PIECES = ("The", " curfew?", " Dusk", " to", " dawn,", " every", " night,", " feast")
START_SLACK_S = 30.0  # for every process to import and connect
MAX_BATCH = 20_000  # commands in one pipeline at most: a node that fell behind stays behind
ENVELOPES = 20  # distinct envelopes (a turn's pieces) per node, reused round-robin


@dataclass(frozen=True, slots=True)
class Point:
    nodes: int
    players: int
    rate: float = 20.0
    cross: float = 0.5
    seconds: float = 4.0
    warmup_s: float = 1.0

    @property
    def tokens_per_s(self) -> float:
        return self.players * self.rate


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


class Counting(asyncio.Protocol):
    """Counts what arrives: bytes, and replies (each an integer or a short line, one CRLF)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self.waiter: asyncio.Future[None] | None = None
        self.want = 0

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        self.lines += data.count(b"\r\n")
        if self.waiter is not None and self.lines >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    async def until(self, lines: int) -> None:
        while self.lines < lines:
            self.want = lines
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


def layout(point: Point) -> list[tuple[int, int]]:
    """(first player, players) of each node: as even as can be."""
    per = [len(range(i, point.players, point.nodes)) for i in range(point.nodes)]
    return [(sum(per[:i]), per[i]) for i in range(point.nodes)]


def room_players(index: int, first: int, count: int, cross: float) -> list[int]:
    """The players of node `index` who stream into a room shared with the next node."""
    rng = random.Random(index)
    return [first + p for p in range(count) if rng.random() < cross]


class SimNode:
    """One simulated node: its players' channels, a publisher and a subscriber connection."""

    def __init__(self, index: int, point: Point) -> None:
        self.node_id = f"sim{index:03d}"
        nodes = layout(point)
        first, count = nodes[index]
        self.rate = count * point.rate
        in_rooms = set(room_players(index, first, count, point.cross))
        prev = (index - 1) % point.nodes
        # The rooms of the previous node's players have their other member here.
        guests = room_players(prev, *nodes[prev], point.cross) if point.nodes > 1 else []
        players = range(first, first + count)
        self.channels = [f"npc:room:r{p}" if p in in_rooms else f"npc:player:u{p}" for p in players]
        own = [f"npc:{kind}:u{p}" for p in players for kind in ("session", "player")]
        rooms = [f"npc:room:r{p}" for p in sorted(in_rooms)]
        self.subscribed = own + rooms + [f"npc:room:r{p}" for p in guests]
        # PUBLISH <channel> <envelope>: the channel part per player, the envelopes per node.
        self.heads = [b"*3\r\n$7\r\nPUBLISH\r\n" + _bulk(c.encode()) for c in self.channels]
        self.bodies = [_bulk(e) for e in self._envelopes()]
        self.published = 0
        self.behind = 0.0

    def _envelopes(self) -> list[bytes]:
        turn = f"t-{self.node_id}-{len(self.channels):06d}"
        frames = (Delta(turn=turn, text=PIECES[k % len(PIECES)], at=k) for k in range(ENVELOPES))
        return [encode_frame(self.node_id, frame, None) for frame in frames]

    def batch(self, count: int) -> bytes:
        """`count` PUBLISH commands, round-robin over the players."""
        heads, bodies = self.heads, self.bodies
        players, start = len(heads), self.published
        parts = []
        for k in range(start, start + count):
            parts.append(heads[k % players])
            parts.append(bodies[(k // players) % ENVELOPES])
        return b"".join(parts)


async def _connect(port: int) -> tuple[asyncio.Transport, Counting]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Counting, "127.0.0.1", port)
    return transport, proto


async def run_node(node: SimNode, port: int, until: float, stop: asyncio.Event) -> Result:
    """Subscribe, then publish at the node's token rate in one pipeline per tick until stopped."""
    sub_t, sub = await _connect(port)
    for i in range(0, len(node.subscribed), 1000):
        sub_t.write(_resp(b"SUBSCRIBE", *(c.encode() for c in node.subscribed[i : i + 1000])))
    pub_t, pub = await _connect(port)
    t0 = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) < until and not stop.is_set():
        due = min(int(node.rate * (now - t0)) - node.published, MAX_BATCH)
        if due > 0:
            pub_t.write(node.batch(due))
            node.published += due
            sent += due
            await pub.until(sent)  # as RedisBroker: the next pipeline waits for this one
        await asyncio.sleep(TICK_S)
    node.behind = max(0.0, node.rate * (time.perf_counter() - t0) - node.published)
    pub_t.close()
    sub_t.close()
    return {"published": node.published, "behind": round(node.behind), "received": sub.bytes}


async def run_group(spec: Result) -> list[Result]:
    """Several simulated nodes in this process, started together."""
    point = Point(**spec["point"])
    nodes = [SimNode(i, point) for i in spec["nodes"]]
    # The orchestrator starts its window once every node of every process is connected,
    # and stops the process (SIGTERM) after it; `until` only bounds a lost orchestrator.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    until = time.perf_counter() + 2 * START_SLACK_S + point.warmup_s + point.seconds
    return list(await asyncio.gather(*(run_node(n, spec["port"], until, stop) for n in nodes)))


def group_main(job: Path, out: Path) -> int:
    """`python -m benchmarks.redis_sim --group JOB OUT`: one process of simulated nodes."""
    spec = json.loads(job.read_text(encoding="utf-8"))
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(run_group(spec))
    else:
        results = uvloop.run(run_group(spec))
    out.write_text(json.dumps(results), encoding="utf-8")
    return 0


def _split(point: Point, processes: int) -> list[list[int]]:
    """The nodes' indexes over the processes."""
    count = min(processes, point.nodes)
    return [list(range(g, point.nodes, count)) for g in range(count)]


def measure(point: Point, redis: Proc, run_dir: Path, processes: int) -> Result:
    """One point: simulated nodes in `processes` processes; Redis's INFO over the window."""
    procs, outputs = [], []
    run_dir.mkdir(parents=True, exist_ok=True)
    for g, nodes in enumerate(_split(point, processes)):
        job = run_dir / f"sim-{point.nodes}-{point.players}-{point.cross}-{g}.json"
        job.write_text(json.dumps({"point": asdict(point), "port": redis.port, "nodes": nodes}))
        outputs.append(job.with_suffix(".out"))
        argv = [sys.executable, "-m", "benchmarks.redis_sim", "--group", str(job), str(outputs[-1])]
        procs.append(spawn(job.stem, argv, run_dir, wait_listening=False, cpu=LOAD_CPU))
    try:
        _await_clients(redis, 1 + 2 * point.nodes)
        time.sleep(point.warmup_s)
        before, t0 = redis_proc.info_nowait(redis.port), time.perf_counter()
        time.sleep(point.seconds)
        after, elapsed = redis_proc.info_nowait(redis.port), time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.stop()
    outs = [json.loads(path.read_text(encoding="utf-8")) for path in outputs]
    return _figures(point, redis_proc.delta(before, after), elapsed, after, outs)


def _await_clients(redis: Proc, count: int) -> None:
    deadline = time.monotonic() + START_SLACK_S
    while int(redis_proc.info_nowait(redis.port).get("connected_clients", 0)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulated nodes did not connect within {START_SLACK_S} s")
        time.sleep(0.05)  # polling processes we started


def _figures(
    point: Point, d: Result, elapsed: float, after: Result, outs: list[list[Result]]
) -> Result:
    publish = max(d["publish"], 1)
    nodes = [n for group in outs for n in group]
    offered = point.tokens_per_s
    return {
        **asdict(point),
        "offered_tokens_per_s": offered,
        "published_per_s": round(d["publish"] / elapsed),
        "kept_up": all(n["behind"] <= 0.02 * offered / point.nodes + 50 for n in nodes),
        "commands_per_s": round(d["commands"] / elapsed),
        "redis_cpu_pct": round(100 * d["cpu_s"] / elapsed, 1),
        "redis_cpu_us_per_token": round(1e6 * d["cpu_s"] / publish, 3),
        "input_bytes_per_s": round(d["net_input_bytes"] / elapsed),
        "output_bytes_per_s": round(d["net_output_bytes"] / elapsed),
        "input_bytes_per_token": round(d["net_input_bytes"] / publish, 1),
        "output_bytes_per_token": round(d["net_output_bytes"] / publish, 1),
        "used_memory_bytes": int(after.get("used_memory", 0)),
        "pubsub_channels": int(after.get("pubsub_channels", 0)),
        "clients": int(after.get("connected_clients", 0)),
        "saturation_tokens_per_s": round(1e6 / (1e6 * d["cpu_s"] / publish))
        if d["cpu_s"]
        else None,
    }


@contextlib.contextmanager
def _redis(run_dir: Path) -> Iterator[Proc]:
    proc = redis_proc.start_redis(run_dir, "redis-sim", cpu=SERVER_CPU)
    try:
        yield proc
    finally:
        proc.stop()


FULL = (
    # tokens/s grows with the players at 10 nodes (until the simulation cannot keep up),
    # then the nodes at a fixed rate (smaller pipelines), then the share of room traffic.
    *(Point(10, players) for players in (1000, 5000, 10_000, 20_000)),
    *(Point(nodes, 5000) for nodes in (2, 50, 200)),
    Point(10, 5000, cross=0.0),
    Point(10, 5000, cross=1.0),
)
QUICK = (Point(10, 1000, seconds=2.0), Point(10, 5000, seconds=2.0), Point(50, 5000, seconds=2.0))
TINY = (Point(2, 20, seconds=0.5, warmup_s=0.3), Point(4, 100, seconds=0.5, warmup_s=0.3))


def sweep(points: Sequence[Point], run_dir: Path, processes: int) -> list[Result]:
    """Each point on a fresh redis-server."""
    rows = []
    for point in points:
        with _redis(run_dir) as redis:
            rows.append(measure(point, redis, run_dir, processes))
        print(json.dumps(rows[-1]), flush=True)
    return rows


HEAD = (
    "sim nodes",
    "players",
    "cross",
    "offered tok/s",
    "published/s",
    "kept up",
    "redis CPU %",
    "redis CPU us/token",
    "bytes in/token",
    "bytes out/token",
    "MB/s in",
    "MB/s out",
    "channels",
    "used_memory MiB",
)


def markdown(rows: list[Result]) -> str:
    def cells(r: Result) -> list[Any]:
        return [
            r["nodes"],
            r["players"],
            r["cross"],
            round(r["offered_tokens_per_s"]),
            r["published_per_s"],
            "yes" if r["kept_up"] else "no",
            r["redis_cpu_pct"],
            r["redis_cpu_us_per_token"],
            r["input_bytes_per_token"],
            r["output_bytes_per_token"],
            round(r["input_bytes_per_s"] / 1e6, 2),
            round(r["output_bytes_per_s"] / 1e6, 2),
            r["pubsub_channels"],
            round(r["used_memory_bytes"] / 2**20, 1),
        ]

    lines = ["| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    lines += ["| " + " | ".join(str(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.redis_sim", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--tiny", action="store_true")
    p.add_argument("--processes", type=int, default=2, help="processes of simulated nodes")
    p.add_argument("--out", type=Path, help="JSON output (default results/redis-sim[-SIZE].json)")
    p.add_argument("--group", nargs=2, type=Path, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.group:
        return group_main(*args.group)
    name = "tiny" if args.tiny else "quick" if args.quick else "full"
    points = TINY if args.tiny else QUICK if args.quick else FULL
    out: Path = args.out or RESULTS / (
        "redis-sim.json" if name == "full" else f"redis-sim-{name}.json"
    )
    run_dir = out.parent / "raw" / f"{time.strftime('%Y%m%dT%H%M%S')}-redis-sim-{name}"
    try:
        rows = sweep(points, run_dir, args.processes)
    finally:
        stop_all()
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plan": name, "points": rows}
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0 if rows and all(math.isfinite(r["redis_cpu_us_per_token"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
