"""How section 1 folds its alternating rounds into one figure."""

from __future__ import annotations

from typing import Any

from benchmarks.sections import _median_round


def _round(p50: float, push: float | None) -> dict[str, Any]:
    measured: dict[str, Any] = {"rtt": {"p50": p50}, "other_cpu_pct": 0.0}
    if push is not None:
        measured["push"] = {
            "frames": 10,
            "frames_per_s": push,
            "server_cpu_us_per_frame": 1e6 / push,
        }
    return measured


def test_the_push_rate_is_the_median_round_not_the_first() -> None:
    """A slow first push (the machine's speed drifts) no longer sets the knee ratio's divisor."""
    chosen = _median_round([_round(0.2, 33_000.0), _round(0.1, 51_000.0), _round(0.3, 45_000.0)])
    assert chosen["push"]["frames_per_s"] == 45_000.0
    assert chosen["push"]["server_cpu_us_per_frame"] == 1e6 / 45_000.0  # that round's, whole
    assert chosen["push"]["rounds_frames_per_s"] == [33_000.0, 51_000.0, 45_000.0]
    assert chosen["rtt"]["p50"] == 0.2  # the latency round is chosen by its own median
    assert chosen["rounds_p50"] == [0.2, 0.1, 0.3]


def test_npc_rounds_have_no_push() -> None:
    chosen = _median_round([_round(0.2, None), _round(0.1, None)])
    assert "push" not in chosen
