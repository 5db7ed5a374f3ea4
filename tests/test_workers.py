"""The `--workers` supervisor: a SIGTERM that comes as a worker starts leaves no worker behind.

Each supervisor runs in a process of its own (its os.wait() would reap any child of
the test runner), with real worker processes started through its `spawn` seam. The
seam raises the SIGTERM in the supervisor itself, just before or just after a fork,
so the supervisor's handler runs at exactly that point of a start or a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.support.server import REPO

pytestmark = pytest.mark.e2e

# argv: workers, how many of the first spawns exit at once, which spawn the stop
# comes with, and whether it comes "before" or "after" that spawn's fork.
SUPERVISE = """
import json, signal, sys
from npc_server.config import load_config, with_overrides
from npc_server.workers import Supervisor, spawn_worker

workers, dying, stop_at, moment = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
spawned = []

def spawn(argv, env, fds):
    number = len(spawned)
    code = "import sys; sys.exit(3)" if number < dying else "import signal; signal.pause()"
    if number == stop_at and moment == "before":
        signal.raise_signal(signal.SIGTERM)  # the handler runs before this returns
    proc = spawn_worker([sys.executable, "-c", code], env, fds)
    spawned.append(proc)
    if number == stop_at and moment == "after":
        signal.raise_signal(signal.SIGTERM)
    return proc

config = with_overrides(load_config(None), server={"workers": workers, "port": 0})
status = Supervisor(config, [], spawn=spawn).run()
print(json.dumps({"status": status, "exit_codes": [proc.returncode for proc in spawned]}))
"""


def supervise(workers: int, dying: int, stop_at: int, moment: str) -> dict[str, Any]:
    """What the supervisor returned and how each worker it spawned exited (None: not
    reaped). A supervisor that does not exit, or leaves a worker holding its output
    pipes, fails the test after 30 s; its process group is then killed."""
    args = [str(workers), str(dying), str(stop_at), moment]
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # its workers share its group: one kill for a stray
    )
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the stop never finished:\n{out}{err}") from None
    assert proc.returncode == 0, err
    report: dict[str, Any] = json.loads(out.splitlines()[-1])
    return report


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_sigterm_as_a_dead_worker_is_restarted_stops_the_new_one(moment: str) -> None:
    """The only worker dies; the SIGTERM comes as its replacement is forked (the handler
    did not see it in `procs`): the replacement is signalled and reaped, status 0."""
    report = supervise(workers=1, dying=1, stop_at=1, moment=moment)
    assert report == {"status": 0, "exit_codes": [3, -signal.SIGTERM]}


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_sigterm_during_the_first_starts_starts_no_more(moment: str) -> None:
    """A SIGTERM while the first of two workers is forked: that one is signalled and
    reaped, the second is never started."""
    report = supervise(workers=2, dying=0, stop_at=0, moment=moment)
    assert report == {"status": 0, "exit_codes": [-signal.SIGTERM]}
