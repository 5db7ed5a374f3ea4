"""CPU per streamed piece of the `openai` backend alone, under relay-like load, in-process.

    python -m benchmarks.relay_backend [--turns 50] [--seconds 8] [--rate 20] [--uvloop]
        [--deliver]

The paced fake model server (benchmarks/fake_openai.py: 50 ms to the first
token, then `--rate` pieces a second, 20 a reply) runs in a child process on
CPU 0; this process, pinned to CPU 1, runs `--turns` concurrent loops, each
streaming one turn after another through one `OpenAIBackend` (as players
saying again at each turn end). After a warm-up it counts pieces and this
process's CPU time (`time.process_time`) for `--seconds`: CPU per piece and
per turn is what the backend (request, reads, decoding) costs, without the
server's socket path. `--deliver` reads each turn as the server does (pieces
handed over in the connection's callbacks), else through `generate()` (a task
step per piece). `other_cpu_pct` is what other processes (neither this
one nor the fake server) used meanwhile, in % of one core. Run it against
another checkout with PYTHONPATH to compare before and after in the same
session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Coroutine
from typing import Any

import psutil

from npc_server.backends.base import GenerationRequest, Piece, TextPiece
from npc_server.backends.openai import OpenAIBackend
from npc_server.npcs import NpcConfig

NPC = NpcConfig(id="bench", name="Bench", backend="openai")
REQUEST = GenerationRequest(npc=NPC, player="p1", text="Tell me a story.")
WARMUP_S = 2.0


class Counter:
    """Pieces and turns streamed since the last reset."""

    def __init__(self) -> None:
        self.pieces = 0
        self.turns = 0
        self.errors = 0


async def player(
    backend: OpenAIBackend, counter: Counter, stop: asyncio.Event, deliver: bool
) -> None:
    """One turn after another until `stop`."""

    def take(piece: Piece) -> None:
        if isinstance(piece, TextPiece):
            counter.pieces += 1

    while not stop.is_set():
        try:
            if deliver:
                async for _ in backend.deliver(REQUEST, take):
                    pass
            else:
                async for piece in backend.generate(REQUEST):
                    take(piece)
            counter.turns += 1
        except Exception:
            counter.errors += 1


def busy_cpu_s() -> float:
    """CPU seconds all processes used (every core), from /proc/stat."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def tree_cpu_s(model_pid: int) -> float:
    """CPU seconds of this process and the fake model server."""
    total = 0.0
    for process in (psutil.Process(), psutil.Process(model_pid)):
        times = process.cpu_times()
        total += times.user + times.system
    return total


async def measure(
    base_url: str, turns: int, seconds: float, model_pid: int, deliver: bool
) -> dict[str, Any]:
    """Run `turns` players; CPU per piece and per turn over `seconds` after a warm-up."""
    backend = OpenAIBackend(NPC, {"base_url": base_url, "model": "bench"})
    counter, stop = Counter(), asyncio.Event()
    tasks = [asyncio.create_task(player(backend, counter, stop, deliver)) for _ in range(turns)]
    await asyncio.sleep(WARMUP_S)
    counter.pieces = counter.turns = counter.errors = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    busy0, mine0 = busy_cpu_s(), tree_cpu_s(model_pid)
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    other = busy_cpu_s() - busy0 - (tree_cpu_s(model_pid) - mine0)
    pieces, done, errors = counter.pieces, counter.turns, counter.errors
    stop.set()
    await asyncio.gather(*tasks)
    await backend.aclose()
    return {
        "turns_concurrent": turns,
        "seconds": round(wall, 2),
        "pieces": pieces,
        "turns": done,
        "errors": errors,
        "cpu_pct": round(100 * cpu / wall, 1),
        "cpu_us_per_piece": round(cpu / max(pieces, 1) * 1e6, 1),
        "cpu_ms_per_turn": round(cpu / max(done, 1) * 1e3, 2),
        "other_cpu_pct": round(100 * max(other, 0.0) / wall, 1),
    }


def start_model(rate: float) -> tuple[subprocess.Popen[str], str]:
    """The fake model server on CPU 0; its base URL."""
    argv = [sys.executable, "-m", "benchmarks.fake_openai", "--tokens-per-second", str(rate)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(child.pid, {0})
    assert child.stdout is not None
    url = child.stdout.readline().strip().rsplit(" ", 1)[-1]
    return child, url + "/v1"


def main(argv: list[str] | None = None) -> int:
    """Start the fake server, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as the server does")
    parser.add_argument(
        "--deliver", action="store_true", help="read as the server does (deliver, not generate)"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {1})
    child, base_url = start_model(args.rate)
    try:
        work: Coroutine[Any, Any, dict[str, Any]] = measure(
            base_url, args.turns, args.seconds, child.pid, args.deliver
        )
        if args.uvloop:
            import uvloop

            result = uvloop.run(work)
        else:
            result = asyncio.run(work)
    finally:
        child.terminate()
        child.wait(10)
    result["loop"] = "uvloop" if args.uvloop else "asyncio"
    result["read"] = "deliver" if args.deliver else "generate"
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
