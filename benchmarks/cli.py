"""The benchmark command: which sections, how big, where the results go."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import sections
from benchmarks.charts import write_charts
from benchmarks.markdown import render
from benchmarks.plan import FULL, QUICK, TINY, Plan
from benchmarks.probe import other_cpu_pct
from benchmarks.profiling import Profile
from benchmarks.report import machine, targets
from benchmarks.runner import Runner
from benchmarks.servers import REPO, SERVER_GC_ENV, install_cleanup, raise_nofile, stop_all

RESULTS = REPO / "benchmarks" / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure npc-server against bare Quart and websockets servers.",
    )
    p.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"all (default) or some of: {', '.join(sections.SECTIONS)}",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small numbers, under 60 s in all")
    size.add_argument("--tiny", action="store_true", help="smallest numbers (smoke test)")
    p.add_argument(
        "--out", type=Path, default=RESULTS, help=f"output directory (default {RESULTS})"
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="python",
        choices=["python", "native"],
        help="sample the server with py-spy: Python stacks (default) or native ones "
        "(C frames too: syscalls, GC; pauses the server per sample). Slows the server down.",
    )
    p.add_argument(
        "--players",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        metavar="N[,N...]",
        help="streaming player counts of the lag section instead of the plan's (no bisecting)",
    )
    p.add_argument(
        "--server-gc",
        metavar="off|G0,G1,G2",
        help="what-if: run npc-server with the GC disabled or with these thresholds",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="before each measurement wait up to S s for other processes to use < 20%% CPU "
        "(default 20; 0 with --quick and --tiny)",
    )
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="only redo the Markdown and charts of a run"
    )
    return p


def run_sections(runner: Runner, names: Sequence[str]) -> None:
    for name in names:
        body: Callable[[Runner], dict[str, Any]] = getattr(sections, name)
        runner.section(name, functools.partial(body, runner))


def write_outputs(doc: dict[str, Any], out: Path, stem: str, charts: bool) -> None:
    """The JSON (first, so a report bug loses nothing), the Markdown and the charts."""
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    markdown = render(doc)
    (out / f"{stem}.md").write_text(markdown + "\n", encoding="utf-8")
    written = write_charts(doc["results"], out, stem) if charts else []
    print(markdown)
    for target in doc["targets"]:
        print(f"{target['status']:4}  {target['target']}: {target['measured']} ({target['limit']})")
    print(f"[bench] wrote {out / (stem + '.json')}, {out / (stem + '.md')}", *written)


def rereport(path: Path, charts: bool) -> int:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    doc["targets"] = targets(doc["results"])
    raw = Path(doc["meta"]["raw_dir"])
    for label, prof in doc.get("profiles", {}).items():
        if "file" in prof and (raw / prof["file"]).exists():  # summarise again from the stacks
            doc["profiles"][label] = Profile(raw / prof["file"]).summary()
    write_outputs(doc, path.parent, path.stem, charts)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    unknown = set(args.sections) - {"all", *sections.SECTIONS}
    if unknown:
        cli.error(
            f"unknown section(s) {sorted(unknown)}; expected all or {list(sections.SECTIONS)}"
        )
    plan: Plan = TINY if args.tiny else QUICK if args.quick else FULL
    if args.players:
        plan = dataclasses.replace(plan, lag_levels=args.players, lag_refine=0)
    if args.report is not None:
        return rereport(args.report, charts=not args.no_charts)
    if args.server_gc:
        os.environ[SERVER_GC_ENV] = args.server_gc
    wanted = args.sections or ["all"]
    names = list(sections.SECTIONS) if "all" in wanted else list(dict.fromkeys(wanted))
    stem = plan.name if names == list(sections.SECTIONS) else f"{plan.name}-{'-'.join(names)}"
    if args.server_gc:
        stem += "-gc-" + args.server_gc.replace(",", "_")
    if args.profile:
        stem += f"-profile-{args.profile}"
    started = datetime.datetime.now(datetime.UTC)
    out: Path = args.out
    raw_dir = out / "raw" / f"{started:%Y%m%dT%H%M%S}-{stem}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    install_cleanup()
    nofile = raise_nofile()
    other = other_cpu_pct()
    if other > 20:
        print(
            f"[bench] WARNING: other processes use {other}% CPU; figures will be noisy", flush=True
        )
    runner = Runner(plan, raw_dir, profile=args.profile)
    # Quick and tiny runs keep their time budget: they never wait (see --quiet-wait).
    runner.quiet_wait = args.quiet_wait if args.quiet_wait is not None else plan.quiet_wait_s
    t0 = time.monotonic()
    try:
        run_sections(runner, names)
    finally:
        stop_all()
    doc: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - t0, 1),
            "sections": names,
            "plan": plan.as_dict(),
            "machine": machine(),
            "nofile_limit": nofile,
            "other_cpu_pct_at_start": other,
            "quiet_waits": runner.waits,
            "profiled": args.profile,
            "server_gc": args.server_gc,
            "cprofile": bool(os.environ.get("NPC_BENCH_CPROFILE")),
            "raw_dir": str(raw_dir),
        },
        "results": runner.results,
        "targets": targets(runner.results),
        "profiles": runner.profiles,
    }
    # A profiled run's figures are slowed by the profiler: no charts of them.
    write_outputs(doc, out, stem, charts=not (args.no_charts or args.profile))
    failed = [name for name, r in runner.results.items() if "error" in r]
    return 1 if failed else 0
