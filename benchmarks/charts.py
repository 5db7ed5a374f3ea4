"""PNG charts of a run: lag percentiles vs players, memory vs connections.

matplotlib is optional: without it the charts are skipped with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Result = dict[str, Any]


def write_charts(results: Result, out_dir: Path, stem: str) -> list[Path]:
    """Write the charts the results allow; the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib not installed: charts skipped (pip install matplotlib)")
        return []
    written = []
    steps = (results.get("lag") or {}).get("steps")
    if steps:
        written.append(_lag_chart(plt, steps, out_dir / f"{stem}-lag.png"))
    memory = results.get("memory")
    if memory and "error" not in memory:
        written.append(_memory_chart(plt, memory, out_dir / f"{stem}-memory.png"))
    return written


def _lag_chart(plt: Any, steps: list[Result], path: Path) -> Path:
    players = [s["players"] for s in steps]
    fig, (lag_ax, rate_ax) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-"), ("max", "x:")):
        lag_ax.plot(players, [max(s["lag"][key], 0.01) for s in steps], style, label=key)
    lag_ax.axhline(100, color="red", linewidth=1, linestyle="--", label="100 ms")
    lag_ax.set(xscale="log", yscale="log", xlabel="streaming players", ylabel="delivery lag (ms)")
    lag_ax.set_title("Token delivery lag", fontsize=10)
    lag_ax.legend(fontsize=7)
    rate_ax.plot(players, [s["delivered_tokens_per_s"] for s in steps], "o-", label="delivered")
    alone = steps[0]["per_player_tokens_per_s"]  # the 1-player step: what each player asks for
    rate_ax.plot(players, [n * alone for n in players], "k--", label="offered")
    rate_ax.set(xscale="log", xlabel="streaming players", ylabel="tokens/s")
    rate_ax.set_title("Delivered tokens/s", fontsize=10)
    rate_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _memory_chart(plt: Any, memory: Result, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=80)
    for kind, label in (
        ("npc", "npc-server"),
        ("quart", "bare Quart"),
        ("websockets", "bare websockets"),
    ):
        levels = (memory.get(kind) or {}).get("levels") or []
        if levels:
            xs = [lv["connections"] for lv in levels]
            ax.plot(xs, [lv["growth_bytes"] / 2**20 for lv in levels], "o-", label=label)
    ax.set(xlabel="idle connections", ylabel="server RSS growth (MiB)")
    ax.set_title("Server memory vs idle connections", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
