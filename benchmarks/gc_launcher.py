"""Run npc-server with other garbage-collector settings: a what-if, never the default.

Usage: python -m benchmarks.gc_launcher SETTING [npc-server args...]
SETTING is `off` (gc.disable()) or thresholds `G0,G1,G2` (gc.set_threshold).
The benchmark uses it only with `--server-gc`, to show what a GC setting in
the server would change; the server code itself runs unmodified.
"""

from __future__ import annotations

import gc
import runpy
import sys


def apply(setting: str) -> None:
    if setting == "off":
        gc.disable()
    else:
        gc.set_threshold(*(int(part) for part in setting.split(",")))


if __name__ == "__main__":
    apply(sys.argv[1])
    sys.argv = ["npc_server", *sys.argv[2:]]
    runpy.run_module("npc_server", run_name="__main__", alter_sys=True)
