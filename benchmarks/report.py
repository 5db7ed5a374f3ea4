"""Targets, the Markdown report and the machine description of a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

import psutil

from benchmarks.cluster_report import cluster_targets
from benchmarks.relay_report import relay_targets
from benchmarks.servers import REPO

Result = dict[str, Any]
KIB = 1024
PACKAGES = ("npc-server", "quart", "hypercorn", "websockets", "msgpack", "uvloop", "psutil")


def machine() -> Result:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in (*PACKAGES, "matplotlib"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit or None,
    }


def _get(data: Result, *path: Any) -> Any:
    for key in path:
        if not isinstance(data, dict | list):
            return None
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _target(name: str, measured: Any, limit: str, ok: bool | None, note: str = "") -> Result:
    status = "N/A" if ok is None else ("PASS" if ok else "MISS")
    return {"target": name, "measured": measured, "limit": limit, "status": status, "note": note}


def targets(results: Result) -> list[Result]:
    """Each target of issue 6 as PASS, MISS, or N/A when not measured at its scale."""
    out = []
    r = _get(results, "rtt", "npc_vs_quart_p50")
    out.append(
        _target("ping RTT p50 vs bare Quart echo", r, "<= 1.25x", None if r is None else r <= 1.25)
    )
    levels = _get(results, "interrupt", "levels") or []
    one = next((lv for lv in levels if lv["players"] == 1), None)
    if one is not None and one["ping_in_stream"]["p50"]:
        x = round(one["latency"]["p50"] / one["ping_in_stream"]["p50"], 2)
        late = _get(results, "interrupt", "deltas_after_end")
        rtt_p50 = _get(results, "rtt", "npc", "rtt", "p50")
        note = (
            f"{round(one['latency']['p50'] / rtt_p50, 2)}x the back-to-back ping RTT"
            if rtt_p50
            else ""
        )
        out.append(
            _target(
                "interrupt->turn.end p50 vs ping RTT p50 (both mid-stream); deltas after turn.end",
                f"{x}x; {late}",
                "<= 1.5x; 0",
                x <= 1.5 and late == 0,
                note,
            )
        )
    else:
        out.append(_target("interrupt->turn.end p50 vs ping RTT p50", None, "<= 1.5x", None))
    steps = _get(results, "lag", "steps") or []
    knee = _get(results, "lag", "knee", "max_players_within")
    measured_max = max((s["players"] for s in steps), default=0)
    # Below 2,000 measured players (quick runs) the target is only decided if already missed.
    ok = (knee or 0) >= 2000 if measured_max >= 2000 or (knee or 0) < measured_max else None
    out.append(_target("streaming players at 20 tok/s with p99 lag <= 100 ms", knee, ">= 2000", ok))
    mem = _get(results, "memory", "npc", "levels") or []
    top = mem[-1] if mem else None
    per = round(top["per_connection_bytes"] / KIB, 1) if top else None
    out.append(
        _target(
            f"KiB per idle authenticated connection (at {top['connections'] if top else '-'})",
            per,
            "<= 45",
            None if per is None else per <= 45,
        )
    )
    held = max(
        (lv["connections"] for lv in mem if lv["server_attached"] == lv["connections"]), default=0
    )
    tried = top["connections"] if top else 0
    out.append(
        _target(
            "idle connections held by one process",
            held,
            ">= 10000",
            held >= 10000 if tried >= 10000 else None,
        )
    )
    r = _get(results, "slow", "healthy_p99_ratio")
    out.append(
        _target(
            "healthy players' p99 lag with 10% stalled vs none",
            r,
            "<= 1.2x",
            None if r is None else r <= 1.2,
        )
    )
    return out + relay_targets(results) + cluster_targets(results)


def _row(*cells: Any) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def _table(head: tuple[str, ...], rows: list[str]) -> list[str]:
    return [_row(*head), _row(*("---" for _ in head)), *rows, ""]


def _lat(s: Result | None) -> tuple[Any, ...]:
    if not s:
        return (None,) * 5
    return (s["n"], s["p50"], s["p95"], s["p99"], s["max"])


LAT = ("n", "p50 ms", "p95 ms", "p99 ms", "max ms")
