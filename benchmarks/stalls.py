"""Client side of the release figure: readers that stall on a fast stream.

A few players ask for a long, fast reply, read its first delta, then stop
reading with a small receive buffer, so the server's writes block within
a second. We record when the server lets go of them (its /healthz stops
counting them as attached), what each client finds when it reads again
(a 4000 close frame, or a reset) and whether its session can be resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from benchmarks.player import Player, close_players, open_players
from benchmarks.probe import ServerProbe, kernel_tcp_bytes

Params = dict[str, Any]
Tokens = Callable[[str], str]
Result = dict[str, Any]
NPC = "guard"
SAY_TEXT = "Tell me about the gate."
STATE_ESTABLISHED = 1


async def release_stalled(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """Stalled readers of a fast stream: when the server lets go, what they see, resume."""
    count = params["players"]
    players = await open_players(
        count, probe.host, probe.port, tokens, prefix="stall", rcvbuf=lambda i: params["rcvbuf"]
    )
    try:
        for i, player in enumerate(players):
            player.send({"t": "say", "id": i, "npc": NPC, "text": SAY_TEXT})
        for player in players:
            await player.expect("delta", 30)
        rss0, kmem0 = probe.rss(), kernel_tcp_bytes()
        for player in players:
            player.client.pause_reading()  # type: ignore[union-attr]
        started = time.perf_counter()
        server_release, peak = await _await_release(probe, players, started, params["timeout_s"])
        client_release = [
            round(time.perf_counter() - started, 3)
            if p.client is not None and p.client.tcp_state() != STATE_ESTABLISHED
            else None
            for p in players
        ]
        seen = await _resume_and_read(players)
        resumed = await _try_resume(probe, tokens, players)
    finally:
        close_players(players)
    return {
        "players": count,
        "rcvbuf": params["rcvbuf"],
        "server_release_s": server_release,
        "client_saw_release": sum(v is not None for v in client_release),
        "peak_rss_growth_per_stalled_bytes": round((peak["rss"] - rss0) / count),
        "peak_kernel_tcp_growth_per_stalled_bytes": round((peak["kmem"] - kmem0) / count),
        "close_seen": seen,
        "resumed": resumed,
    }


async def _await_release(
    probe: ServerProbe, players: list[Player], started: float, timeout: float
) -> tuple[float | None, dict[str, int]]:
    """Poll /healthz until the server holds none of these sockets attached."""
    peak = {"rss": probe.rss(), "kmem": kernel_tcp_bytes()}
    while time.perf_counter() - started < timeout:
        await asyncio.sleep(0.1)
        peak["rss"] = max(peak["rss"], probe.rss())
        peak["kmem"] = max(peak["kmem"], kernel_tcp_bytes())
        health = await probe.healthz()
        if health["attached"] == 0:
            return round(time.perf_counter() - started, 3), peak
    return None, peak


async def _resume_and_read(players: list[Player]) -> dict[str, int]:
    """Read what is left; count how each connection ended (close code or reset)."""
    for player in players:
        if player.client is not None:
            player.client.resume_reading()
    seen: dict[str, int] = {}
    for player in players:
        assert player.client is not None
        try:
            async with asyncio.timeout(5):
                await player.client.closed
        except TimeoutError:
            pass
        code = player.client.close_code
        key = str(code) if code is not None else ("reset" if player.client.reset else "open")
        seen[key] = seen.get(key, 0) + 1
    return seen


async def _try_resume(probe: ServerProbe, tokens: Tokens, players: list[Player]) -> dict[str, int]:
    """Reconnect each stalled player with hello{resume}; how many sessions were kept."""
    outcome = {"resumed": 0, "new_session": 0, "failed": 0}
    for old in players:
        again = Player(old.name)
        try:
            welcome = await again.open(
                probe.host,
                probe.port,
                tokens(old.name),
                resume={"session": old.session, "seq": old.last_seq},
            )
            outcome["resumed" if welcome.get("resumed") else "new_session"] += 1
            again.send({"t": "interrupt"})
        except (OSError, TimeoutError, RuntimeError):
            outcome["failed"] += 1
        finally:
            again.close()
    return outcome
