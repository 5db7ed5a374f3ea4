"""Leak checks for the stress scenarios: what a server still holds once its clients are gone.

A scenario takes a `Baseline` after a warm-up (so lazily created things
already exist), runs, closes or drops every client, and then settles: the
functions here wait, bounded by one deadline, for the server to let go, and
report what is left compared with the baseline:

- server-side TCP sockets on the listening port (psutil, by local port):
  none may remain;
- open file descriptors of the server process: at most `FD_TOLERANCE` more;
- asyncio tasks (in-process servers only): back to the baseline count;
- registry rows: every `node.statistics()` count zero (sessions, attached,
  players, rooms, memberships, conversations, turns, generations,
  open_actions), no stored contexts, no open actions, no room membership of
  the scenario's players; in-process after the resume window has passed and
  `node.expire_sessions()` ran, for a server process through `/healthz`
  once its sweeper ran;
- frames still queued in the scenario's sessions: zero, and each session
  expired (sessions are passed as weak references, so that what the test
  itself holds does not count as the server's memory);
- live Python allocations (`sys.getallocatedblocks()`, in-process): at most
  `BLOCKS_TOLERANCE` more, after the test dropped its own references;
- RSS of the server process: at most the scenario's tolerance above the
  baseline. In-process the allocator keeps some of the memory past traffic
  used (the test's clients share the process), so that tolerance grows with
  the traffic; for a server process it is tight.

Nothing here raises on a leak: the report lists `problems`, and the caller
(a test, or the soak table) decides.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import sys
import time
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import psutil

from npc_server.session import Session, SessionState
from tests.support.client import connect
from tests.support.server import RunningServer, ServerProcess

# Descriptors the process may open lazily and keep (resolver, executor, psutil's own).
FD_TOLERANCE = 4
# Live Python allocations (sys.getallocatedblocks) that may remain: caches, per-player
# connect-rate buckets (bounded), interned strings. A leaked session is ~1,000 blocks.
BLOCKS_TOLERANCE = 50_000
SETTLE_TIMEOUT = 20.0
POLL_S = 0.02
HEALTH_COUNTS = (
    "sockets",
    "sessions",
    "attached",
    "players",
    "rooms",
    "memberships",
    "conversations",
    "turns",
    "generations",
    "open_actions",
)
MB = 1024 * 1024


class Target(Protocol):
    """A server under test: in-process (`RunningServer`) or a process (`ServerProcess`)."""

    @property
    def url(self) -> str: ...

    @property
    def http_url(self) -> str: ...

    def token(self, player: str, ttl: float = 3600.0) -> str: ...


@dataclass(frozen=True, slots=True)
class Baseline:
    pid: int
    fds: int
    rss: int
    tasks: int | None  # None for a server in another process
    blocks: int | None = None  # live Python allocations, in-process only


@dataclass
class LeakReport:
    """What a server held after settling, relative to its baseline."""

    fds: int = 0
    rss_mb: float = 0.0
    tasks: int | None = None
    blocks: int | None = None
    server_sockets: list[str] = field(default_factory=list)
    registry: dict[str, int] = field(default_factory=dict)
    queued_frames: int = 0
    problems: list[str] = field(default_factory=list)
    settle_s: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        tasks = "" if self.tasks is None else f", tasks {self.tasks:+d}"
        blocks = "" if self.blocks is None else f", objects {self.blocks:+,d} blocks"
        numbers = f"fds {self.fds:+d}{tasks}, rss {self.rss_mb:+.1f} MB{blocks}"
        text = "; ".join(self.problems) if self.problems else f"none ({numbers})"
        return text


def fd_count(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def server_connections(pid: int, port: int) -> list[tuple[str, int | None]]:
    """(status, peer port) of the server's accepted TCP sockets on `port`."""
    found: list[tuple[str, int | None]] = []
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if not conn.laddr or conn.laddr.port != port or conn.status == psutil.CONN_LISTEN:
            continue
        found.append((conn.status, conn.raddr.port if conn.raddr else None))
    return found


def connection_open(pid: int, port: int, peer_port: int) -> bool:
    """Whether the server still holds the socket accepted from `peer_port`."""
    return any(peer == peer_port for _, peer in server_connections(pid, port))


async def in_process_baseline(server: RunningServer, timeout: float = 10.0) -> Baseline:
    """The baseline of this process once the server holds no connection (after a warm-up)."""
    pid = os.getpid()
    deadline = time.monotonic() + timeout
    idle = await wait_for(
        lambda: not server.node.sockets and not server_connections(pid, server.port), deadline
    )
    assert idle, "the server still holds connections before the scenario"
    # A closed connection's Hypercorn tasks end a few loop turns after its socket.
    count = -1
    while count != len(asyncio.all_tasks()) and time.monotonic() < deadline:
        count = len(asyncio.all_tasks())
        await asyncio.sleep(POLL_S)
    gc.collect()
    blocks = sys.getallocatedblocks()
    return Baseline(pid, fd_count(pid), rss_bytes(pid), len(asyncio.all_tasks()), blocks)


async def process_baseline(server: ServerProcess, timeout: float = 10.0) -> Baseline:
    """The baseline of a server process once it holds no connection (after a warm-up)."""
    pid = server.proc.pid
    idle = await wait_for(
        lambda: not server_connections(pid, server.port), time.monotonic() + timeout
    )
    assert idle, "the server still holds connections before the scenario"
    return Baseline(pid, fd_count(pid), rss_bytes(pid), None)


async def warm_up(target: Target, player: str = "warm-up") -> None:
    """One full conversation, so lazily created state exists before the baseline."""
    async with connect(target.url) as client:
        await client.hello(target.token(player))
        await client.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
        await client.expect("turn.end", timeout=30)
    await fetch_health(target)


async def fetch_health(target: Target) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(target.http_url + "/healthz", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    return await asyncio.to_thread(get)


async def wait_for(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll `condition` until it holds (True) or the monotonic `deadline` passes (False)."""
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def wait_for_async(condition: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS shows what is still in use.

    After heavy traffic the allocator keeps freed memory mapped: RSS would then
    measure past traffic rather than what is held now.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def refs(sessions: Iterable[Session]) -> list[weakref.ref[Session]]:
    """Weak references to sessions, for `settle_in_process`."""
    return [weakref.ref(session) for session in sessions]


def _memory(
    report: LeakReport, baseline: Baseline, rss_tolerance_mb: float, blocks_tolerance: int
) -> None:
    if baseline.blocks is not None:
        gc.collect()  # cycles the scenario left behind are not the server's memory
        report.blocks = sys.getallocatedblocks() - baseline.blocks
        if report.blocks > blocks_tolerance:
            report.problems.append(
                f"{report.blocks:,} more live Python objects (> {blocks_tolerance:,})"
            )
        release_free_heap()
    report.rss_mb = (rss_bytes(baseline.pid) - baseline.rss) / MB
    if report.rss_mb > rss_tolerance_mb:
        report.problems.append(f"RSS +{report.rss_mb:.1f} MB (> {rss_tolerance_mb:g} MB)")


async def _descriptors(
    report: LeakReport, baseline: Baseline, fd_tolerance: int, deadline: float
) -> None:
    limit = baseline.fds + fd_tolerance
    await wait_for(lambda: fd_count(baseline.pid) <= limit, deadline)
    report.fds = fd_count(baseline.pid) - baseline.fds
    if report.fds > fd_tolerance:
        report.problems.append(f"{report.fds} more open fds (> {fd_tolerance})")


async def settle_in_process(
    server: RunningServer,
    baseline: Baseline,
    *,
    rss_tolerance_mb: float,
    players: Iterable[str] = (),
    sessions: Iterable[weakref.ref[Session]] = (),
    fd_tolerance: int = FD_TOLERANCE,
    blocks_tolerance: int = BLOCKS_TOLERANCE,
    timeout: float = SETTLE_TIMEOUT,
) -> LeakReport:
    """Wait for an in-process server to release everything; report what is left."""
    started = time.monotonic()
    deadline = started + timeout
    node = server.node
    report = LeakReport()
    pid, port = baseline.pid, server.port

    def open_sockets() -> list[tuple[str, int | None]]:
        return server_connections(pid, port)

    await wait_for(lambda: not node.sockets, deadline)
    await wait_for(lambda: not open_sockets(), deadline)
    report.server_sockets = [f"{status} from :{peer}" for status, peer in open_sockets()]
    if node.sockets:
        report.problems.append(f"{len(node.sockets)} socket edges still registered")
    if report.server_sockets:
        report.problems.append("server sockets open: " + ", ".join(report.server_sockets))

    await wait_for(lambda: node.limiter.active == 0 and not node.turns.turn_count, deadline)
    await wait_for(
        lambda: all(
            s.state is not SessionState.ATTACHED and s.expired_at(node.clock())
            for s in node.hub.all_sessions()
        ),
        deadline,
    )
    node.expire_sessions()
    stats = node.statistics()
    report.registry = {name: int(value) for name, value in asdict(stats).items() if value}
    if node.contexts:
        report.registry["contexts"] = len(node.contexts)
    if node.turns.action_count:
        report.registry["actions"] = node.turns.action_count
    broker = node.broker.statistics()
    if broker.subscriptions:
        report.registry["broker_subscriptions"] = broker.subscriptions
    member_of = sum(len(node.hub.rooms_of(player)) for player in players)
    if member_of:
        report.registry["room_memberships_of_players"] = member_of
    if report.registry:
        report.problems.append(f"registry not empty: {report.registry}")

    held = [session for ref in sessions if (session := ref()) is not None]
    report.queued_frames = sum(len(s.queue) for s in held)
    alive = sum(s.state is not SessionState.EXPIRED for s in held)
    del held
    if report.queued_frames:
        report.problems.append(f"{report.queued_frames} frames still queued")
    if alive:
        report.problems.append(f"{alive} sessions not expired")

    assert baseline.tasks is not None
    allowed_tasks = baseline.tasks
    await wait_for(lambda: len(asyncio.all_tasks()) <= allowed_tasks, deadline)
    report.tasks = len(asyncio.all_tasks()) - baseline.tasks
    if len(asyncio.all_tasks()) > allowed_tasks:
        names = sorted(t.get_name() for t in asyncio.all_tasks())
        report.problems.append(f"{report.tasks:+d} asyncio tasks: {names}")

    await _descriptors(report, baseline, fd_tolerance, deadline)
    _memory(report, baseline, rss_tolerance_mb, blocks_tolerance)
    report.settle_s = time.monotonic() - started
    return report


async def settle_process(
    server: ServerProcess,
    baseline: Baseline,
    *,
    rss_tolerance_mb: float,
    fd_tolerance: int = FD_TOLERANCE,
    timeout: float = SETTLE_TIMEOUT,
) -> LeakReport:
    """Wait for a server process to release everything; report what is left.

    Sessions of dropped clients end when the server's sweeper next runs after
    their resume window, so `timeout` must cover the sweep interval.
    """
    started = time.monotonic()
    deadline = started + timeout
    report = LeakReport()
    pid, port = baseline.pid, server.port
    await wait_for(lambda: not server_connections(pid, port), deadline)
    report.server_sockets = [f"{s} from :{p}" for s, p in server_connections(pid, port)]
    if report.server_sockets:
        report.problems.append("server sockets open: " + ", ".join(report.server_sockets))

    health: dict[str, Any] = {}

    async def empty() -> bool:
        health.update(await fetch_health(server))
        return not any(health.get(name) for name in HEALTH_COUNTS)

    await wait_for_async(empty, deadline)
    report.registry = {name: int(health[name]) for name in HEALTH_COUNTS if health.get(name)}
    if report.registry:
        report.problems.append(f"registry not empty: {report.registry}")
    await _descriptors(report, baseline, fd_tolerance, deadline)
    _memory(report, baseline, rss_tolerance_mb, 0)
    report.settle_s = time.monotonic() - started
    return report
