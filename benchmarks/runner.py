"""The orchestrator: starts servers, runs load processes, collects every figure.

Each measurement gets fresh server processes, so one step's leftovers
(sessions, generations, allocator state) never colour the next. The load
always runs in a separate process (`benchmarks.load`).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import profiling
from benchmarks.plan import Plan
from benchmarks.probe import other_cpu_pct
from benchmarks.servers import (
    LOAD_CPU,
    NPCS_DIR,
    Proc,
    spawn,
    start_baseline,
    start_npc_server,
)

Result = dict[str, Any]
LOAD_SLACK_S = 120.0
QUIET_PCT = 20.0


class Runner:
    """Runs the sections of one benchmark run and keeps their results."""

    def __init__(self, plan: Plan, raw_dir: Path, profile: str | None = None) -> None:
        self.plan = plan
        self.raw_dir = raw_dir
        self.profile = profile
        self.secret = secrets.token_hex(24)
        self.results: Result = {}
        self.profiles: Result = {}
        self.quiet_wait = 0.0
        self.waits: list[Result] = []
        self._jobs = 0

    # --- processes ------------------------------------------------------------

    def scripted(self, **extra: float | int) -> dict[str, float | int]:
        """The benchmark NPC's pacing: fixed rate, no jitter, replies that outlast a test."""
        plan = self.plan
        return {
            "first_token_ms": plan.first_token_ms,
            "tokens_per_second": plan.tokens_per_second,
            "jitter": 0,
            "long_reply_chars": 2000,  # about 350 pieces: 17 s at 20 tokens/s
            **extra,
        }

    @contextmanager
    def npc_server(
        self,
        name: str,
        scripted: dict[str, float | int] | None = None,
        env: dict[str, str] | None = None,
        npcs_dir: Path = NPCS_DIR,
    ) -> Iterator[Proc]:
        server = start_npc_server(
            name, self.raw_dir, self.secret, scripted or self.scripted(), env=env, npcs_dir=npcs_dir
        )
        try:
            yield server
        finally:
            server.stop()

    @contextmanager
    def baseline(self, kind: str, label: str, env: dict[str, str] | None = None) -> Iterator[Proc]:
        server = start_baseline(kind, self.raw_dir, f"{label}-{kind}", env)
        try:
            yield server
        finally:
            server.stop()

    def load(self, scenario: str, server: Proc, params: Result, budget_s: float) -> Result:
        """Run one scenario in a load process; its result, or an error it raised."""
        self._jobs += 1
        job_path = self.raw_dir / f"job-{self._jobs:02d}-{scenario}.json"
        result_path = job_path.with_name(job_path.stem + "-result.json")
        job = {
            "scenario": scenario,
            "server": {"pid": server.pid, "host": server.host, "port": server.port},
            "params": params,
        }
        job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
        self._await_quiet(job_path.stem)
        argv = [sys.executable, "-m", "benchmarks.load", str(job_path), str(result_path)]
        env = {"NPC_BENCH_SECRET": self.secret}
        proc = spawn(job_path.stem, argv, self.raw_dir, env, wait_listening=False, cpu=LOAD_CPU)
        try:
            code = proc.popen.wait(budget_s + LOAD_SLACK_S)
        finally:
            proc.stop()
        if code != 0 or not result_path.exists():
            tail = "\n".join(proc.log_path.read_text(encoding="utf-8").splitlines()[-15:])
            raise RuntimeError(f"load process {scenario} failed (exit {code}):\n{tail}")
        result: Result = json.loads(result_path.read_text(encoding="utf-8"))
        return result

    def _await_quiet(self, label: str) -> None:
        """Wait (bounded) until other processes leave the CPU mostly idle; note the wait."""
        deadline = time.monotonic() + self.quiet_wait
        busy = other_cpu_pct(0.3) if self.quiet_wait > 0 else 0.0
        waited = 0.0
        while busy > QUIET_PCT and time.monotonic() < deadline:
            time.sleep(1.0)
            waited += 1.3
            busy = other_cpu_pct(0.3)
        if waited:
            self.waits.append({"job": label, "waited_s": round(waited, 1), "other_cpu_pct": busy})
            print(f"[bench] waited {waited:.0f} s for a quiet machine ({busy}% other CPU)")

    def profiled(
        self, label: str, server: Proc, seconds: float, run: Callable[[], Result]
    ) -> Result:
        """Run `run`, sampling the server with py-spy meanwhile when profiling is on."""
        if not self.profile:
            return run()
        stem = self.raw_dir / f"profile-{label}"
        with profiling.record(server.pid, stem, seconds, native=self.profile == "native") as prof:
            result = run()
        self.profiles[label] = prof.summary()
        return result

    # --- sections -----------------------------------------------------------

    def section(self, name: str, body: Callable[[], Result]) -> None:
        """Run one section; a failure is recorded as its result, the others still run."""
        started = time.monotonic()
        print(f"[bench] {name} ...", flush=True)
        try:
            result = body()
        except Exception as exc:  # one broken section must not lose the others
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        self.results[name] = result
        print(f"[bench] {name} done in {result['elapsed_s']} s", flush=True)
