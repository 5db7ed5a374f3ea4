"""Soak: the stress and fault scenarios of tests/stress at a bigger scale, as a table.

    python -m benchmarks.soak                       # moderate: 2000 clients, a few minutes
    python -m benchmarks.soak --clients 3000 --rounds 3 --flood-seconds 60
    python -m benchmarks.soak --only storm,stalled --quick
    python -m benchmarks.soak --costs               # also: what the protections cost

Every scenario starts its own server, asserts its exact outcome and checks
for leaks afterwards (tests/stress/leaks.py). The table has one row per run:
scenario, outcome (PASS with its measurements, or FAIL with the broken
expectation), the close codes seen, the leaks found, and the time taken.
Everything is bounded: scenarios by their own timeouts and `--scenario-timeout`,
rounds by `--rounds` and `--max-minutes`. Exit status 1 if any run failed or leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import psutil
import websockets

from tests.stress.leaks import LeakReport, wait_for
from tests.stress.scenarios import (
    QUICK,
    SCENARIOS,
    Scale,
    ScenarioReport,
    write_config,
)
from tests.support.client import RawClient
from tests.support.server import ServerProcess, start_server_process

Scenario = Callable[[Scale], Awaitable[ScenarioReport]]
MODERATE = Scale(
    room_members=24,
    flood_s=60.0,
    silent_peers=20,
    fuzz_examples=2000,
    storm_clients=2000,
    fault_players=32,
    crash_clients=500,
)


@dataclass
class Row:
    scenario: str
    ok: bool
    outcome: str
    codes: str
    leaks: str
    seconds: float


def raise_nofile() -> None:
    """Thousands of sockets in one process: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_one(name: str, scenario: Scenario, scale: Scale, timeout: float) -> Row:
    started = time.monotonic()
    try:
        report = asyncio.run(asyncio.wait_for(scenario(scale), timeout))
    except AssertionError as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"FAIL: {exc or 'assertion'} ({Path(where.filename).name}:{where.lineno})"
        return Row(name, False, message, "-", "n/a", time.monotonic() - started)
    except Exception as exc:
        message = f"ERROR: {type(exc).__name__}: {exc}"
        return Row(name, False, message, "-", "n/a", time.monotonic() - started)
    leaks: LeakReport = report.leaks
    return Row(
        report.name,
        leaks.clean,
        "PASS: " + report.outcome,
        report.codes(),
        leaks.summary(),
        report.seconds,
    )


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | outcome | close codes seen | leaks | s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.scenario, row.outcome, row.codes, row.leaks, f"{row.seconds:.1f}"]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


# --- the cost of the protections --------------------------------------------------------

COST_MESSAGES = 20_000
COST_REPEATS = 3
WINDOW = 200


def server_cpu(server: ServerProcess) -> float:
    times = psutil.Process(server.proc.pid).cpu_times()
    return float(times.user + times.system)


async def _client(server: ServerProcess, player: str) -> RawClient:
    ws = await websockets.connect(
        server.url, compression=None, max_queue=None, ping_interval=None, proxy=None
    )
    client = RawClient(ws)
    await client.hello(server.token(player))
    return client


async def _accepted(server: ServerProcess) -> tuple[float, float]:
    """Pings answered with pongs, `WINDOW` in flight: (msgs/s, server CPU us per msg)."""
    client = await _client(server, "cost-accepted")
    ping = msgpack.packb({"t": "ping", "id": 1})
    cpu, start = server_cpu(server), time.monotonic()
    sent = received = 0
    while received < COST_MESSAGES:
        while sent < COST_MESSAGES and sent - received < WINDOW:
            await client.ws.send(ping)
            sent += 1
        frame = await client.recv()
        received += frame.get("t") == "pong"
    elapsed, used = time.monotonic() - start, server_cpu(server) - cpu
    await client.ws.close()
    return COST_MESSAGES / elapsed, used / COST_MESSAGES * 1e6


async def _dropped(server: ServerProcess) -> tuple[float, float]:
    """Messages dropped by the rate limiter until 4029: (msgs/s, server CPU us per msg)."""
    client = await _client(server, "cost-dropped")
    ping = msgpack.packb({"t": "ping", "id": 1})
    cpu, start = server_cpu(server), time.monotonic()
    sent = 0
    try:
        while sent < 4 * COST_MESSAGES and client.ws.protocol.close_rcvd is None:
            await client.ws.send(ping)
            sent += 1
            if sent % 256 == 0:
                await asyncio.sleep(0)
    except websockets.ConnectionClosed:
        pass
    closed = await wait_for(lambda: client.ws.protocol.close_rcvd is not None, start + 60)
    assert closed, "the rate limiter never closed the flood"
    elapsed, used = time.monotonic() - start, server_cpu(server) - cpu
    client.ws.transport.abort()
    return COST_MESSAGES / elapsed, used / COST_MESSAGES * 1e6


async def _stream(server: ServerProcess) -> tuple[float, float]:
    """One unpaced long reply to one reader: (chars/s, server CPU us per frame sent)."""
    client = await _client(server, "cost-stream")
    cpu, start = server_cpu(server), time.monotonic()
    await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "any rumours?"})
    frames = await client.recv_until(lambda f: f.get("t") == "turn.end", timeout=120)
    elapsed, used = time.monotonic() - start, server_cpu(server) - cpu
    await client.ws.close()
    return frames[-1]["chars"] / elapsed, used / len(frames) * 1e6


def _process(env: dict[str, str], config: Path | None = None) -> ServerProcess:
    args = ["--config", str(config)] if config is not None else []
    return start_server_process(env={"NPC_SERVER_LOG_LEVEL": "WARNING", **env}, args=args)


def _median(
    env: dict[str, str],
    measure: Callable[[ServerProcess], Coroutine[Any, Any, tuple[float, float]]],
    config: Path | None = None,
) -> tuple[float, float]:
    """The median of `COST_REPEATS` runs, each on a fresh server process."""
    results: list[tuple[float, float]] = []
    for _ in range(COST_REPEATS):
        server = _process(env, config)
        try:
            results.append(asyncio.run(measure(server)))
        finally:
            server.terminate(signal.SIGKILL)
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def costs() -> list[str]:
    """Measure, on server processes, what the rate limiter and a small SO_SNDBUF cost."""
    lines = [f"| measurement (median of {COST_REPEATS}) | result |", "|---|---|"]
    open_limits = {
        "NPC_SERVER_LIMITS_RATE_PER_S": "1000000000",
        "NPC_SERVER_LIMITS_RATE_BURST": "1000000000",
    }
    rate, us = _median(open_limits, _accepted)
    lines.append(
        f"| ping accepted, pong sent (limiter passes all) | {rate:,.0f} msgs/s, {us:.1f} us server CPU/msg |"
    )
    drop_limits = {
        "NPC_SERVER_LIMITS_RATE_PER_S": "0.001",
        "NPC_SERVER_LIMITS_RATE_BURST": "1",
        "NPC_SERVER_LIMITS_FLOOD_CLOSE_AFTER": str(COST_MESSAGES),
    }
    rate, us = _median(drop_limits, _dropped)
    lines.append(
        f"| ping dropped by the rate limiter | {rate:,.0f} msgs/s, {us:.1f} us server CPU/msg |"
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), 200_000, tokens_per_second=0)
        for sndbuf in (0, 65536, 16384, 4096):
            env = {"NPC_SERVER_SERVER_SEND_BUFFER_BYTES": str(sndbuf)}
            chars, us = _median(env, _stream, config)
            label = "kernel default" if sndbuf == 0 else f"{sndbuf} B"
            lines.append(
                f"| unpaced 200k-char reply to one reader, SO_SNDBUF {label} "
                f"| {chars:,.0f} chars/s, {us:.1f} us server CPU/frame |"
            )
    return lines


# --- command line ------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="the test suite's sizes (about a minute)")
    p.add_argument("--clients", type=int, help="connect storm clients (default 2000)")
    p.add_argument("--members", type=int, help="players in the stalled reader's room (24)")
    p.add_argument("--flood-seconds", type=float, help="sustained flood seconds (60)")
    p.add_argument("--fuzz-examples", type=int, help="Hypothesis examples (2000)")
    p.add_argument("--crash-clients", type=int, help="clients of the killed server (500)")
    p.add_argument("--silent", type=int, help="silent peers of each kind (20)")
    p.add_argument("--fault-players", type=int, help="turns holding the generation cap (32)")
    p.add_argument("--rounds", type=int, default=1, help="run every scenario this many times")
    p.add_argument("--max-minutes", type=float, default=60.0, help="start nothing after this")
    p.add_argument("--scenario-timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--costs", action="store_true", help="also measure the protections' cost")
    return p


def scale_from(args: argparse.Namespace) -> Scale:
    base = QUICK if args.quick else MODERATE
    changes = {
        "storm_clients": args.clients,
        "room_members": args.members,
        "flood_s": args.flood_seconds,
        "fuzz_examples": args.fuzz_examples,
        "crash_clients": args.crash_clients,
        "silent_peers": args.silent,
        "fault_players": args.fault_players,
    }
    values = {key: value for key, value in changes.items() if value is not None}
    return Scale(**{**base.__dict__, **values})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    scale = scale_from(args)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
        return 2
    raise_nofile()
    print(f"scale: {scale}", flush=True)
    deadline = time.monotonic() + args.max_minutes * 60
    rows: list[Row] = []
    for round_number in range(1, max(1, args.rounds) + 1):
        for name in names:
            if time.monotonic() > deadline:
                break
            row = run_one(name, SCENARIOS[name], scale, args.scenario_timeout)
            if args.rounds > 1:
                row.scenario += f" (round {round_number})"
            print(f"{row.scenario}: {row.outcome} [{row.seconds:.1f} s]", flush=True)
            rows.append(row)
    print()
    print(table(rows))
    if args.costs:
        print()
        print("\n".join(costs()))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
