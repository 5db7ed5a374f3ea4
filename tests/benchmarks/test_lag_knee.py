"""How section 4 finds the scripted knee, and how the knee ratio reads a sweep that
never went over it (a fast machine: 2,000 players within 100 ms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import sections
from benchmarks.plan import FULL
from benchmarks.relay import extended
from benchmarks.relay_report import _scripted_knee_ratio
from benchmarks.runner import Runner


def test_extended_steps_up_a_quarter_rounded_up_to_a_hundred() -> None:
    assert [extended(n) for n in (2000, 2500, 3200, 130)] == [2500, 3200, 4000, 200]


def _fake_streams(knee: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Steps whose p99 passes up to `knee` players; the counts measured, in order."""
    measured: list[int] = []

    def stream(run: Runner, label: str, params: dict[str, Any]) -> dict[str, Any]:
        players = int(params["players"])
        measured.append(players)
        p99 = 40.0 if players <= knee else 300.0
        return {"players": players, "lag": {"p99": p99, "n": 100}}

    monkeypatch.setattr(sections, "_stream", stream)
    return measured


def test_the_sweep_steps_past_its_last_level_until_one_is_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    measured = _fake_streams(2700, monkeypatch)
    result = sections.lag(Runner(FULL, tmp_path))
    assert measured[:7] == [1, 100, 500, 1000, 2000, 2500, 3200]
    knee = result["knee"]
    assert knee["max_players_within"] <= 2700 < knee["first_players_over"]
    assert knee["max_players_within"] > 2500  # bisected between 2,500 and 3,200


def test_a_sweep_within_the_knee_at_its_top_does_not_step_up_forever(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    measured = _fake_streams(10**6, monkeypatch)
    result = sections.lag(Runner(FULL, tmp_path))
    assert len(measured) == 5 + FULL.lag_extend
    assert result["knee"]["first_players_over"] is None


def _results(within: int, over: int | None, tokens: float, push: float) -> dict[str, Any]:
    steps = [{"players": within, "delivered_tokens_per_s": tokens}]
    knee = {"max_players_within": within, "first_players_over": over}
    return {
        "lag": {"steps": steps, "knee": knee},
        "rtt": {"quart": {"push": {"frames_per_s": push}}},
    }


def test_the_knee_ratio_of_a_sweep_that_never_went_over_is_a_lower_bound() -> None:
    assert _scripted_knee_ratio(_results(2000, 2500, 39_000.0, 80_000.0))["status"] == "MISS"
    undecided = _scripted_knee_ratio(_results(2000, None, 39_000.0, 80_000.0))
    assert undecided["status"] == "N/A" and "lower bound" in undecided["note"]
    passed = _scripted_knee_ratio(_results(2000, None, 41_000.0, 80_000.0))
    assert passed["status"] == "PASS" and passed["measured"] == 0.512


def test_the_cluster_knee_steps_past_its_last_level_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Section 9's knee series (one process, --workers 2) does the same past 1,200."""
    from benchmarks import cluster

    measured: list[int] = []

    def step(run: Runner, kind: str, players: int) -> dict[str, Any]:
        measured.append(players)
        p99 = 40.0 if players <= 1700 else 300.0
        return {"players": players, "lag": {"p99": p99, "n": 100}, "errors": 0}

    monkeypatch.setattr(cluster, "_knee_step", step)
    series = cluster._knee_series(Runner(FULL, tmp_path), "single")
    assert measured[: len(FULL.cluster_knee_levels) + 2][-3:] == [1200, 1500, 1900]
    knee = series["knee"]
    assert 1500 <= knee["max_players_within"] <= 1700 < knee["first_players_over"] <= 1900
