"""What-if: section 9's CPU steps with the Redis broker dropping its own echo before decoding.

    .venv/bin/python -m benchmarks.cluster_whatif [--quick]

Alternates, per kind of work (private streams, rooms across two nodes) and
repeat: one process, one node on Redis, two nodes, then the same two Redis
setups with `benchmarks.echo_launcher` (change 1 of benchmarks/README.md,
"Issue 10: cluster", applied from outside; the server's code is unmodified).
Writes results/issue10-echo-whatif.json and prints the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

from benchmarks import cluster
from benchmarks.plan import FULL, QUICK
from benchmarks.runner import Result, Runner
from benchmarks.servers import REPO, SERVER_ECHO_ENV, install_cleanup, stop_all

STEPS = (
    ("single", ""),
    ("one_node", ""),
    ("two_nodes", ""),
    ("one_node", "skip"),
    ("two_nodes", "skip"),
)


def _step(run: Runner, setup: str, echo: str, rooms: bool, repeat: int) -> Result:
    if echo:
        os.environ[SERVER_ECHO_ENV] = echo
    try:
        result = cluster._cpu_step(run, setup, rooms, repeat)
    finally:
        os.environ.pop(SERVER_ECHO_ENV, None)
    result["echo"] = echo or "decoded"
    return result


def whatif(run: Runner, repeats: int) -> Result:
    out: Result = {}
    for mode, rooms in (("private", False), ("rooms", True)):
        steps = [
            _step(run, setup, echo, rooms, r)
            for r in range(1, repeats + 1)
            for setup, echo in STEPS
        ]
        medians = {
            f"{setup}{'-skip' if echo else ''}": statistics.median(
                s["cpu_us_per_token"]
                for s in steps
                if s["setup"] == setup and s["echo"] == (echo or "decoded")
            )
            for setup, echo in STEPS
        }
        out[mode] = {"steps": steps, "median_us_per_token": medians}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster_whatif", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    plan = dataclasses.replace(QUICK if args.quick else FULL, quiet_wait_s=10.0)
    raw = REPO / "benchmarks" / "results" / "raw" / f"{time.strftime('%Y%m%dT%H%M%S')}-whatif"
    install_cleanup()
    run = Runner(plan, raw)
    run.quiet_wait = plan.quiet_wait_s
    try:
        result = whatif(run, args.repeats)
    finally:
        stop_all()
    result["plan"] = plan.as_dict()
    path = REPO / "benchmarks" / "results" / "issue10-echo-whatif.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for mode in ("private", "rooms"):
        print(mode, json.dumps(result[mode]["median_us_per_token"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
