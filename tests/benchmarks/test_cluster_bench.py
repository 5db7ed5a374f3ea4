"""The cluster section and the Redis load simulation run for real, tiny, and give their figures."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import cluster, redis_sim
from benchmarks.cluster_report import cluster_markdown, cluster_targets
from benchmarks.plan import TINY
from benchmarks.runner import Runner
from benchmarks.servers import stop_all

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed"),
]

REPO = Path(__file__).resolve().parents[2]
PLAN = dataclasses.replace(
    TINY,
    # Enough tokens in the window for CPU times (10 ms clock ticks) to be above zero,
    # also on a fast host (10 players for 1 s were 200 tokens, ~6 ms of CPU: 0 ticks).
    cluster_players=40,
    cluster_duration_s=2.0,
    lag_ramp_s=0.1,
    cluster_knee_levels=(10,),
    cluster_idle_sessions=6,
    cluster_idle_window_s=0.2,
)


@pytest.fixture(scope="module")
def section(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runner = Runner(PLAN, tmp_path_factory.mktemp("cluster"))
    try:
        return cluster.cluster(runner)
    finally:
        stop_all()


def _streamed(step: dict[str, Any]) -> None:
    assert step["tokens"] > 0 and step["errors"] == 0, step
    assert step["lag"]["n"] == step["tokens"]
    assert step["cpu_us_per_token"] > 0


def test_two_nodes_share_redis_and_cpu_is_counted_per_node(section: dict[str, Any]) -> None:
    """Two-node steps stream through both nodes, count both nodes' CPU and Redis's commands."""
    for mode in ("private", "rooms"):
        part = section["cpu"][mode]
        by_setup = {s["setup"]: s for s in part["steps"]}
        assert set(by_setup) == {"single", "two_nodes"}
        for step in part["steps"]:
            _streamed(step)
        two = by_setup["two_nodes"]
        assert two["endpoints"] == 2 and len(two["node_cpu_pct"]) == 2
        assert "redis" not in by_setup["single"]
        if mode == "rooms":  # every token is one PUBLISH reaching two members: half each
            assert two["redis"]["publish_per_token"] == pytest.approx(0.5, rel=0.35)
            assert two["redis"]["input_bytes_per_token"] > 20
        else:  # a player's private stream on one node is not published: no other node listens
            assert two["redis"]["publish_per_token"] < 0.1
        assert part["two_nodes_vs_single"] is not None and part["two_nodes_vs_single"] > 0


def test_rooms_cross_nodes_through_redis(section: dict[str, Any]) -> None:
    """In rooms, Redis sends each publication out twice (the other node and the echo)."""
    two = next(s for s in section["cpu"]["rooms"]["steps"] if s["setup"] == "two_nodes")
    redis = two["redis"]
    assert redis["output_bytes_per_token"] > 1.5 * redis["input_bytes_per_token"]


def test_workers_knee_runs_two_worker_processes(section: dict[str, Any]) -> None:
    """The --workers step measures the supervisor and its two workers; both series have a knee."""
    knee = section["knee"]
    (workers,) = knee["workers"]["steps"]
    assert workers["node_processes"] == 3 and workers["endpoints"] == 1
    _streamed(workers)
    for kind in ("single", "workers"):
        assert knee[kind]["knee"]["max_players_within"] in (None, 10)
    assert "workers_vs_single" in knee


def test_idle_sessions_cost_redis_subscriptions_and_memory(section: dict[str, Any]) -> None:
    """Each held session subscribes two channels in Redis and takes some of its memory."""
    idle = section["idle"]
    assert idle["sessions"] == PLAN.cluster_idle_sessions
    assert idle["pubsub_channels_per_session"] == 2
    assert idle["open"]["per_command"].get("subscribe", 0) >= 1
    assert idle["memory_per_session_bytes"] > 0


def test_report_and_targets_of_the_section(section: dict[str, Any]) -> None:
    """The Markdown has the three parts; the CPU targets are decided, the knee ratio reported."""
    text = "\n".join(cluster_markdown(section))
    for heading in ("## 9. Cluster", "CPU per delivered token", "--workers 2", "idle session"):
        assert heading in text
    targets = cluster_targets({"cluster": section})
    assert [t["status"] in ("PASS", "MISS") for t in targets] == [True, True, False]


def test_redis_simulation_measures_redis_per_token(tmp_path: Path) -> None:
    """The tiny simulation publishes what it offers and reads Redis's cost per token."""
    out = tmp_path / "sim.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.redis_sim", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    points = json.loads(out.read_text())["points"]
    assert len(points) == len(redis_sim.TINY)
    for point, row in zip(redis_sim.TINY, points, strict=True):
        assert row["kept_up"], row
        assert row["published_per_s"] == pytest.approx(point.tokens_per_s, rel=0.2)
        rooms = sum(
            len(redis_sim.room_players(i, first, count, point.cross))
            for i, (first, count) in enumerate(redis_sim.layout(point))
        )
        assert row["pubsub_channels"] == 2 * point.players + rooms
        # An envelope of a Delta is about 80 bytes; each goes back to its origin at least.
        assert 60 < row["input_bytes_per_token"] < 200
        assert row["output_bytes_per_token"] >= row["input_bytes_per_token"]
        assert row["redis_cpu_us_per_token"] > 0
    assert "| sim nodes |" in done.stdout


def test_a_narrowed_cluster_run_has_only_its_parts_at_its_players(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NPC_BENCH_CLUSTER_PARTS and _PLAYERS: the CPU steps alone at that many players,
    and a report of just them; an unknown part is refused by name."""
    monkeypatch.setenv("NPC_BENCH_CLUSTER_PARTS", "cpu")
    monkeypatch.setenv("NPC_BENCH_CLUSTER_PLAYERS", "6")
    plan = dataclasses.replace(PLAN, cluster_setups=("single",))
    try:
        result = cluster.cluster(Runner(plan, tmp_path))
    finally:
        stop_all()
    assert set(result) == {"players", "workers", "cpu"} and result["players"] == 6
    assert {s["players"] for s in result["cpu"]["private"]["steps"]} == {6}
    report = "\n".join(cluster_markdown(result))
    assert "CPU per delivered token" in report and "--workers" not in report
    monkeypatch.setenv("NPC_BENCH_CLUSTER_PARTS", "cpu,knees")
    with pytest.raises(ValueError, match="NPC_BENCH_CLUSTER_PARTS: unknown \\['knees'\\]"):
        cluster.cluster(Runner(plan, tmp_path))
