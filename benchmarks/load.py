"""The load process: runs one scenario against one server and writes its figures.

Usage (the runner does this): python -m benchmarks.load JOB.json RESULT.json
The job names the scenario, the server (pid, host, port) and the parameters;
the token secret comes from NPC_BENCH_SECRET.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import cluster_load, idle, latency, stalls, streaming
from benchmarks.probe import ServerProbe
from benchmarks.servers import raise_nofile
from npc_server.tokens import issue_token

Scenario = Callable[[ServerProbe, Callable[[str], str], dict[str, Any]], Awaitable[dict[str, Any]]]

SCENARIOS: dict[str, Scenario] = {
    "npc_rtt": latency.npc_rtt,
    "echo_rtt": latency.echo_rtt,
    "say": latency.say_latency,
    "interrupt": latency.interrupt_latency,
    "stream": streaming.stream_step,
    "release": stalls.release_stalled,
    "idle": idle.idle_memory,
    "cluster_stream": cluster_load.cluster_stream,
    "cluster_idle": cluster_load.cluster_idle,
}


async def run_job(job: dict[str, Any], secret: str) -> dict[str, Any]:
    server = job["server"]
    probe = ServerProbe(server["pid"], server["host"], server["port"])

    def tokens(player: str) -> str:
        return issue_token(secret, player, 3600.0)

    return await SCENARIOS[job["scenario"]](probe, tokens, job["params"])


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    raise_nofile()
    main_coro = run_job(job, os.environ.get("NPC_BENCH_SECRET", ""))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_coro)
    else:
        result = uvloop.run(main_coro)
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
