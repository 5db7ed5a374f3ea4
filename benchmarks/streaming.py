"""Client side of the streaming figures: delivery lag, tokens/s, CPU, stalled readers.

Every player streams turn after turn from the scripted guard: it says
something, the NPC answers in about 20 word pieces (tokens) at the
configured rate, and at `turn.end` the player says the next thing.

Delivery lag of one token = when it arrived - when the NPC was due to
produce it. The NPC has no jitter, so token k of a turn is due at
`say sent + first_token_ms + k / tokens_per_second` on the client's clock.
That due time is a lower bound of when the server could produce the
token: the say still has to reach the server, and the scripted backend's
pacer hands each piece over at the first 1 ms tick at or after its due
time, counted from the turn's start (it keeps to the reply's schedule: a
tick run late delays its own pieces, not the ones after them). The
1-player step shows the floor. Load that delays the pacer's ticks counts
as lag, as it would slow a player's stream.
A delta that merged several queued pieces is split the way the backend
splits text, and each piece gets its own lag.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Callable
from typing import Any

from benchmarks.player import Player, close_players, open_players
from benchmarks.probe import CpuWindow, ServerProbe, kernel_tcp_bytes
from benchmarks.stats import summarize
from npc_server.backends.scripted import _split_words

Params = dict[str, Any]
Tokens = Callable[[str], str]
Result = dict[str, Any]
NPC = "guard"
# Matches the guard's `curfew_by_day` topic: replies of 19 to 23 pieces, no actions.
SAY_TEXT = "Tell me about the curfew."
STATE_ESTABLISHED = 1


def count_pieces(text: str) -> int:
    """How many backend pieces (tokens) a delta's text holds."""
    return sum(1 for _ in _split_words(text))


class Shared:
    """What every stream of one step writes to."""

    def __init__(self, first_token_s: float, interval_s: float) -> None:
        self.first_token_s = first_token_s
        self.interval_s = interval_s
        self.window_start = self.window_end = float("inf")
        self.tokens = 0
        self.turns = 0
        self.errors = 0
        self.lags = array("d")


class Stream:
    """One player's stream: says again at each turn.end and records each token's lag."""

    def __init__(
        self, player: Player, shared: Shared, npc: str = NPC, text: str = SAY_TEXT
    ) -> None:
        self.player = player
        self.shared = shared
        self.npc = npc
        self.text = text
        self.anchor = 0.0
        self.index = 0
        self.turn: str | None = None
        self.says = 0
        player.on_frame = self.on_frame

    def say(self) -> None:
        self.index = 0
        self.turn = None
        self.says += 1
        self.anchor = self.player.send(
            {"t": "say", "id": self.says, "npc": self.npc, "text": self.text}
        )

    def on_frame(self, frame: dict[str, Any], at: float) -> None:
        kind = frame.get("t")
        if kind == "delta":
            self._delta(frame["text"], at)
        elif kind == "turn.start":
            self.turn = frame.get("turn")
        elif kind == "turn.end":
            self.turn = None
            if self.shared.window_start <= at <= self.shared.window_end:
                self.shared.turns += 1
            if at < self.shared.window_end:
                self.say()
        elif kind == "error":
            self.shared.errors += 1

    def _delta(self, text: str, at: float) -> None:
        shared = self.shared
        pieces = count_pieces(text)
        first = self.index
        self.index += pieces
        if not shared.window_start <= at <= shared.window_end:
            return
        shared.tokens += pieces
        due = self.anchor + shared.first_token_s
        for k in range(first, first + pieces):
            shared.lags.append(at - due - k * shared.interval_s)


async def stream_step(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """`players` stream at once; lag, delivered tokens/s and server CPU over a window."""
    count = params["players"]
    stalled = int(count * params.get("stall_fraction", 0.0))
    step = count // stalled if stalled else 1
    is_stalled = [stalled > 0 and i % step == 0 and i < step * stalled for i in range(count)]
    rcvbuf = params.get("stall_rcvbuf", 0)
    players = await open_players(
        count,
        probe.host,
        probe.port,
        tokens,
        prefix="lag",
        rcvbuf=lambda i: rcvbuf if is_stalled[i] else 0,
        hello_extra={"delta_ms": params["delta_ms"]} if params.get("delta_ms") else None,
    )
    shared = Shared(params["first_token_ms"] / 1000, 1 / params["tokens_per_second"])
    # The relay section spreads players over several NPCs (params["npcs"]).
    npcs = params.get("npcs") or [NPC]
    text = params.get("say_text", SAY_TEXT)
    streams = [Stream(p, shared, npcs[i % len(npcs)], text) for i, p in enumerate(players)]
    healthy = [s for s, stall in zip(streams, is_stalled, strict=True) if not stall]
    stalls = [s for s, stall in zip(streams, is_stalled, strict=True) if stall]
    try:
        return await _run_window(probe, params, shared, healthy, stalls)
    finally:
        close_players(players)


async def _run_window(
    probe: ServerProbe, params: Params, shared: Shared, healthy: list[Stream], stalls: list[Stream]
) -> Result:
    ramp, warmup, duration = params["ramp_s"], params["warmup_s"], params["duration_s"]
    start = time.perf_counter()
    shared.window_start = start + warmup
    shared.window_end = shared.window_start + duration
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    for stream in healthy + stalls:
        loop.call_later(rng.uniform(0, ramp), stream.say)
    await asyncio.sleep(max(0.0, shared.window_start - time.perf_counter()))
    window = CpuWindow(probe)
    rss0, kmem0 = probe.rss(), kernel_tcp_bytes()
    for stream in stalls:
        assert stream.player.client is not None
        stream.player.client.pause_reading()
    # A stalled player sees no turn.end, so it keeps saying on a timer instead:
    # the server generates as much for it as for a healthy player.
    period = params["first_token_ms"] / 1000 + 22 * shared.interval_s
    sayers = [asyncio.create_task(_keep_saying(s, period, shared.window_end)) for s in stalls]
    released = await _watch_stalls(stalls, shared.window_end, shared.window_start)
    await asyncio.gather(*sayers)
    cpu = window.close()
    elapsed = time.perf_counter() - shared.window_start
    rss1, kmem1 = probe.rss(), kernel_tcp_bytes()
    for stream in healthy + stalls:
        if stream.turn is not None:
            stream.player.send({"t": "interrupt", "turn": stream.turn})
    return {
        "players": len(healthy) + len(stalls),
        "stalled": len(stalls),
        "lag": summarize(shared.lags),
        "tokens": shared.tokens,
        "turns": shared.turns,
        "window_s": round(elapsed, 3),
        "delivered_tokens_per_s": round(shared.tokens / elapsed, 1),
        "per_player_tokens_per_s": round(shared.tokens / elapsed / max(len(healthy), 1), 2),
        "server_cpu_s": cpu["server_cpu_s"],
        "server_cpu_pct": cpu["server_cpu_pct"],
        "cpu_us_per_token": round(1e6 * cpu["server_cpu_s"] / max(shared.tokens, 1), 2),
        "client_cpu_pct": cpu["client_cpu_pct"],
        "other_cpu_pct": cpu["other_cpu_pct"],
        "rss_growth_bytes": rss1 - rss0,
        "kernel_tcp_growth_bytes": kmem1 - kmem0,
        "errors": shared.errors,
        "stalled_released_s": released,
    }


async def _keep_saying(stream: Stream, period: float, until: float) -> None:
    while time.perf_counter() + period < until:
        await asyncio.sleep(period)
        stream.say()


async def _watch_stalls(stalls: list[Stream], until: float, started: float) -> list[float]:
    """Seconds from the stall until each stalled socket left ESTABLISHED (client's kernel)."""
    released: dict[int, float] = {}
    while (now := time.perf_counter()) < until:
        for i, stream in enumerate(stalls):
            client = stream.player.client
            if i not in released and client is not None and client.tcp_state() != STATE_ESTABLISHED:
                released[i] = now - started
        await asyncio.sleep(min(0.25, max(0.0, until - now)))
    return sorted(round(v, 3) for v in released.values())
