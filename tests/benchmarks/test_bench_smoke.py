"""The benchmark runs end to end with tiny numbers and writes complete, well-formed output."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.sections import SECTIONS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LATENCY_KEYS = {"n", "mean", "p50", "p95", "p99", "max"}


def _numbers(value: Any, where: str) -> None:
    """Every leaf is a finite number, a string, a bool or None; no NaN sneaks in."""
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _numbers(item, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is {value}"
    else:
        assert value is None or isinstance(value, int | str | bool), f"{where}: {value!r}"


def _latency(summary: Any, where: str) -> None:
    assert isinstance(summary, dict), where
    assert set(summary) == LATENCY_KEYS, f"{where}: {sorted(summary)}"
    assert all(isinstance(v, int | float) for v in summary.values()), where
    assert summary["n"] > 0, f"{where}: no samples"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "tiny.json").read_text(encoding="utf-8"))
    return doc, (out / "tiny.md").read_text(encoding="utf-8"), out


def test_every_section_is_present_without_errors(run: tuple[dict[str, Any], str, Path]) -> None:
    """All seven figures' sections ran and none recorded an error."""
    doc, _, _ = run
    assert set(doc) >= {"meta", "results", "targets", "profiles"}
    assert list(doc["results"]) == list(SECTIONS)
    for name, section in doc["results"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"
    _numbers(doc, "doc")


def test_meta_names_machine_versions_and_plan(run: tuple[dict[str, Any], str, Path]) -> None:
    """The JSON says what it was measured on and with which numbers."""
    meta = run[0]["meta"]
    assert meta["plan"]["name"] == "tiny"
    assert meta["machine"]["cores"] >= 1
    for package in ("npc-server", "quart", "hypercorn", "websockets", "msgpack"):
        assert meta["machine"]["versions"][package], package


def test_latencies_are_summaries_with_samples(run: tuple[dict[str, Any], str, Path]) -> None:
    """Every latency has n, mean, p50, p95, p99 and max, from at least one sample."""
    results = run[0]["results"]
    for kind in ("npc", "quart", "websockets"):
        _latency(results["rtt"][kind]["rtt"], f"rtt.{kind}")
    # The bare Quart push is measured in every alternating round; the median is kept.
    push = results["rtt"]["quart"]["push"]
    rates = push["rounds_frames_per_s"]
    assert len(rates) == run[0]["meta"]["plan"]["rtt_rounds"]
    assert push["frames_per_s"] == sorted(rates)[(len(rates) - 1) // 2]
    _latency(results["say"]["ack"], "say.ack")
    _latency(results["say"]["first_delta_minus_delay"], "say.first")
    for level in results["interrupt"]["levels"]:
        _latency(level["latency"], f"interrupt.{level['players']}")
        assert level["deltas_after_end"] == 0
    for step in results["lag"]["steps"]:
        _latency(step["lag"], f"lag.{step['players']}")
        assert step["tokens"] > 0
    assert results["slow"]["pairs"]
    for pair in results["slow"]["pairs"]:
        for phase in ("without_stalls", "with_stalls"):
            _latency(pair[phase]["lag"], f"slow.{phase}")


def test_memory_and_release_figures(run: tuple[dict[str, Any], str, Path]) -> None:
    """Memory has one row per level for each server; the release records what clients saw."""
    results = run[0]["results"]
    plan = run[0]["meta"]["plan"]
    for kind in ("npc", "quart", "websockets"):
        levels = results["memory"][kind]["levels"]
        assert [lv["connections"] for lv in levels] == plan["memory_levels"]
        assert all(isinstance(lv["per_connection_bytes"], int) for lv in levels)
    release = results["slow"]["release"]
    assert sum(release["close_seen"].values()) == plan["release_players"]
    assert sum(release["resumed"].values()) == plan["release_players"]


def test_targets_and_markdown(run: tuple[dict[str, Any], str, Path]) -> None:
    """Fourteen targets with a status each; the Markdown has every section and the target table."""
    doc, markdown, out = run
    assert len(doc["targets"]) == 14
    assert {t["status"] for t in doc["targets"]} <= {"PASS", "MISS", "N/A"}
    for heading in (
        "## Targets",
        "## 1. Ping RTT",
        "## 2. Say",
        "## 3. Interrupt",
        "## 4. Delivery lag",
        "## 5. Memory",
        "## 6. Slow consumers",
        "## 8. Relay",
        "## 9. Cluster",
    ):
        assert heading in markdown, heading
    assert "FAILED" not in markdown
    for line in markdown.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line
    charts = sorted(p.name for p in out.glob("*.png"))
    assert charts in ([], ["tiny-lag.png", "tiny-memory.png"])


def test_relay_streams_through_npc_server_and_the_tutorial(
    run: tuple[dict[str, Any], str, Path],
) -> None:
    """The relay section streamed tokens through openai NPCs and the FastAPI baseline alike."""
    relay = run[0]["results"]["relay"]
    kinds = {(s["kind"], s["delta_ms"]) for s in relay["series"]}
    assert kinds == {("npc", 50), ("tutorial", 0)}
    for series in relay["series"]:
        for step in series["steps"]:
            _latency(step["lag"], f"relay {series['kind']}")
            assert step["tokens"] > 0 and step["errors"] == 0
            assert step["cpu_us_per_token"] > 0 and step["model_cpu_pct"] >= 0
    assert relay["npc_vs_tutorial_cpu_60_50"]["ratio"] > 0
    [floor] = relay["receive_floor"]  # the tiny plan runs 60 tok/s on 5 sockets
    assert (floor["rate"], floor["sockets"]) == (60.0, 5)
    assert 0.5 * 300 < floor["chunks_per_s"] < 1.5 * 300  # 5 sockets x 60 a second
    assert floor["cpu_us_per_chunk"] > 0
    assert f"**{floor['cpu_us_per_chunk']} us** of CPU a chunk at 5 sockets" in run[1]
