"""Client side of the memory figure: RSS per idle connection at growing counts.

For npc-server an idle connection is authenticated (hello -> welcome) and
then silent apart from answering heartbeats; for the bare servers it has
made one echo round trip. Connections are added level by level and kept,
so each level's RSS is read with all of them open.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from benchmarks.player import Player
from benchmarks.probe import ServerProbe, kernel_tcp_bytes
from benchmarks.wsclient import WsClient, connect

Params = dict[str, Any]
Tokens = Callable[[str], str]
Result = dict[str, Any]
Opener = Callable[[int], Awaitable[Any]]
WARMUP = 50


async def _echo_once(probe: ServerProbe, index: int) -> WsClient:
    got = asyncio.get_running_loop().create_future()

    def on_message(data: bytes, at: float) -> None:
        if not got.done():
            got.set_result(data)

    client = await connect(probe.host, probe.port, "/ws", on_message)
    client.send(msgpack.packb({"t": "hello", "i": index}))
    async with asyncio.timeout(30):
        await got
    return client


async def _open_many(opener: Opener, start: int, stop: int, concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Any:
        async with gate:
            return await opener(index)

    return list(await asyncio.gather(*(one(i) for i in range(start, stop))))


async def _rss(probe: ServerProbe) -> int:
    """Median of three reads a little apart: RSS moves with allocator timing."""
    values = []
    for _ in range(3):
        values.append(probe.rss())
        await asyncio.sleep(0.1)
    return int(statistics.median(values))


def _close(conn: Any) -> None:
    conn.close()


async def idle_memory(probe: ServerProbe, tokens: Tokens, params: Params) -> Result:
    """RSS of the server at each level of idle connections."""
    kind = params["kind"]

    async def open_npc(index: int) -> Player:
        player = Player(f"idle{index}")
        await player.open(probe.host, probe.port, tokens(player.name))
        return player

    async def open_echo(index: int) -> WsClient:
        return await _echo_once(probe, index)

    opener: Opener = open_npc if kind == "npc" else open_echo
    concurrency = params["concurrency"]
    # Warm up the code paths and the allocator, then measure from there.
    for conn in await _open_many(opener, 0, WARMUP, concurrency):
        _close(conn)
    await asyncio.sleep(params["settle_s"])
    base, kmem_base = await _rss(probe), kernel_tcp_bytes()
    held: list[Any] = []
    levels = []
    try:
        for level in params["levels"]:
            start = WARMUP + len(held)
            async with asyncio.timeout(params["timeout_s"]):
                held += await _open_many(opener, start, WARMUP + level, concurrency)
            await asyncio.sleep(params["settle_s"])
            rss = await _rss(probe)
            levels.append(
                await _level(probe, kind, level, rss, base, kernel_tcp_bytes() - kmem_base)
            )
    finally:
        for conn in held:
            _close(conn)
    return {"kind": kind, "base_rss_bytes": base, "levels": levels}


async def _level(
    probe: ServerProbe, kind: str, level: int, rss: int, base: int, kmem: int
) -> dict[str, Any]:
    attached = None
    if kind == "npc":
        attached = (await probe.healthz(30))["attached"]
    return {
        "connections": level,
        "rss_bytes": rss,
        "growth_bytes": rss - base,
        "per_connection_bytes": round((rss - base) / level),
        "kernel_tcp_bytes": kmem,
        "server_attached": attached,
    }
