"""Server and load processes the benchmark starts, and always stops.

Every process goes into one registry; `stop_all` runs from `finally` blocks,
from `atexit` and on SIGTERM, so no server outlives a run, whatever fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from npc_server.config import DEFAULT_CONFIG

REPO = Path(__file__).resolve().parents[1]
SERVER_TOML = DEFAULT_CONFIG
NPCS_DIR = DEFAULT_CONFIG.parent / "npcs"
LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Limits that would refuse the benchmark's own load: every client comes from
# 127.0.0.1, and the default generation cap (512) is below the player counts.
BENCH_LIMITS = {
    "NPC_SERVER_LIMITS_CONNECTS_PER_S_ADDRESS": "1000000",
    "NPC_SERVER_LIMITS_CONNECTS_BURST_ADDRESS": "1000000",
    "NPC_SERVER_LIMITS_RATE_PER_S": "100000",
    "NPC_SERVER_LIMITS_RATE_BURST": "100000",
    "NPC_SERVER_LIMITS_MAX_GENERATIONS": "1000000",
    "NPC_SERVER_SERVER_GRACEFUL_TIMEOUT": "0.5",
}


# `off` or `G0,G1,G2`: run npc-server through benchmarks.gc_launcher (see --server-gc).
SERVER_GC_ENV = "NPC_BENCH_SERVER_GC"
# `skip`: run npc-server through benchmarks.echo_launcher (its Redis broker drops its echo early).
SERVER_ECHO_ENV = "NPC_BENCH_SERVER_ECHO"


@dataclass
class Proc:
    """A child process with its output drained to a log file."""

    name: str
    popen: subprocess.Popen[str]
    log_path: Path
    host: str = ""
    port: int = 0
    output: list[str] = field(default_factory=list)
    _log: TextIO | None = None
    _reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `STOP_TIMEOUT`; the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        if self._reader is not None:
            self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)
        return self.popen.returncode

    def __hash__(self) -> int:
        return id(self)


_LIVE: set[Proc] = set()


def stop_all() -> None:
    """Stop every process still running (atexit, signals, finally blocks)."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop children at exit and turn SIGTERM into SystemExit so `finally` runs."""
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_sigterm)


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _drain(proc: Proc) -> None:
    assert proc.popen.stdout is not None
    assert proc._log is not None
    for line in proc.popen.stdout:
        proc._log.write(line)
        if len(proc.output) < 2000:
            proc.output.append(line.rstrip())


SERVER_CPU = 0
LOAD_CPU = 1


def pin(pid: int, cpu: int) -> None:
    """Keep a process on one core (when the machine has it), server and load apart."""
    if hasattr(os, "sched_setaffinity") and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(pid, {cpu})


def spawn(
    name: str,
    argv: list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    wait_listening: bool = True,
    cpu: int | None = SERVER_CPU,
) -> Proc:
    """Start `argv` pinned to `cpu`; when `wait_listening`, return once it prints its address."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        argv,
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    proc = Proc(name, popen, log_path, _log=log_path.open("w", encoding="utf-8"))
    _LIVE.add(proc)
    try:
        if cpu is not None:
            pin(popen.pid, cpu)
        if wait_listening:
            _await_listening(proc)
    except BaseException:
        proc.stop()
        raise
    proc._reader = threading.Thread(target=_drain, args=(proc,), daemon=True)
    proc._reader.start()
    return proc


def _await_listening(proc: Proc) -> None:
    assert proc.popen.stdout is not None
    assert proc._log is not None
    deadline = time.monotonic() + START_TIMEOUT
    for line in proc.popen.stdout:  # bounded: the process prints the line, or exits
        proc._log.write(line)
        proc.output.append(line.rstrip())
        match = LISTENING.search(line)
        if match:
            proc.host, proc.port = match.group(1), int(match.group(2))
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{proc.name} did not start:\n" + "\n".join(proc.output[-30:]))


def write_server_toml(
    path: Path, scripted: Mapping[str, float | int], npcs_dir: Path = NPCS_DIR
) -> Path:
    """The shipped server.toml with absolute NPC paths and `[overrides.scripted]` set."""
    text = SERVER_TOML.read_text(encoding="utf-8")
    text = re.sub(r'(?m)^npcs_dir = "[^"]*"', f'npcs_dir = "{npcs_dir}"', text)
    lines = "".join(f"{key} = {value}\n" for key, value in scripted.items())
    if "[overrides.scripted]\n" not in text:
        raise RuntimeError(f"{SERVER_TOML} has no [overrides.scripted] table to extend")
    text = text.replace("[overrides.scripted]\n", "[overrides.scripted]\n" + lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def start_npc_server(
    name: str,
    run_dir: Path,
    secret: str,
    scripted: Mapping[str, float | int],
    env: Mapping[str, str] | None = None,
    npcs_dir: Path = NPCS_DIR,
    args: Sequence[str] = (),
    cpu: int | None = SERVER_CPU,
) -> Proc:
    """`python -m npc_server` on a free loopback port, with benchmark limits (and `args`)."""
    config = write_server_toml(run_dir / f"{name}.toml", scripted, npcs_dir)
    server_env = {
        **BENCH_LIMITS,
        "NPC_SERVER_SECRET": secret,
        "NPC_SERVER_HOST": "127.0.0.1",
        "NPC_SERVER_PORT": "0",
        **(env or {}),
    }
    module = ["-m", "npc_server"]
    gc_setting = os.environ.get(SERVER_GC_ENV)
    if gc_setting:  # a what-if (--server-gc): the server's code still runs unmodified
        module = ["-m", "benchmarks.gc_launcher", gc_setting]
    if os.environ.get(SERVER_ECHO_ENV) == "skip":  # a what-if: benchmarks/cluster_whatif.py
        module = ["-m", "benchmarks.echo_launcher"]
    argv = [sys.executable, *module, "--config", str(config), "--log-level", "WARNING", *args]
    profile = os.environ.get("NPC_BENCH_CPROFILE")
    if profile:
        # cProfile writes its file when the server exits after SIGTERM (it drains first).
        out = run_dir / f"{name}.cprofile"
        argv = [sys.executable, "-m", "cProfile", "-o", str(out), *argv[1:]]
    return spawn(name, argv, run_dir, server_env, cpu=cpu)


BASELINES = {
    "quart": "benchmarks.baselines.quart_echo",
    "websockets": "benchmarks.baselines.websockets_echo",
    "fastapi": "benchmarks.baselines.fastapi_tutorial",
}


def start_baseline(
    kind: str, run_dir: Path, name: str, env: Mapping[str, str] | None = None
) -> Proc:
    """One of the bare servers of `benchmarks/baselines/`."""
    argv = [sys.executable, "-m", BASELINES[kind], "--host", "127.0.0.1", "--port", "0"]
    return spawn(name, argv, run_dir, env)


# The relay section's NPCs: openai-backed, several, because the `openai` SDK's
# pool holds at most 1,000 connections per client (one client per NPC).
RELAY_NPC = """id = "{id}"
name = "Relay {index}"
persona = "A benchmark NPC whose replies come from a fake model server."
busy = "interrupt"

[backend]
kind = "openai"
base_url = "{url}/v1"
model = "bench"
"""


def write_relay_npcs(directory: Path, model_url: str, count: int) -> list[str]:
    """`count` openai NPCs pointing at `model_url`; their ids."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = [f"relay{i}" for i in range(count)]
    for index, npc in enumerate(ids):
        text = RELAY_NPC.format(id=npc, index=index, url=model_url)
        (directory / f"{npc}.toml").write_text(text, encoding="utf-8")
    return ids


def start_fake_openai(
    run_dir: Path, name: str, tokens_per_second: float, first_token_ms: float
) -> Proc:
    """The paced fake model server, on the load's core (its CPU is reported apart)."""
    argv = [sys.executable, "-m", "benchmarks.fake_openai", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--tokens-per-second", str(tokens_per_second)]
    argv += ["--first-token-ms", str(first_token_ms)]
    return spawn(name, argv, run_dir, cpu=LOAD_CPU)
