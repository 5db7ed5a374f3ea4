"""The cluster section in Markdown, and the cluster targets of issue 10 (same-run ratios)."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
SETUP_NAMES = {
    "single": "one process",
    "one_node": "one node on Redis",
    "two_nodes": "two nodes + Redis",
}


def _row(*cells: Any) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def _table(head: tuple[str, ...], rows: list[str]) -> list[str]:
    return [_row(*head), _row(*("---" for _ in head)), *rows, ""]


def _load_cells(s: Result) -> tuple[Any, ...]:
    """The cells every step of the section has: load, lag, throughput, CPU."""
    return (
        s["players"],
        s["lag"]["p50"],
        s["lag"]["p99"],
        s["delivered_tokens_per_s"],
        s["server_cpu_pct"],
        "/".join(str(p) for p in s["node_cpu_pct"]),
        s["cpu_us_per_token"],
        s["redis_cpu_pct"],
    )


def _redis_cells(s: Result) -> tuple[Any, ...]:
    r = s.get("redis")
    if not r:
        return (None, None, None)
    return (r["commands_per_token"], r["input_bytes_per_token"], r["output_bytes_per_token"])


def _cpu_rows(steps: list[Result]) -> list[str]:
    return [
        _row(
            SETUP_NAMES.get(s["setup"], s["setup"]),
            *_load_cells(s),
            s["redis_cpu_us_per_token"],
            *_redis_cells(s),
            s["client_cpu_pct"],
            s["other_cpu_pct"],
            s["errors"],
        )
        for s in steps
    ]


CPU_HEAD = (
    "setup",
    "players",
    "lag p50 ms",
    "p99 ms",
    "delivered tok/s",
    "nodes CPU %",
    "per node %",
    "nodes CPU us/token",
    "redis CPU %",
    "redis CPU us/token",
    "redis cmds/token",
    "redis bytes in/token",
    "redis bytes out/token",
    "client CPU %",
    "other CPU %",
    "errors",
)


def _cpu(r: Result) -> list[str]:
    lines: list[str] = []
    for mode, what in (
        ("private", "private streams, half the players on each node"),
        ("rooms", "rooms of two, speaker and listener on different nodes"),
    ):
        part = r["cpu"][mode]
        cpu = part["cpu_us_per_token"]
        lines += [f"### CPU per delivered token: {what}", ""]
        lines += _table(CPU_HEAD, _cpu_rows(part["steps"]))
        lines += [
            f"Medians, us per delivered token: one process {cpu['single']}, one node on Redis "
            f"{cpu['one_node']}, two nodes {cpu['two_nodes']} (+ redis-server "
            f"{part['redis_cpu_us_per_token_two_nodes']}). Two nodes / one process: "
            f"**{part['two_nodes_vs_single']}x** ({part['two_nodes_and_redis_vs_single']}x with "
            f"Redis's CPU); one node on Redis / one process: {part['one_node_vs_single']}x.",
            "",
        ]
    return lines


def _knee(r: Result) -> list[str]:
    head = (
        "server",
        "players",
        "lag p50 ms",
        "p99 ms",
        "delivered tok/s",
        "server CPU %",
        "per process %",
        "CPU us/token",
        "redis CPU %",
        "client CPU %",
        "other CPU %",
        "errors",
    )
    rows = []
    knee = r["knee"]
    for kind, name in (("single", "one process"), ("workers", f"--workers {r['workers']}")):
        for s in knee[kind]["steps"]:
            rows.append(
                _row(
                    name,
                    *_load_cells(s),
                    s["client_cpu_pct"],
                    s["other_cpu_pct"],
                    s["errors"],
                )
            )
    one, two = knee["single"]["knee"], knee["workers"]["knee"]
    return [
        f"### Streaming players with p99 lag <= 100 ms: --workers {r['workers']} vs one process",
        "",
        *_table(head, rows),
        f"Knee: one process **{one['max_players_within']}** (over from "
        f"{one['first_players_over']}), --workers {r['workers']} **{two['max_players_within']}** "
        f"(over from {two['first_players_over']}): **{knee['workers_vs_single']}x**.",
        "",
    ]


def _idle(i: Result) -> list[str]:
    return [
        f"### Redis per idle session ({i['sessions']} sessions on two nodes, "
        f"{i['window_s']} s held)",
        "",
        f"- Opening: {i['open_commands_per_session']} commands per session "
        f"({i['open']['per_command']}), {i['open_input_bytes_per_session']} bytes in; "
        f"{i['pubsub_channels_per_session']} pub/sub channels per session.",
        f"- Held idle: {i['idle_commands_per_session_s']} commands and "
        f"{i['idle_input_bytes_per_session_s']} bytes in, "
        f"{i['idle_output_bytes_per_session_s']} out, per session per second "
        f"({i['held']['per_command']}).",
        f"- Redis memory per held session: **{i['memory_per_session_bytes']} bytes** "
        f"(used_memory with the sessions held against none; {i['memory_after_close_bytes']} "
        "bytes above the start once all closed).",
        "",
    ]


def cluster_markdown(r: Result) -> list[str]:
    """Section 9: CPU per token by setup, the --workers knee, Redis per idle session."""
    return [  # a narrowed run (NPC_BENCH_CLUSTER_PARTS) has only some of the parts
        "## 9. Cluster mode on Redis",
        "",
        *(_cpu(r) if "cpu" in r else []),
        *(_knee(r) if "knee" in r else []),
        *(_idle(r["idle"]) if "idle" in r else []),
    ]


def _target(name: str, measured: Any, limit: str, ok: bool | None, note: str = "") -> Result:
    status = "N/A" if ok is None else ("PASS" if ok else "MISS")
    return {"target": name, "measured": measured, "limit": limit, "status": status, "note": note}


def cluster_targets(results: Result) -> list[Result]:
    """Issue 10's performance targets; N/A where the cluster section did not run."""
    r = results.get("cluster") or {}
    out = []
    for mode in ("private", "rooms"):
        part = (r.get("cpu") or {}).get(mode) or {}
        x = part.get("two_nodes_vs_single")
        note = "" if not part else f"{part['two_nodes_and_redis_vs_single']}x with Redis's CPU"
        name = f"cluster CPU/token, two nodes vs one process ({mode})"
        out.append(_target(name, x, "<= 1.3x", None if x is None else x <= 1.3, note))
    knee = r.get("knee") or {}
    x = knee.get("workers_vs_single")
    note = ""
    if knee:
        one = knee["single"]["knee"]["max_players_within"]
        two = knee["workers"]["knee"]["max_players_within"]
        note = f"{two} against {one} players; no limit set by the issue"
    out.append(
        _target("--workers 2 knee vs one process (20 tok/s, p99 <= 100 ms)", x, "ratio", None, note)
    )
    return out
