"""The relay section in Markdown, and the targets of issue 11 (ratios from the same run)."""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]


def _row(*cells: Any) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def relay_markdown(r: Result) -> list[str]:
    """Section 8: one table of every step, then the knees and the CPU ratios."""
    head = (
        "server",
        "tok/s",
        "delta_ms",
        "players",
        "lag p50 ms",
        "p99 ms",
        "delivered tok/s",
        "server CPU %",
        "server CPU us/token",
        "model server CPU %",
        "client CPU %",
        "other CPU %",
        "errors",
    )
    lines = [
        f"## 8. Relay: openai NPCs against a fake model server ({r['first_token_ms']} ms "
        "to the first token)",
        "",
        _row(*head),
        _row(*("---" for _ in head)),
    ]
    for series in r["series"]:
        name = "npc-server" if series["kind"] == "npc" else "FastAPI tutorial"
        for s in series["steps"]:
            lines.append(
                _row(
                    name,
                    f"{series['rate']:g}",
                    series["delta_ms"] if series["kind"] == "npc" else "-",
                    s["players"],
                    s["lag"]["p50"],
                    s["lag"]["p99"],
                    s["delivered_tokens_per_s"],
                    s["server_cpu_pct"],
                    s["cpu_us_per_token"],
                    s.get("model_cpu_pct"),
                    s["client_cpu_pct"],
                    s.get("other_cpu_pct"),
                    s["errors"],
                )
            )
    lines.append("")
    for series in r["series"]:
        knee = series["knee"]
        name = "npc-server" if series["kind"] == "npc" else "FastAPI tutorial"
        pacing = f", delta_ms {series['delta_ms']}" if series["kind"] == "npc" else ""
        lines.append(
            f"- {name} at {series['rate']:g} tok/s{pacing}: p99 <= 100 ms up to "
            f"**{knee['max_players_within']}** players, over from {knee['first_players_over']}."
        )
    for key, value in r.items():
        if key.startswith("npc_vs_tutorial_cpu_"):
            lines.append(
                f"- CPU per token, npc-server / tutorial ({key.removeprefix('npc_vs_tutorial_cpu_')}"
                f" = tok/s_delta_ms) at {value['players']} players: **{value['ratio']}x**."
            )
    for floor in r.get("receive_floor", []):
        lines.append(
            f"- Receiving alone (benchmarks/recv_floor.py: uvloop, a protocol that only "
            f"counts, no parsing): **{floor['cpu_us_per_chunk']} us** of CPU a chunk at "
            f"{floor['sockets']} sockets x {floor['rate']:g} chunks/s, "
            f"{floor['cpu_percent']}% of a core: what each relayed token costs on top of "
            "a scripted one at the least."
        )
    return [*lines, ""]


def _floor(results: Result, rate: float) -> Result | None:
    floors = (results.get("relay") or {}).get("receive_floor", [])
    return next((f for f in floors if f["rate"] == rate), None)


def _series(results: Result, kind: str, rate: float, delta_ms: int) -> Result | None:
    for s in (results.get("relay") or {}).get("series", []):
        if s["kind"] == kind and s["rate"] == rate and (kind != "npc" or s["delta_ms"] == delta_ms):
            return dict(s)
    return None


def _target(name: str, measured: Any, limit: str, ok: bool | None, note: str = "") -> Result:
    status = "N/A" if ok is None else ("PASS" if ok else "MISS")
    return {"target": name, "measured": measured, "limit": limit, "status": status, "note": note}


def _scripted_cpu(results: Result, players: int | None) -> tuple[int, float] | None:
    """The lag section's CPU per token at `players` (else at its busiest step within the knee)."""
    lag = results.get("lag") or {}
    steps = [s for s in lag.get("steps", []) if "error" not in s and s["players"] > 1]
    if not steps:
        return None
    same = [s for s in steps if s["players"] == players]
    within = lag.get("knee", {}).get("max_players_within")
    chosen = same or [s for s in steps if s["players"] == within] or steps[-1:]
    return chosen[0]["players"], chosen[0]["cpu_us_per_token"]


def relay_targets(results: Result) -> list[Result]:
    """Issue 11's targets; N/A where the sections they compare did not run."""
    out = []
    relay20 = _series(results, "npc", 20.0, 0)
    busiest = None
    if relay20 is not None:
        within = relay20["knee"]["max_players_within"]
        busiest = next((s for s in relay20["steps"] if s["players"] == within), None)
    scripted = _scripted_cpu(results, None if busiest is None else busiest["players"])
    if busiest is not None and scripted is not None:
        x = round(busiest["cpu_us_per_token"] / scripted[1], 2)
        note = f"relay at {busiest['players']} players vs scripted at {scripted[0]}"
        if (floor := _floor(results, 20.0)) is not None:
            least = round((scripted[1] + floor["cpu_us_per_chunk"]) / scripted[1], 2)
            note += f"; at least {least}x with the receive floor alone"
        out.append(_target("relay CPU/token vs scripted", f"{x}x", "<= 1.3x", x <= 1.3, note))
    else:
        out.append(_target("relay CPU/token vs scripted", None, "<= 1.3x", None))
    vs = (results.get("relay") or {}).get("npc_vs_tutorial_cpu_20_0")
    out.append(
        _target(
            "relay CPU/token vs the FastAPI tutorial (20 tok/s)",
            None if vs is None else f"{vs['ratio']}x",
            "<= 0.25x",
            None if vs is None or vs["ratio"] is None else vs["ratio"] <= 0.25,
            "" if vs is None else f"at {vs['players']} players",
        )
    )
    out.append(_scripted_knee_ratio(results))
    for rate, delta, need in ((20.0, 0, 1200), (60.0, 50, 1000)):
        series = _series(results, "npc", rate, delta)
        steps = [] if series is None else series["steps"]
        knee = None if series is None else series["knee"]["max_players_within"]
        tried = max((s["players"] for s in steps), default=0)
        # Decided once the knee is reached, or once it was passed below the target.
        decided = (bool(steps) and (knee or 0) >= need) or tried > (knee or 0)
        measured = (
            knee if knee is not None or not steps else f"< {min(s['players'] for s in steps)}"
        )
        floor = _floor(results, rate)
        note = (
            ""
            if floor is None
            else f"receiving alone at {floor['sockets']} x {floor['rate']:g}/s: "
            f"{floor['cpu_percent']}% of a core"
        )
        out.append(
            _target(
                f"relay players at {rate:g} tok/s, delta_ms {delta}, p99 lag <= 100 ms",
                measured,
                f">= {need}",
                (knee or 0) >= need if decided else None,
                note,
            )
        )
    return out


def _scripted_knee_ratio(results: Result) -> Result:
    """Tokens/s delivered at the scripted knee / the bare Quart push rate, same run."""
    lag = results.get("lag") or {}
    within = lag.get("knee", {}).get("max_players_within")
    step = next((s for s in lag.get("steps", []) if s["players"] == within), None)
    push = (((results.get("rtt") or {}).get("quart") or {}).get("push") or {}).get("frames_per_s")
    if step is None or not push:
        return _target("scripted knee tokens/s / bare Quart push frames/s", None, ">= 0.5", None)
    x = round(step["delivered_tokens_per_s"] / push, 3)
    note = f"{within} players, {step['delivered_tokens_per_s']} tok/s; push {push} frames/s"
    ok: bool | None = x >= 0.5
    if lag.get("knee", {}).get("first_players_over") is None:
        # No step went over: the knee is higher, so this is a lower bound. It can
        # pass the target; it cannot fail it.
        note += "; a lower bound (no step was over the knee)"
        ok = True if x >= 0.5 else None
    return _target("scripted knee tokens/s / bare Quart push frames/s", x, ">= 0.5", ok, note)
