"""The Markdown report of one run: targets first, then one table per figure."""

from __future__ import annotations

from typing import Any

from benchmarks.cluster_report import cluster_markdown
from benchmarks.relay_report import relay_markdown
from benchmarks.report import KIB, LAT, _get, _lat, _row, _table

Result = dict[str, Any]


def render(doc: Result) -> str:
    """The whole report of a run document (meta, results, targets)."""
    meta, results = doc["meta"], doc["results"]
    m = meta["machine"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items() if val)
    lines = [
        f"# npc-server benchmark: {meta['plan']['name']} run",
        "",
        f"{meta['started']}, {meta['duration_s']} s. {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}, commit {m['commit']}.",
        f"Versions: {v}.",
        f"Other processes' CPU use just before the run: {meta.get('other_cpu_pct_at_start')}% "
        "(the 'other CPU %' columns give it per measurement; high values make figures suspect).",
        "",
        *(
            [f"**What-if run: npc-server with GC setting `{meta['server_gc']}`.**", ""]
            if meta.get("server_gc")
            else []
        ),
        "## Targets",
        "",
        *_table(
            ("target", "measured", "limit", "result", "note"),
            [
                _row(t["target"], t["measured"], t["limit"], t["status"], t["note"])
                for t in doc["targets"]
            ],
        ),
    ]
    for name, part in SECTIONS:
        section = results.get(name)
        if section is None:
            continue
        if "error" in section:
            lines += [f"## {name}", "", f"FAILED: {section['error']}", ""]
            continue
        lines += part(section)
    if doc.get("profiles"):
        lines += _profiles(doc["profiles"])
    return "\n".join(lines)


def _rtt(r: Result) -> list[str]:
    rows = []
    for kind, label in (
        ("npc", "npc-server ping->pong"),
        ("quart", "bare Quart echo"),
        ("websockets", "bare websockets echo"),
    ):
        push = r[kind].get("push") or {}
        rows.append(
            _row(
                label,
                *_lat(r[kind]["rtt"]),
                push.get("frames_per_s"),
                push.get("server_cpu_us_per_frame"),
                r[kind].get("other_cpu_pct"),
            )
        )
    return [
        "## 1. Ping RTT",
        "",
        *_table(("server", *LAT, "push frames/s", "server CPU us/frame", "other CPU %"), rows),
        f"npc-server / bare Quart p50: **{r['npc_vs_quart_p50']}x**; "
        f"/ bare websockets: {r['npc_vs_websockets_p50']}x.",
        "",
    ]


def _say(r: Result) -> list[str]:
    rows = [
        _row("say -> ack", *_lat(r["ack"])),
        _row(f"say -> first delta - {r['first_token_ms']} ms", *_lat(r["first_delta_minus_delay"])),
    ]
    return ["## 2. Say", "", *_table(("interval", *LAT), rows)]


def _interrupt(r: Result) -> list[str]:
    rows = [
        _row(
            lv["players"],
            *_lat(lv["latency"]),
            lv["ping_in_stream"]["p50"],
            lv["ping_in_stream"]["p99"],
            lv["deltas_after_end"],
            lv["wrong_reason"],
            lv["server_cpu_pct"],
            lv["client_cpu_pct"],
            lv.get("other_cpu_pct"),
        )
        for lv in r["levels"]
    ]
    head = (
        "streaming players",
        *LAT,
        "mid-stream ping p50 ms",
        "ping p99 ms",
        "deltas after turn.end",
        "not 'interrupted'",
        "server CPU %",
        "client CPU %",
        "other CPU %",
    )
    return ["## 3. Interrupt -> turn.end", "", *_table(head, rows)]


def _steps(steps: list[Result]) -> list[str]:
    rows = [
        _row(
            s["players"],
            s["stalled"],
            *_lat(s["lag"])[1:],
            s["delivered_tokens_per_s"],
            s["per_player_tokens_per_s"],
            s["server_cpu_pct"],
            s["cpu_us_per_token"],
            s["client_cpu_pct"],
            s.get("other_cpu_pct"),
            s["errors"],
        )
        for s in steps
    ]
    head = (
        "players",
        "stalled",
        "lag p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "delivered tok/s",
        "tok/s per healthy player",
        "server CPU %",
        "server CPU us/token",
        "client CPU %",
        "other CPU %",
        "errors",
    )
    return _table(head, rows)


def _lag(r: Result) -> list[str]:
    knee = r["knee"]
    return [
        f"## 4. Delivery lag at {r['tokens_per_second']:g} tokens/s per player (and 7. CPU per token)",
        "",
        *_steps(r["steps"]),
        f"Knee (p99 lag > 100 ms): within up to **{knee['max_players_within']}** players, "
        f"over from {knee['first_players_over']}.",
        "",
    ]


def _memory(r: Result) -> list[str]:
    kinds = [k for k in ("npc", "quart", "websockets") if k in r]
    levels = [lv["connections"] for lv in r[kinds[0]]["levels"]]
    rows = []
    for i, count in enumerate(levels):
        cells: list[Any] = [count]
        for kind in kinds:
            lv = _get(r, kind, "levels", i)
            cells.append(round(lv["per_connection_bytes"] / KIB, 1) if lv else None)
            cells.append(round(lv["rss_bytes"] / 2**20, 1) if lv else None)
        cells.append(_get(r, "npc", "levels", i, "server_attached"))
        rows.append(_row(*cells))
    head: tuple[str, ...] = ("idle connections",)
    for kind in kinds:
        head += (f"{kind} KiB/conn", f"{kind} RSS MiB")
    return ["## 5. Memory per idle connection", "", *_table((*head, "npc attached"), rows)]


def _slow(r: Result) -> list[str]:
    rel = r["release"]
    times = rel["server_release_s"]
    steps = [p[phase] for p in r["pairs"] for phase in ("without_stalls", "with_stalls")]
    released = [len(p["with_stalls"]["stalled_released_s"]) for p in r["pairs"]]
    return [
        f"## 6. Slow consumers ({r['stalled']} of {r['players']} players stop reading)",
        "",
        *_steps(steps),
        f"Healthy players' p99 lag, median over {len(r['pairs'])} runs each: "
        f"{r['p99_with_median']} ms with stalled players, {r['p99_without_median']} ms "
        f"without: **{r['healthy_p99_ratio']}x**. Server RSS growth per stalled socket: "
        f"{r['rss_growth_per_stalled_bytes'] / KIB:.1f} KiB; kernel TCP memory per stalled "
        f"socket: {r['kernel_tcp_growth_per_stalled_bytes'] / KIB:.1f} KiB (medians; "
        "negative: a stalled session writes, and so keeps for replay, fewer frames). "
        f"Stalled sockets the client saw closed within each window: {released}.",
        "",
        f"Release ({rel['players']} stalled readers of a {rel['tokens_per_second']:g} tokens/s "
        f"stream, SO_RCVBUF {rel['rcvbuf']}, server env {rel['server_env'] or 'default'}): "
        f"server let go of all after **{times if times is not None else 'not within the timeout'} s**; "
        f"clients saw {rel['close_seen']}; resume afterwards: {rel['resumed']}; peak server RSS "
        f"growth per stalled socket {rel['peak_rss_growth_per_stalled_bytes'] / KIB:.1f} KiB, "
        f"kernel TCP {rel['peak_kernel_tcp_growth_per_stalled_bytes'] / KIB:.1f} KiB.",
        "",
    ]


def _profiles(profiles: Result) -> list[str]:
    lines = ["## Profiles (py-spy, % of samples)", ""]
    for label, prof in profiles.items():
        if "skipped" in prof:
            lines += [f"{label}: {prof['skipped']}", ""]
            continue
        rows = [
            _row(
                own[0] if own else None,
                own[1] if own else None,
                inc[0] if inc else None,
                inc[1] if inc else None,
            )
            for own, inc in zip(prof["own"], prof["inclusive"], strict=False)
        ]
        lines += [f"### {label} ({prof['samples']} samples)", ""]
        lines += _table(("own time", "%", "inclusive", "%"), rows)
    return lines


SECTIONS = (
    ("rtt", _rtt),
    ("say", _say),
    ("interrupt", _interrupt),
    ("lag", _lag),
    ("memory", _memory),
    ("slow", _slow),
    ("relay", relay_markdown),
    ("cluster", cluster_markdown),
)
