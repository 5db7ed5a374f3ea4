"""Sampling profiles of a server process with py-spy, summarised as top functions.

py-spy is optional (`pip install py-spy`); without it, profiling is skipped
with a message. It samples from outside the process (`--nonblocking`), so
the server runs unmodified, but py-spy itself takes some CPU on a 2-core
machine: profiled runs are for finding hot spots, not for the figures.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATE_HZ = 200
TOP = 15
TRUNK_SHARE = 0.85
# Frames every sample passes through (interpreter start, the loop's run): they
# would top the inclusive list and say nothing. Their own time stays listed:
# for `Runner.run` it is the C side of the event loop (uvloop, task steps).
TRUNK = frozenset(
    {"<frozen runpy>", "runners.py", "cli.py", "serve.py", "__main__.py", "__init__.py"}
)
_LINE = re.compile(r" \(([^)]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    path: Path
    available: bool = True
    stacks: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """Top functions by own samples and by inclusive samples, in % of all samples."""
        if not self.available:
            return {"skipped": "py-spy not installed (pip install py-spy)"}
        self._load()
        total = sum(self.stacks.values())
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            frames = [_function(f) for f in stack.split(";") if f]
            if not frames:
                continue
            own[frames[-1]] += count
            for name in set(frames):
                if name.rpartition("(")[2].rstrip(")") not in TRUNK:
                    inclusive[name] += count

        # Frames nearly every sample passes through (the C event loop) are trunk too.
        for name in [n for n, c in inclusive.items() if c > TRUNK_SHARE * total]:
            del inclusive[name]

        def top(counter: Counter[str]) -> list[list[Any]]:
            return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(TOP)]

        return {
            "samples": total,
            "file": self.path.name,
            "own": top(own),
            "inclusive": top(inclusive),
        }

    def _load(self) -> None:
        if self.stacks or not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                self.stacks[stack] += int(count)


def _function(frame: str) -> str:
    """`name (path/to/file.py:12)` -> `name (file.py)`: lines of one function add up.

    Native frames (`write (libc.so.6)`) have no line and stay as they are.
    """
    match = _LINE.search(frame)
    if not match:
        return frame
    name = frame[: match.start()]
    return f"{name} ({Path(match.group(1)).name})"


@contextlib.contextmanager
def record(pid: int, stem: Path, seconds: float, native: bool = False) -> Iterator[Profile]:
    """Sample `pid` for at most `seconds` while the body runs (C frames too if `native`)."""
    exe = py_spy()
    profile = Profile(stem.with_suffix(".txt"), available=exe is not None)
    if exe is None:
        print("[bench] py-spy not found: profile skipped (pip install py-spy)", flush=True)
        yield profile
        return
    # Native unwinding needs the process paused per sample; Python stacks do not.
    mode = ["--native"] if native else ["--nonblocking"]
    argv = [exe, "record", "--pid", str(pid), *mode, "--rate", str(RATE_HZ // (2 if native else 1))]
    argv += ["--duration", str(int(seconds) + 1), "--format", "raw", "--output", str(profile.path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield profile
    finally:
        # SIGINT makes py-spy write what it sampled so far, then exit.
        if proc.poll() is None:
            proc.send_signal(2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
