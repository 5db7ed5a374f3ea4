"""Load-process side of the cluster figures: players spread over nodes, Redis's counters.

`cluster_stream` is section 4's streaming step over one or more endpoints (the
nodes of a cluster, each on its own port, or one port shared by `--workers`):
private streams, player i on endpoint i mod n; or rooms of two, a speaker who
says at each `turn.end` and a listener who only hears, on different nodes when
there are several, so every token of a room turn crosses Redis. A listener's
lag is measured against its speaker's say (both live in this process, on one
clock). Server CPU is the sum over every node process; redis-server's CPU and
its INFO counters (commands, network bytes) over the same window are reported
apart. `cluster_idle` holds idle sessions and reads what they cost Redis.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psutil

from benchmarks import redis_proc
from benchmarks.player import Player, close_players, open_players
from benchmarks.probe import ServerProbe, busy_cpu_seconds, own_cpu_seconds
from benchmarks.stats import summarize
from benchmarks.streaming import Params, Result, Shared, Stream, Tokens

JOIN_TIMEOUT = 30.0


class NodesProbe(ServerProbe):
    """Several server processes read as one (CPU and RSS summed), each also apart."""

    def __init__(self, pids: list[int], host: str, port: int) -> None:
        super().__init__(pids[0], host, port)
        self.processes = [psutil.Process(pid) for pid in pids]

    def rss(self) -> int:
        return sum(int(p.memory_info().rss) for p in self.processes)

    def per_process_cpu(self) -> list[float]:
        return [float(t.user + t.system) for t in (p.cpu_times() for p in self.processes)]

    def cpu_seconds(self) -> float:
        return sum(self.per_process_cpu())


def nodes_probe(params: Params) -> NodesProbe:
    """The node processes of a job: `pids`, or the supervisor `children_of` and its workers."""
    host, port = params["endpoints"][0]
    if params.get("children_of"):
        parent = psutil.Process(params["children_of"])
        pids = [parent.pid, *(c.pid for c in parent.children(recursive=True))]
    else:
        pids = list(params["pids"])
    return NodesProbe(pids, host, port)


class RoomSpeaker(Stream):
    """A member who says to the NPC in the room at each turn.end."""

    def __init__(self, player: Player, shared: Shared, room: str) -> None:
        super().__init__(player, shared)
        self.room = room

    def say(self) -> None:
        self.index = 0
        self.turn = None
        self.says += 1
        frame = {"t": "say", "id": self.says, "npc": self.npc, "text": self.text, "room": self.room}
        self.anchor = self.player.send(frame)


class Listener(Stream):
    """A member who only hears the room's turns; lag against the speaker's say."""

    def __init__(self, player: Player, shared: Shared, speaker: Stream) -> None:
        super().__init__(player, shared)
        self.speaker = speaker

    def on_frame(self, frame: dict[str, Any], at: float) -> None:
        kind = frame.get("t")
        if kind == "delta":
            self._delta(frame["text"], at)
        elif kind == "turn.start":
            self.turn, self.index, self.anchor = frame.get("turn"), 0, self.speaker.anchor
        elif kind == "turn.end":
            self.turn = None
        elif kind == "error":
            self.shared.errors += 1


async def _open(params: Params, tokens: Tokens, counts: list[int]) -> list[list[Player]]:
    """`counts[i]` players on endpoint i, all endpoints at once."""
    hello = {"delta_ms": params["delta_ms"]} if params.get("delta_ms") else None
    return list(
        await asyncio.gather(
            *(
                open_players(n, host, port, tokens, prefix=f"n{i}p", hello_extra=hello)
                for i, ((host, port), n) in enumerate(zip(params["endpoints"], counts, strict=True))
            )
        )
    )


async def _join(player: Player, room: str) -> None:
    player.send({"t": "join", "id": 1, "room": room})
    await player.expect_match("ack", JOIN_TIMEOUT, id=1)


async def _streams(
    params: Params, tokens: Tokens, shared: Shared
) -> tuple[list[Stream], list[Player]]:
    """The players of a step, placed on the endpoints; (speakers, every player)."""
    count, n = params["players"], len(params["endpoints"])
    if not params.get("rooms"):
        per = [len(range(i, count, n)) for i in range(n)]
        groups = await _open(params, tokens, per)
        players = [p for group in groups for p in group]
        return [Stream(p, shared) for p in players], players
    rooms = count // 2
    # Room k: speaker on endpoint k mod n, listener on the next one (the same with one node).
    speakers_at = [len(range(i, rooms, n)) for i in range(n)]
    listeners_at = [len(range((i - 1) % n, rooms, n)) for i in range(n)] if n > 1 else speakers_at
    counts = [a + b for a, b in zip(speakers_at, listeners_at, strict=True)]
    groups = await _open(params, tokens, counts)
    pools = [list(group) for group in groups]
    pairs = []
    for k in range(rooms):
        speaker = pools[k % n].pop()
        listener = pools[(k + 1) % n].pop()
        pairs.append((f"bench-{k}", speaker, listener))
    gate = asyncio.Semaphore(200)

    async def join(player: Player, room: str) -> None:
        async with gate:
            await _join(player, room)

    await asyncio.gather(*(join(p, room) for room, s, li in pairs for p in (s, li)))
    speakers: list[Stream] = []
    for room, s, li in pairs:
        says = RoomSpeaker(s, shared, room)
        Listener(li, shared, says)
        speakers.append(says)
    return speakers, [p for _, s, li in pairs for p in (s, li)]


class Meter:
    """CPU of the nodes, of redis-server, of this process and of the rest, over a window."""

    def __init__(self, nodes: NodesProbe, redis_pid: int | None) -> None:
        self.nodes = nodes
        self.redis = psutil.Process(redis_pid) if redis_pid else None
        self.t0 = time.perf_counter()
        self.nodes0 = nodes.per_process_cpu()
        self.redis0 = self._redis_cpu()
        self.own0, self.busy0 = own_cpu_seconds(), busy_cpu_seconds()

    def _redis_cpu(self) -> float:
        if self.redis is None:
            return 0.0
        t = self.redis.cpu_times()
        return float(t.user + t.system)

    def close(self) -> Result:
        elapsed = time.perf_counter() - self.t0
        per_node = [b - a for a, b in zip(self.nodes0, self.nodes.per_process_cpu(), strict=True)]
        redis = self._redis_cpu() - self.redis0
        own = own_cpu_seconds() - self.own0
        other = max(0.0, busy_cpu_seconds() - self.busy0 - sum(per_node) - redis - own)

        def pct(seconds: float) -> float:
            return round(100 * seconds / elapsed, 1)

        return {
            "elapsed_s": round(elapsed, 3),
            "server_cpu_s": round(sum(per_node), 3),
            "server_cpu_pct": pct(sum(per_node)),
            "node_cpu_pct": [pct(s) for s in per_node],
            "redis_cpu_s": round(redis, 3),
            "redis_cpu_pct": pct(redis),
            "client_cpu_pct": pct(own),
            "other_cpu_pct": pct(other),
        }


async def cluster_stream(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """Streaming players over the endpoints; lag, tokens/s, CPU of nodes and Redis per token."""
    nodes = nodes_probe(params)
    shared = Shared(params["first_token_ms"] / 1000, 1 / params["tokens_per_second"])
    speakers, players = await _streams(params, tokens, shared)
    try:
        return await _window(nodes, params, shared, speakers)
    finally:
        close_players(players)


async def _window(
    nodes: NodesProbe, params: Params, shared: Shared, speakers: list[Stream]
) -> Result:
    redis = params.get("redis") or {}
    start = time.perf_counter()
    shared.window_start = start + params["warmup_s"]
    shared.window_end = shared.window_start + params["duration_s"]
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    for stream in speakers:
        loop.call_later(rng.uniform(0, params["ramp_s"]), stream.say)
    await asyncio.sleep(max(0.0, shared.window_start - time.perf_counter()))
    info0 = await redis_proc.info(redis["port"]) if redis else None
    meter = Meter(nodes, redis.get("pid"))
    await asyncio.sleep(max(0.0, shared.window_end - time.perf_counter()))
    cpu = meter.close()
    info1 = await redis_proc.info(redis["port"]) if redis else None
    for stream in speakers:
        if stream.turn is not None:
            stream.player.send({"t": "interrupt", "turn": stream.turn})
    tokens = max(shared.tokens, 1)
    result: Result = {
        "players": params["players"],
        "rooms": bool(params.get("rooms")),
        "endpoints": len(params["endpoints"]),
        "node_processes": len(nodes.processes),
        "lag": summarize(shared.lags),
        "tokens": shared.tokens,
        "turns": shared.turns,
        "window_s": cpu["elapsed_s"],
        "delivered_tokens_per_s": round(shared.tokens / cpu["elapsed_s"], 1),
        "per_player_tokens_per_s": round(shared.tokens / cpu["elapsed_s"] / params["players"], 2),
        "cpu_us_per_token": round(1e6 * cpu["server_cpu_s"] / tokens, 2),
        "redis_cpu_us_per_token": round(1e6 * cpu["redis_cpu_s"] / tokens, 2),
        "errors": shared.errors,
        **cpu,
    }
    if info0 is not None and info1 is not None:
        result["redis"] = _per_token(redis_proc.delta(info0, info1), tokens, cpu["elapsed_s"])
    return result


def _per_token(d: Result, tokens: int, seconds: float) -> Result:
    return {
        **d,
        "commands_per_s": round(d["commands"] / seconds, 1),
        "commands_per_token": round(d["commands"] / tokens, 3),
        "publish_per_token": round(d["publish"] / tokens, 3),
        "input_bytes_per_token": round(d["net_input_bytes"] / tokens, 1),
        "output_bytes_per_token": round(d["net_output_bytes"] / tokens, 1),
        "info_cpu_us_per_token": round(1e6 * d["cpu_s"] / tokens, 2),
    }


async def cluster_idle(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """Idle sessions held open over the endpoints: what opening, holding and memory cost Redis."""
    port, count, n = params["redis"]["port"], params["sessions"], len(params["endpoints"])
    await asyncio.sleep(params["settle_s"])
    before = await redis_proc.info(port)
    groups = await _open(params, tokens, [len(range(i, count, n)) for i in range(n)])
    players = [p for group in groups for p in group]
    try:
        await asyncio.sleep(params["settle_s"])
        opened = await redis_proc.info(port)
        await asyncio.sleep(params["window_s"])
        held = await redis_proc.info(port)
    finally:
        close_players(players)
    await asyncio.sleep(params["settle_s"])
    closed = await redis_proc.info(port)
    opening, holding = redis_proc.delta(before, opened), redis_proc.delta(opened, held)
    channels = int(held.get("pubsub_channels", "0")) - int(before.get("pubsub_channels", "0"))
    per_s = count * params["window_s"]
    return {
        "sessions": count,
        "window_s": params["window_s"],
        "open": opening,
        "held": holding,
        "open_commands_per_session": round(opening["commands"] / count, 2),
        "open_input_bytes_per_session": round(opening["net_input_bytes"] / count, 1),
        "idle_commands_per_session_s": round(holding["commands"] / per_s, 4),
        "idle_input_bytes_per_session_s": round(holding["net_input_bytes"] / per_s, 2),
        "idle_output_bytes_per_session_s": round(holding["net_output_bytes"] / per_s, 2),
        "memory_per_session_bytes": round(opening["used_memory_bytes"] / count),
        "memory_after_close_bytes": int(redis_proc.delta(before, closed)["used_memory_bytes"]),
        "pubsub_channels_per_session": round(channels / count, 2),
    }
