"""`--workers N`: N server processes on one listening socket, supervised.

The parent binds the socket (so `port = 0` works and every worker accepts on
the same one; the kernel spreads connections over them), starts N fresh
interpreters that serve on it, and restarts one that dies unexpectedly. On
SIGTERM or SIGINT it forwards the signal, so each worker drains (its players
reconnect to the others and resume), and exits once they all have. Workers
are nodes of a cluster: they share players through `[cluster] redis_url`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from npc_server.config import Config
from npc_server.serve import Listener, admin_listener, make_listener, say_line

log = logging.getLogger(__name__)

WORKER_FD = "NPC_SERVER_WORKER_FD"
WORKER_ADMIN_FD = "NPC_SERVER_WORKER_ADMIN_FD"
# A worker that keeps dying is not restarted for ever: at most this many in a minute.
MAX_RESTARTS_PER_MINUTE = 5

# Starts one worker: (argv, environment, descriptors it inherits) -> the process.
Spawn = Callable[[list[str], dict[str, str], list[int]], subprocess.Popen[bytes]]


def spawn_worker(argv: list[str], env: dict[str, str], fds: list[int]) -> subprocess.Popen[bytes]:
    """The real `Spawn`: a fresh interpreter that inherits the listening sockets."""
    return subprocess.Popen(argv, env=env, pass_fds=fds)


def inherited_listeners() -> tuple[Listener | None, Listener | None]:
    """In a worker: the parent's listening sockets (main, metrics), or (None, None)."""
    return _inherited(WORKER_FD), _inherited(WORKER_ADMIN_FD)


def _inherited(variable: str) -> Listener | None:
    value = os.environ.get(variable)
    if not value:
        return None
    import socket

    fd = int(value)
    probe = socket.socket(fileno=fd)
    host, port = probe.getsockname()[:2]
    probe.detach()
    return Listener(fd, host, port)


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The command line for a worker: the parent's, without `--workers N`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


class Supervisor:
    """Starts, restarts and stops the worker processes.

    The stop runs in a signal handler, which may run between any two steps of a
    start or a restart: so a start after `stopping` is set starts nothing, and a
    worker forked as the stop began (not yet in `procs` when `_forward` looked)
    is signalled by `_start` itself.
    """

    def __init__(self, config: Config, argv: Sequence[str], *, spawn: Spawn = spawn_worker) -> None:
        self.count = config.server.workers
        self._spawn = spawn
        self.listener = make_listener(config)
        self.admin = admin_listener(config)
        self.argv = [sys.executable, "-m", "npc_server", *worker_argv(argv)]
        self.procs: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
        self.stopping = False
        # Stopped because workers kept dying: the server failed, whatever they exited with
        # as they were stopped (a unit's Restart=on-failure must see it).
        self.failed = False
        self._restarts: list[float] = []
        if config.metrics.enabled:
            from npc_server.metrics import prepare_multiprocess

            prepare_multiprocess(Path(tempfile.mkdtemp(prefix="npc-server-metrics-")))

    def run(self) -> int:
        """Serve until the workers have all exited after a signal; the exit status."""
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        address = f"http://{self.listener.host}:{self.listener.port}"
        say_line(f"npc-server listening on {address} with {self.count} workers")
        if self.admin is not None:  # the workers serve it and do not say so: one line here
            admin = f"http://{self.admin.host}:{self.admin.port}/metrics"
            say_line(f"npc-server metrics on {admin}")
        for index in range(self.count):
            self._start(index)
        status = 0
        while self.procs:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            status = max(status, self._exited(pid, code))
        if self.failed:
            return 1
        return status if not self.stopping else 0

    def _start(self, index: int) -> None:
        if self.stopping:  # a stop began: nothing new would be signalled or waited for
            return
        env = {
            **os.environ,
            WORKER_FD: str(self.listener.fd),
            "NPC_SERVER_WORKER_INDEX": str(index),
        }
        fds = [self.listener.fd]
        if self.admin is not None:
            env[WORKER_ADMIN_FD] = str(self.admin.fd)
            fds.append(self.admin.fd)
        proc = self._spawn(self.argv, env, fds)
        self.procs[proc.pid] = (index, proc)
        # The stop began while it was forked, before `procs` held it: _forward missed it.
        # (If _forward saw it after all, a second SIGTERM changes nothing: a worker drains once.)
        if self.stopping:
            proc.send_signal(signal.SIGTERM)

    def _exited(self, pid: int, code: int) -> int:
        entry = self.procs.pop(pid, None)
        if entry is None:
            return 0
        index, proc = entry
        proc.returncode = os.waitstatus_to_exitcode(code)
        self._forget_metrics(pid)
        if self.stopping:
            return 0
        log.warning("worker %d (pid %d) exited with %s", index, pid, proc.returncode)
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > MAX_RESTARTS_PER_MINUTE:
            log.error("workers keep dying; stopping the server")
            self.failed = True
            self._forward(signal.SIGTERM, None)
            return 1
        self._start(index)
        return 0

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for _, proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    @staticmethod
    def _forget_metrics(pid: int) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from npc_server.metrics import worker_exited

            worker_exited(pid)
