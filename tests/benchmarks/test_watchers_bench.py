"""`python -m benchmarks.watchers` runs end to end with tiny numbers and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_the_watchers_benchmark_measures_both_transports(tmp_path: Path) -> None:
    """One SSE and one WebSocket row, each with room events delivered and no reader lost."""
    out = tmp_path / "watchers.json"
    # Enough events for the server's CPU to show above the 10 ms clock tick on a fast
    # host (20 readers for 1 s read 0 there).
    argv = ["--sizes", "50", "--seconds", "2", "--out", str(out)]
    env = {"NPC_BENCH_RUN_DIR": str(tmp_path / "run"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.watchers", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["transport"] for r in rows] == ["sse", "websocket"]
    for row in rows:
        assert row["readers"] == 50 and row["room_events"] > 0, row
        assert row["readers_lost"] == 0 and row["us_per_event"] > 0, row
    assert "| 50 | sse |" in done.stdout
