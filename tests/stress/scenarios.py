"""Stress and fault scenarios against a real server, shared by tests/stress and the soak.

Each scenario starts its own server (in this process, for the internal leak
checks, or as a separate `python -m npc_server` process where the scenario
needs one), asserts its exact expected outcome, closes or drops every
client, settles (tests/stress/leaks.py) and returns a `ScenarioReport`. A
failed expectation raises `AssertionError`; leaks are reported, and the
caller asserts `report.leaks.clean`. `Scale` sets the sizes: `QUICK` for the
test run, bigger ones for `python -m benchmarks.soak`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import websockets

from npc_server.node import Node
from npc_server.npcs import NpcConfig, load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.session import Session, SessionState
from npc_server.transports.websocket import WebSocketEdge
from tests.stress.backends import (
    ChattyBackend,
    CrashingBackend,
    EndlessBackend,
    GatedBackend,
    HangingBackend,
    RaisingBackend,
)
from tests.stress.fuzz import FuzzStats, exact_size_ping, pack, run_fuzz
from tests.stress.leaks import (
    BLOCKS_TOLERANCE,
    LeakReport,
    connection_open,
    fetch_health,
    in_process_baseline,
    process_baseline,
    refs,
    rss_bytes,
    settle_in_process,
    settle_process,
    wait_for,
    warm_up,
)
from tests.stress.peers import (
    NPCS,
    SAYS,
    Member,
    SilentSocket,
    answers,
    close_received,
    drive,
    ends,
    joined_member,
    joined_text,
    local_port,
    open_client,
)
from tests.support.client import Frame, RawClient
from tests.support.server import (
    DEMO_CONFIG,
    DEMO_NPCS,
    RunningServer,
    ServerProcess,
    running_server,
    server_config,
    start_server_process,
)

MB = 1024 * 1024
# Connect-rate limits out of the way, for scenarios that are not about them.
OPEN_DOORS: dict[str, Any] = {
    "connects_per_s_address": 1e6,
    "connects_burst_address": 10**6,
    "connects_per_s_player": 1e6,
    "connects_burst_player": 10**6,
}


@dataclass(frozen=True)
class Scale:
    """Sizes and durations of the scenarios."""

    room_members: int = 8  # stalled reader: healthy players in the busy room
    flood_s: float = 2.0  # sustained flood: seconds of flooding
    flood_frame_bytes: int = 8192  # sustained flood: message size
    flood_rate: float = 1000.0  # sustained flood: messages per second
    silent_peers: int = 2  # silent peers: clients of each kind
    fuzz_examples: int = 100  # malformed protocol: Hypothesis examples (1-4 probes each)
    storm_clients: int = 300  # connect storm: clients connecting, dropping, resuming at once
    fault_players: int = 4  # backend faults: turns holding the generation cap
    crash_clients: int = 20  # crash: clients talking when the server is killed


QUICK = Scale()


@dataclass
class ScenarioReport:
    name: str
    outcome: str
    close_codes: Counter[str]
    leaks: LeakReport
    seconds: float = 0.0
    measures: dict[str, float] = field(default_factory=dict)

    def codes(self) -> str:
        return ", ".join(f"{code} x{n}" for code, n in sorted(self.close_codes.items())) or "-"


def edge_of(node: Node, session: Session) -> WebSocketEdge:
    """The socket edge serving `session`."""
    for edge in node.sockets:
        if isinstance(edge, WebSocketEdge) and edge.session is session:
            return edge
    raise AssertionError(f"no socket serves session {session.id}")


def only_session(node: Node, player: str) -> Session:
    sessions = node.hub.sessions_of(player)
    assert len(sessions) == 1, f"{player}: {len(sessions)} sessions"
    return sessions[0]


def sessions_of(node: Node, players: list[str]) -> list[Session]:
    return [s for player in players for s in node.hub.sessions_of(player)]


class ErrorLog(logging.Handler):
    """Collects ERROR records of the server, Hypercorn and asyncio while installed."""

    PREFIXES = ("npc_server", "hypercorn", "asyncio", "quart")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.PREFIXES):
            self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records]


@contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


RSS_SAMPLES_MAX = 100_000  # half an hour of samples: the watch ends with its scenario


class RssWatch:
    """Samples the RSS of a process in the background; `peak_mb` above the start."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.start = rss_bytes(pid)
        self.peak = self.start
        self.interval = interval
        self._task = asyncio.create_task(self._sample(), name="rss-watch")

    async def _sample(self) -> None:
        for _ in range(RSS_SAMPLES_MAX):
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(self.interval)

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss_bytes(self.pid))
        return (self.peak - self.start) / MB


# --- stalled reader in a busy room -------------------------------------------------

ROOM = "hall"
STALL_RCVBUF = 4096
STALL_WRITE_TIMEOUT = 1.0
STALL_USER_TIMEOUT_MS = 3000
RELEASE_BUDGET_S = 5.0  # the server frees the socket within write_timeout + this
STALL_FILL_S = 10.0  # bound on filling the buffers before the writer blocks


class QueueWatch:
    """Samples a session's queue while its socket is attached; notes when writes stopped."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.peak_depth = 0
        self.peak_bytes = 0
        self.popped = session.queue.statistics().popped
        self.last_write = time.monotonic()

    def sample(self) -> None:
        stats = self.session.queue.statistics()
        if self.session.state is SessionState.ATTACHED:
            self.peak_depth = max(self.peak_depth, stats.depth)
            self.peak_bytes = max(self.peak_bytes, stats.bytes)
        if stats.popped != self.popped:
            self.popped = stats.popped
            self.last_write = time.monotonic()

    async def until_closed(self, edge: WebSocketEdge, deadline: float) -> None:
        """Sample until the socket is asked to close (or the deadline passes)."""

        def closed() -> bool:
            self.sample()
            return edge.close_code is not None

        await wait_for(closed, deadline)


def bard_npcs() -> dict[str, NpcConfig]:
    """The demo NPCs plus three bards (no actions) who sing at length in rooms."""
    npcs = load_npcs(DEMO_NPCS)
    bards = {name: replace(npcs["guard"], id=name, actions=()) for name in BARDS}
    return {**npcs, **bards}


BARDS = ("bard1", "bard2", "bard3")


async def stalled_reader(scale: Scale = QUICK) -> ScenarioReport:
    """A player stops reading in a busy room: 4000, queue bounded, socket freed, others fine.

    The room's NPCs stream ~50 KB/s each in big pieces, so the stalled socket's
    buffers fill within a second whatever the machine's speed: the write
    timeout then fires well before the kernel's TCP_USER_TIMEOUT would.
    """
    started = time.monotonic()
    config = server_config(
        limits={"write_timeout": STALL_WRITE_TIMEOUT, "resume_window": 0.2, **OPEN_DOORS}
        | {"room_members": scale.room_members + 8},
        server={"send_buffer_bytes": 4096, "tcp_user_timeout_ms": STALL_USER_TIMEOUT_MS},
    )
    backends = {name: ChattyBackend() for name in BARDS}
    limits = config.limits
    async with running_server(config, npcs=bard_npcs(), backends=backends) as server:
        node = server.node
        await warm_up(server)
        baseline = await in_process_baseline(server)
        stalled = await open_client(server.url, rcvbuf=STALL_RCVBUF)
        await stalled.hello(server.token("stalled"))
        await stalled.send({"t": "join", "id": "join", "room": ROOM})
        await stalled.recv_until(lambda f: f.get("id") == "join")
        session = only_session(node, "stalled")
        edge = edge_of(node, session)
        names = [f"member{i}" for i in range(scale.room_members)]
        members = [await joined_member(server.url, server.token(n), n, ROOM) for n in names]
        peer = local_port(stalled)
        stop = asyncio.Event()
        stalled.ws.transport.pause_reading()
        paused_at = time.monotonic()
        drivers = [
            asyncio.create_task(drive(member, npc, stop, max_turns=1000, room=ROOM))
            for member, npc in zip(members, BARDS, strict=False)
        ]
        watch = QueueWatch(session)
        await watch.until_closed(edge, paused_at + STALL_FILL_S + limits.write_timeout)
        closed_at = time.monotonic()
        assert edge.close_code is CloseCode.SLOW_CONSUMER, (edge.close_code, edge.close_reason)
        pid = os.getpid()
        released = await wait_for(
            lambda: not connection_open(pid, server.port, peer),
            closed_at + limits.write_timeout + RELEASE_BUDGET_S + 10,
        )
        released_at = time.monotonic()
        assert released, "the server never released the stalled socket"
        release_s = released_at - watch.last_write
        assert release_s <= limits.write_timeout + RELEASE_BUDGET_S, (
            f"socket released {release_s:.1f} s after the last write"
        )
        # Resumable: detached, not ended; its queue stayed within its bounds.
        assert session.detached_at is not None, "the session was ended, not detached"
        assert watch.peak_depth <= limits.queue_frames + 1, watch.peak_depth
        assert watch.peak_bytes <= limits.queue_bytes + 4096, watch.peak_bytes
        whole = session.queue.statistics()
        detached_limits = session.limits
        assert whole.peak_depth <= detached_limits.detached_factor * limits.queue_frames + 1
        assert whole.peak_bytes <= max(detached_limits.hold_bytes, limits.queue_bytes) + 4096
        # The others never waited for the stalled socket.
        gap = max(m.max_gap(paused_at, released_at) for m in members)
        stop.set()
        turns = await asyncio.wait_for(asyncio.gather(*drivers), 60)
        assert min(turns) >= 1, turns
        problems = [p for m in members for p in m.turn_problems()]
        assert not problems, problems[:5]
        assert all(m.close_code is None for m in members)
        assert gap < limits.write_timeout, f"a healthy member waited {gap:.2f} s for a frame"
        held = refs([session, *sessions_of(node, names)])
        stalled.ws.transport.abort()
        for member in members:
            await member.close()
        codes = Counter({"4000 (server, unread)": 1})
        codes.update(str(m.close_code) for m in members)
        peak = (watch.peak_depth, watch.peak_bytes)
        # What the test itself holds is not the server's memory.
        del members, drivers, session, edge, watch
        # In-process RSS keeps some of what the traffic used (clients share the process).
        leaks = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=16 + 2.5 * scale.room_members,
            players=["stalled", *names],
            sessions=held,
        )
    outcome = (
        f"closed 4000 {closed_at - paused_at:.1f} s after pausing; socket freed "
        f"{release_s:.1f} s after the last write (<= {limits.write_timeout + 5:g}); "
        f"queue peak {peak[0]} frames/{peak[1]} B; "
        f"{sum(turns)} room turns done, max gap {gap * 1000:.0f} ms"
    )
    return ScenarioReport(
        "stalled reader",
        outcome,
        codes,
        leaks,
        time.monotonic() - started,
        {"close_s": closed_at - paused_at, "release_s": release_s, "max_gap_s": gap},
    )


# --- inbound floods -------------------------------------------------------------------

FLOOD_LIMITS: dict[str, Any] = {"resume_window": 0.2, **OPEN_DOORS}
FLOOD_SCRIPTED = {"tokens_per_second": 200, "long_reply_chars": 400}
FAST_FLOOD_MAX_FRAMES = 500_000
FAST_FLOOD_MAX_S = 20.0
FLOOD_RSS_TOLERANCE_MB = 32.0
# A flooder's own sends block once the server stops reading: give up on the close soon.
FLOODER_CLOSE_TIMEOUT = 1.0


@dataclass
class Flood:
    """A flood in progress: messages sent so far."""

    sent: int = 0
    seconds: float = 0.0


async def flood(
    member: Member,
    data: bytes,
    *,
    rate: float | None,
    duration: float,
    max_frames: int,
    progress: Flood | None = None,
) -> int:
    """Send `data` as fast as possible (or at `rate`/s) until closed or done; messages sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    state = progress if progress is not None else Flood()
    try:
        while state.sent < max_frames and not member.closed.is_set():
            if loop.time() - start > duration:
                break
            await member.client.ws.send(data)
            state.sent += 1
            if rate is None:
                if state.sent % 64 == 0:
                    await asyncio.sleep(0)  # let the in-process server read
            elif state.sent % 16 == 0:
                await asyncio.sleep(max(0.0, start + state.sent / rate - loop.time()))
    except websockets.ConnectionClosed:
        pass
    finally:
        state.seconds = loop.time() - start
    return state.sent


async def flood_until_closed(member: Member, edge: WebSocketEdge, data: bytes) -> Flood:
    """Flood as fast as possible until the server closes the socket (its edge finishes).

    The flooder's own sends may block for good once the server stops reading, so
    the flood is cancelled when the edge is done rather than awaited.
    """
    progress = Flood()
    sending = asyncio.create_task(
        flood(
            member,
            data,
            rate=None,
            duration=FAST_FLOOD_MAX_S,
            max_frames=FAST_FLOOD_MAX_FRAMES,
            progress=progress,
        )
    )
    finished = asyncio.create_task(edge.finished.wait())
    await asyncio.wait(
        [sending, finished], timeout=FAST_FLOOD_MAX_S + 5, return_when=asyncio.FIRST_COMPLETED
    )
    await asyncio.wait([finished], timeout=10)
    sending.cancel()
    finished.cancel()
    await asyncio.gather(sending, finished, return_exceptions=True)
    return progress


def errors_of(member: Member) -> list[Frame]:
    return [f for _, f in member.frames if f.get("t") == "error"]


async def _talkers(server: RunningServer, count: int = 3) -> tuple[list[Member], list[str]]:
    names = [f"talker{i}" for i in range(count)]
    return [await joined_member(server.url, server.token(n), n) for n in names], names


async def inbound_flood(scale: Scale = QUICK) -> ScenarioReport:
    """A client floods as fast as it can: rate_limited, then 4029; others' turns complete."""
    started = time.monotonic()
    config = server_config(
        limits=FLOOD_LIMITS, server={"graceful_timeout": 1.0}, scripted=FLOOD_SCRIPTED
    )
    limits = config.limits
    async with running_server(config) as server:
        await warm_up(server)
        baseline = await in_process_baseline(server)
        talkers, names = await _talkers(server)
        stop = asyncio.Event()
        drivers = [
            asyncio.create_task(drive(t, npc, stop, max_turns=3))
            for t, npc in zip(talkers, NPCS, strict=True)
        ]
        flooder = await joined_member(
            server.url, server.token("flooder"), "flooder", close_timeout=FLOODER_CLOSE_TIMEOUT
        )
        session = only_session(server.node, "flooder")
        edge = edge_of(server.node, session)
        rss = RssWatch(os.getpid())
        flood_start = time.monotonic()
        progress = await flood_until_closed(flooder, edge, pack({"t": "ping", "id": 1}))
        sent, flood_s = progress.sent, progress.seconds
        rss_mb = await rss.stop()
        assert edge.close_code is CloseCode.RATE_LIMITED, (edge.close_code, edge.close_reason)
        received = partial(close_received, flooder.client)
        got_close = await wait_for(lambda: received() is not None, time.monotonic() + 5)
        assert got_close and received() == CloseCode.RATE_LIMITED
        flooder.client.ws.transport.abort()  # a flooder need not finish the close handshake
        await asyncio.wait_for(flooder.closed.wait(), 10)
        errors = errors_of(flooder)
        assert errors and {e["code"] for e in errors} == {"rate_limited"}, errors[:3]
        assert all(e["retry_after"] > 0 for e in errors), errors[:3]
        pongs = sum(f.get("t") == "pong" for _, f in flooder.frames)
        window = time.monotonic() - flood_start  # the server read the flood within this
        assert pongs <= limits.rate_burst + limits.rate_per_s * window + 1, pongs
        assert len(errors) <= window + 1, f"{len(errors)} rate_limited errors in {window:.1f} s"
        assert rss_mb <= FLOOD_RSS_TOLERANCE_MB, f"RSS +{rss_mb:.1f} MB during the flood"
        turns = await asyncio.wait_for(asyncio.gather(*drivers), 60)
        assert turns == [3, 3, 3], turns
        problems = [p for t in talkers for p in t.turn_problems()]
        assert not problems, problems[:5]
        held = refs([session, *sessions_of(server.node, names)])
        for talker in talkers:
            await talker.close()
        codes = Counter([str(close_received(flooder.client))])
        codes.update(str(t.close_code) for t in talkers)
        del talkers, drivers, flooder, session, edge  # the test's own memory
        leaks = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=FLOOD_RSS_TOLERANCE_MB,
            players=["flooder", *names],
            sessions=held,
        )
    rate = sent / flood_s
    outcome = (
        f"{sent} messages in {flood_s:.2f} s ({rate:,.0f}/s): {pongs} pongs, "
        f"{len(errors)} rate_limited, then 4029; RSS peak +{rss_mb:.1f} MB; 9/9 other turns done"
    )
    return ScenarioReport(
        "inbound flood (fast)",
        outcome,
        codes,
        leaks,
        time.monotonic() - started,
        {"flood_msgs_per_s": rate, "rss_peak_mb": rss_mb},
    )


async def sustained_flood(scale: Scale = QUICK) -> ScenarioReport:
    """Big messages flooded for a while: server RSS stays flat, others' turns complete.

    The heartbeat is set longer than the flood, so that only the flood itself
    decides how the flooder's socket ends.
    """
    started = time.monotonic()
    config = server_config(
        limits={**FLOOD_LIMITS, "heartbeat": scale.flood_s + 30},
        server={"graceful_timeout": 1.0},
        scripted=FLOOD_SCRIPTED,
    )
    limits = config.limits
    async with running_server(config) as server:
        await warm_up(server)
        baseline = await in_process_baseline(server)
        talkers, names = await _talkers(server)
        stop = asyncio.Event()
        drivers = [
            asyncio.create_task(drive(t, npc, stop, max_turns=1000))
            for t, npc in zip(talkers, NPCS, strict=True)
        ]
        flooder = await joined_member(
            server.url, server.token("flooder"), "flooder", close_timeout=FLOODER_CLOSE_TIMEOUT
        )
        session = only_session(server.node, "flooder")
        pad = "f" * (scale.flood_frame_bytes - 32)
        rss = RssWatch(os.getpid())
        flood_start = time.monotonic()
        sent = await flood(
            flooder,
            pack({"t": "ping", "id": 1, "pad": pad}),
            rate=scale.flood_rate,
            duration=scale.flood_s,
            max_frames=int(scale.flood_rate * scale.flood_s) + 1,
        )
        flood_s = time.monotonic() - flood_start
        rss_mb = await rss.stop()
        volume_mb = sent * scale.flood_frame_bytes / MB
        stop.set()
        turns = await asyncio.wait_for(asyncio.gather(*drivers), 60)
        errors = errors_of(flooder)
        pongs = sum(f.get("t") == "pong" for _, f in flooder.frames)
        window = time.monotonic() - flood_start  # the server read the flood within this
        assert {e["code"] for e in errors} <= {"rate_limited"}, errors[:3]
        assert len(errors) <= window + 1, f"{len(errors)} rate_limited errors in {window:.1f} s"
        assert pongs <= limits.rate_burst + limits.rate_per_s * window + 1, pongs
        assert rss_mb <= FLOOD_RSS_TOLERANCE_MB, f"RSS +{rss_mb:.1f} MB for {volume_mb:.0f} MB"
        assert min(turns) >= 1, turns
        problems = [p for t in talkers for p in t.turn_problems()]
        assert not problems, problems[:5]
        if not flooder.closed.is_set():
            await flooder.close()
        held = refs([session, *sessions_of(server.node, names)])
        for talker in talkers:
            await talker.close()
        flooder_code = flooder.close_code
        codes = Counter([str(flooder_code), *(str(t.close_code) for t in talkers)])
        del talkers, drivers, flooder, session  # the test's own memory
        leaks = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=FLOOD_RSS_TOLERANCE_MB,
            players=["flooder", *names],
            sessions=held,
        )
    outcome = (
        f"{volume_mb:.0f} MB in {sent} messages over {flood_s:.1f} s "
        f"({volume_mb / flood_s:.0f} MB/s): RSS peak +{rss_mb:.1f} MB; {pongs} pongs, "
        f"{len(errors)} rate_limited; {sum(turns)} other turns done; "
        f"flooder {'closed ' + str(flooder_code) if flooder_code != 1000 else 'open'}"
    )
    return ScenarioReport(
        "inbound flood (sustained)",
        outcome,
        codes,
        leaks,
        time.monotonic() - started,
        {"flood_mb_per_s": volume_mb / flood_s, "rss_peak_mb": rss_mb},
    )


# --- silent peers ---------------------------------------------------------------------

SILENT_HEARTBEAT = 0.5
HEARTBEAT_SLACK_S = 0.5


async def _mute(client: RawClient, heartbeat: float) -> tuple[float, int | None]:
    """Read without ever answering ping; (seconds from the first ping to the close, code)."""
    loop = asyncio.get_running_loop()
    pinged: float | None = None
    try:
        async with asyncio.timeout(4 * heartbeat + 5):
            while True:
                frame = await client.recv(timeout=4 * heartbeat + 5)
                if frame.get("t") == "ping" and pinged is None:
                    assert "seq" not in frame, frame
                    pinged = loop.time()
    except websockets.ConnectionClosed:
        pass
    assert pinged is not None, "no ping before the close"
    return loop.time() - pinged, client.ws.close_code


async def silent_peers(scale: Scale = QUICK) -> ScenarioReport:
    """Peers that stop answering, half-open sockets and resets are closed and cleaned up."""
    started = time.monotonic()
    heartbeat = SILENT_HEARTBEAT
    config = server_config(
        limits={"heartbeat": heartbeat, "resume_window": 1.0, **OPEN_DOORS},
        scripted={"tokens_per_second": 100, "long_reply_chars": 300},
    )
    async with running_server(config) as server:
        node = server.node
        pid = os.getpid()
        await warm_up(server)
        baseline = await in_process_baseline(server)
        n = scale.silent_peers
        mutes = [await open_client(server.url) for _ in range(n)]
        for i, client in enumerate(mutes):
            await client.hello(server.token(f"mute{i}"))
        halves = [await SilentSocket.open(server.url, server.token(f"half{i}")) for i in range(n)]
        resets = [await open_client(server.url) for _ in range(n)]
        for i, client in enumerate(resets):
            await client.hello(server.token(f"reset{i}"))
            await client.send({"t": "say", "id": 1, "npc": "guard", "text": SAYS["guard"]})
            await client.recv_until(lambda f: f.get("t") == "delta")
        players = [f"{kind}{i}" for kind in ("mute", "half", "reset") for i in range(n)]
        await wait_for(lambda: node.statistics().attached == len(players), time.monotonic() + 10)
        sessions = {player: only_session(node, player) for player in players}
        half_edges = [edge_of(node, sessions[f"half{i}"]) for i in range(n)]
        opened = time.monotonic()

        reset_ports = [local_port(c) for c in resets]
        for client in resets:
            client.ws.transport.abort()
        reset_sessions = [sessions[f"reset{i}"] for i in range(n)]
        detached = await wait_for(
            lambda: all(s.state is not SessionState.ATTACHED for s in reset_sessions),
            time.monotonic() + 1.0,
        )
        assert detached, "a reset connection's session was not detached within 1 s"
        reset_freed = await wait_for(
            lambda: not any(connection_open(pid, server.port, p) for p in reset_ports),
            time.monotonic() + 1.0,
        )
        assert reset_freed, "a reset connection's socket was not freed within 1 s"

        mute_results = await asyncio.gather(*(_mute(c, heartbeat) for c in mutes))
        for waited, code in mute_results:
            assert code == CloseCode.HEARTBEAT_TIMEOUT, code
            assert waited <= heartbeat + HEARTBEAT_SLACK_S, f"closed {waited:.2f} s after ping"

        half_deadline = opened + 2 * heartbeat + 2.0
        half_freed = await wait_for(
            lambda: not any(connection_open(pid, server.port, h.port) for h in halves),
            half_deadline,
        )
        half_s = time.monotonic() - opened
        assert half_freed, f"half-open sockets still held {half_s:.1f} s after hello"
        assert all(e.close_code is CloseCode.HEARTBEAT_TIMEOUT for e in half_edges), [
            e.close_code for e in half_edges
        ]
        # Every one of them stays resumable until its window ends.
        for player, session in sessions.items():
            assert session.detached_at is not None, f"{player}: session ended, not detached"
        for half in halves:
            half.close()
        codes = Counter(str(code) for _, code in mute_results)
        codes.update({"4001 (server, half-open)": n, "1006 (reset)": n})
        leaks = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=16,
            players=players,
            sessions=refs(sessions.values()),
        )
    worst_mute = max(w for w, _ in mute_results)
    outcome = (
        f"{n} mute: 4001 <= {worst_mute:.2f} s after the unanswered ping "
        f"(heartbeat {heartbeat:g} s); {n} half-open: 4001 and freed in {half_s:.2f} s; "
        f"{n} reset: detached at once; all sessions detached, then expired"
    )
    return ScenarioReport(
        "silent peers", outcome, codes, leaks, time.monotonic() - started, {"half_s": half_s}
    )


# --- malformed protocol -----------------------------------------------------------------

FUZZ_PLAYER = "fuzzer"
FUZZ_BLOCKS_TOLERANCE = 400_000


async def _first_frame_not_hello(server: RunningServer, data: bytes | str) -> int | None:
    client = await open_client(server.url)
    await client.send_raw(data)
    return await client.close_code()


async def malformed_protocol(scale: Scale = QUICK, *, derandomize: bool = False) -> ScenarioReport:
    """Fuzzed frames get the spec's errors and closes; nothing crashes or leaks."""
    started = time.monotonic()
    config = server_config(
        limits={
            "rate_per_s": 1e6,
            "rate_burst": 10**6,
            "heartbeat": 600.0,
            "resume_window": 0.2,
            **OPEN_DOORS,
        }
    )
    limits = config.limits.protocol_limits()
    codes: Counter[str] = Counter()
    with error_log() as errors:
        async with running_server(config) as server:
            await warm_up(server)
            baseline = await in_process_baseline(server)
            stats: FuzzStats = await asyncio.to_thread(
                run_fuzz,
                server.url,
                lambda: server.token(FUZZ_PLAYER),
                limits,
                scale.fuzz_examples,
                derandomize=derandomize,
            )
            codes.update(str(code) for code, n in stats.closes.items() for _ in range(n))
            # Frames before hello: anything but hello closes 4500.
            firsts: list[bytes | str] = [
                pack({"t": "say", "id": 1, "npc": "guard", "text": "hi"}),
                pack({"t": "ping", "id": 1}),
                b"\xc1",
                "hello as text",
                pack(["hello"]),
            ]
            for data in firsts:
                code = await _first_frame_not_hello(server, data)
                assert code == CloseCode.AUTH_FAILED, (data, code)
                codes[str(code)] += 1
            # The largest message allowed passes; one byte more closes 1009.
            client = await open_client(server.url)
            await client.hello(server.token(FUZZ_PLAYER))
            edge = exact_size_ping(limits.frame_bytes)
            await client.send_raw(edge)
            assert (await client.recv())["t"] == "pong"
            await client.send({"t": "hello", "id": 7, "token": server.token(FUZZ_PLAYER)})
            again = await client.recv()
            assert (again["t"], again["code"], again["id"]) == ("error", "bad_frame", 7)
            await client.send_raw(edge + b"\xc0")
            code = await client.close_code()
            assert code == CloseCode.MESSAGE_TOO_BIG, code
            codes[str(code)] += 1
            # Hypothesis keeps caches of its own in this process: more live objects.
            leaks = await settle_in_process(
                server,
                baseline,
                rss_tolerance_mb=48,
                players=[FUZZ_PLAYER],
                blocks_tolerance=FUZZ_BLOCKS_TOLERANCE,
            )
    crashed = errors.lines()
    if crashed:
        leaks.problems.append(f"server logged errors: {crashed[:3]}")
    answered = sum(stats.answers.values())
    outcome = (
        f"{stats.examples} examples, {stats.probes} probes on {stats.connections} connections: "
        f"{answered} answered as specified, closes {dict(stats.closes)}; "
        f"5 non-hello first frames: 4500; frame_bytes edge exact; no server errors"
    )
    return ScenarioReport(
        "malformed protocol",
        outcome,
        codes,
        leaks,
        time.monotonic() - started,
        {"probes": stats.probes},
    )


# --- connect storm ---------------------------------------------------------------------

STORM_BEFORE = 3
STORM_AFTER = 30


def storm_npcs() -> dict[str, NpcConfig]:
    npcs = load_npcs(DEMO_NPCS)
    return {**npcs, "teller": replace(npcs["guard"], id="teller")}


async def connect_storm(scale: Scale = QUICK) -> ScenarioReport:
    """N clients connect at once, each mid-turn drop at once and resume at once: nothing lost."""
    started = time.monotonic()
    count = scale.storm_clients
    backend = GatedBackend(STORM_BEFORE, STORM_AFTER)
    config = server_config(
        limits={"max_generations": count + 16, "resume_window": 60.0, **OPEN_DOORS},
        server={"backlog": max(2048, count)},
    )
    timeout = 60 + count / 20
    async with running_server(config, npcs=storm_npcs(), backends={"teller": backend}) as server:
        node = server.node
        await warm_up(server)
        baseline = await in_process_baseline(server)

        async def start(i: int) -> tuple[RawClient, str, list[Frame]]:
            client = await open_client(server.url)
            await client.hello(server.token(f"storm{i}"))
            await client.send({"t": "say", "id": 1, "npc": "teller", "text": "a story"})
            frames = await client.recv_until(lambda f: f.get("t") == "delta", timeout)
            ack = next(f for f in frames if f.get("t") == "ack")
            return client, ack["turn"], frames

        t0 = time.monotonic()
        first = await asyncio.gather(*(start(i) for i in range(count)))
        connect_s = time.monotonic() - t0
        assert node.statistics().generations == count
        players = [f"storm{i}" for i in range(count)]
        sessions = refs(sessions_of(node, players))
        for client, _, frames in first:
            assert not any(f.get("t") == "turn.end" for f in frames)
            client.ws.transport.abort()
        await asyncio.wait_for(asyncio.gather(*(c.ws.wait_closed() for c, _, _ in first)), 30)
        dropped = await wait_for(lambda: node.statistics().attached == 0, time.monotonic() + 30)
        assert dropped, "the server did not notice every drop"
        backend.gate.set()  # the turns go on while everyone is away

        async def resume(i: int, old: RawClient, turn: str, before: list[Frame]) -> Frame:
            assert old.session is not None
            client = await open_client(server.url)
            welcome = await client.hello(
                server.token(f"storm{i}"), resume={"session": old.session, "seq": old.last_seq}
            )
            assert welcome["resumed"] is True and welcome["session"] == old.session, welcome
            after = await client.recv_until(ends(turn), timeout)
            end = after[-1]
            text = joined_text(before + after, turn)
            assert end["reason"] == "done" and len(text) == end["chars"], (end, len(text))
            assert text == backend.text, "the resumed turn's text differs"
            await client.ws.close()
            return welcome

        t1 = time.monotonic()
        await asyncio.gather(*(resume(i, *entry) for i, entry in enumerate(first)))
        resume_s = time.monotonic() - t1
        assert backend.running == 0 and backend.started == count
        codes = Counter({"1006 (drop)": count, "1000": count})
        del first  # the test's own clients and frames are not the server's memory
        leaks = await settle_in_process(
            server,
            baseline,
            rss_tolerance_mb=32 + count * 0.08,
            players=players,
            sessions=sessions,
            blocks_tolerance=BLOCKS_TOLERANCE + 40 * count,  # per-player connect buckets
        )
    outcome = (
        f"{count} clients hello'd and mid-turn in {connect_s:.1f} s; all dropped; "
        f"{count}/{count} welcome{{resumed:true}} with the whole turn in {resume_s:.1f} s"
    )
    return ScenarioReport(
        "connect storm",
        outcome,
        codes,
        leaks,
        time.monotonic() - started,
        {"connect_s": connect_s, "resume_s": resume_s},
    )


# --- backend faults ------------------------------------------------------------------------

FAULT_TIMEOUT = 0.5


def fault_npcs() -> dict[str, NpcConfig]:
    npcs = load_npcs(DEMO_NPCS)
    faulty = {name: replace(npcs["guard"], id=name) for name in FAULTY}
    return {**npcs, **faulty}


FAULTY = ("raiser", "crasher", "hanger", "babbler")


async def _fault_turn(member: Member, npc: str, request_id: int = 1) -> tuple[Frame, Frame]:
    """Say to `npc`; (the error for the speaker, the turn.end), checking their order."""
    since = await member.send({"t": "say", "id": request_id, "npc": npc, "text": "go on"})
    ack = await member.wait_for(answers(request_id), since)
    assert ack["t"] == "ack", ack
    end = await member.wait_for(ends(ack["turn"]), since, timeout=10)
    frames = [f for _, f in member.frames[since:]]
    errors = [f for f in frames if f.get("t") == "error" and f.get("code") == "backend_error"]
    assert len(errors) == 1, (npc, errors)
    assert frames.index(errors[0]) < frames.index(end), "the error must precede turn.end"
    assert errors[0]["id"] == request_id, errors[0]
    text = joined_text(frames, ack["turn"])
    assert len(text) == end["chars"], (npc, len(text), end)
    return errors[0], end


async def backend_faults(scale: Scale = QUICK) -> ScenarioReport:
    """Backends that raise, crash, hang or never stop: error/timeout ends, the cap recovers."""
    started = time.monotonic()
    cap = scale.fault_players
    assert cap >= len(FAULTY), "the first phase runs four turns at once under the cap"
    backends = {
        "raiser": RaisingBackend(),
        "crasher": CrashingBackend(),
        "hanger": HangingBackend(),
        "babbler": EndlessBackend(),
    }
    config = server_config(
        limits={
            "turn_timeout": FAULT_TIMEOUT,
            "max_generations": cap,
            "resume_window": 0.2,
            **OPEN_DOORS,
        },
        scripted={"tokens_per_second": 200, "long_reply_chars": 200},
    )
    async with running_server(config, npcs=fault_npcs(), backends=backends) as server:
        node = server.node
        await warm_up(server)
        baseline = await in_process_baseline(server)
        names = ["p-raise", "p-crash", "p-babble", "healthy"]
        names += [f"p-hang{i}" for i in range(cap)] + ["late"]
        members = {n: await joined_member(server.url, server.token(n), n) for n in names}

        # Faults beside a healthy turn, all at once (as many as the cap allows).
        stop = asyncio.Event()
        healthy = asyncio.create_task(drive(members["healthy"], "guard", stop, max_turns=1))
        raised, crashed, babbled = await asyncio.gather(
            _fault_turn(members["p-raise"], "raiser"),
            _fault_turn(members["p-crash"], "crasher"),
            _fault_turn(members["p-babble"], "babbler"),
        )
        assert await asyncio.wait_for(healthy, 30) == 1
        assert raised[0]["message"] == RaisingBackend.MESSAGE and raised[1]["reason"] == "error"
        assert raised[1]["chars"] == len("part0 part1 part2 ")
        assert crashed[1]["reason"] == "error" and crashed[1]["chars"] == len("bit0 bit1 ")
        assert babbled[1]["reason"] == "timeout" and babbled[1]["chars"] > 0
        await wait_for(lambda: node.limiter.active == 0, time.monotonic() + 5)
        assert node.limiter.active == 0

        # Hanging turns hold every generation slot: a new say is refused busy.
        hangs = [
            asyncio.create_task(_fault_turn(members[f"p-hang{i}"], "hanger")) for i in range(cap)
        ]
        full = await wait_for(lambda: node.limiter.active == cap, time.monotonic() + 5)
        assert full, node.limiter.active
        late = members["late"]
        since = await late.send({"t": "say", "id": 1, "npc": "guard", "text": "hello"})
        refused = await late.wait_for(answers(1), since)
        assert (refused["t"], refused["code"]) == ("error", "busy"), refused
        assert refused["retry_after"] > 0
        hung = await asyncio.wait_for(asyncio.gather(*hangs), 30)
        assert all(end["reason"] == "timeout" and end["chars"] == 8 for _, end in hung), hung
        recovered = await wait_for(lambda: node.limiter.active == 0, time.monotonic() + 5)
        assert recovered, f"{node.limiter.active} generation slots still taken"
        assert await drive(late, "guard", stop, max_turns=1) == 1
        for backend in backends.values():
            assert backend.running == 0, f"{type(backend).__name__}: generator still running"
        assert backends["hanger"].cancelled == cap and backends["babbler"].cancelled == 1
        problems = [p for m in (members["healthy"], late) for p in m.turn_problems()]
        assert not problems, problems
        held = refs(sessions_of(node, names))
        for member in members.values():
            await member.close()
        codes = Counter(str(m.close_code) for m in members.values())
        del members, late
        leaks = await settle_in_process(
            server, baseline, rss_tolerance_mb=16, players=names, sessions=held
        )
    closed = {name: backend.closed for name, backend in backends.items()}
    assert all(n == 1 for n in closed.values()), f"aclose() calls at shutdown: {closed}"
    outcome = (
        "raise -> error + backend_error; crash -> error; endless/hang -> timeout after "
        f"{FAULT_TIMEOUT:g} s; cap {cap} full -> busy, back to 0, next turn done; "
        "generators released, backends closed"
    )
    return ScenarioReport("backend faults", outcome, codes, leaks, time.monotonic() - started)


# --- crash and restart ------------------------------------------------------------------------

CRASH_ENV = {
    "NPC_SERVER_LIMITS_RESUME_WINDOW": "0.2",
    "NPC_SERVER_LIMITS_CONNECTS_PER_S_ADDRESS": "1000000",
    "NPC_SERVER_LIMITS_CONNECTS_BURST_ADDRESS": "1000000",
    "NPC_SERVER_LIMITS_MAX_GENERATIONS": "100000",
    "NPC_SERVER_LOG_LEVEL": "WARNING",
}


def write_config(directory: Path, long_reply_chars: int, tokens_per_second: int = 100) -> Path:
    """The shipped config with the demo NPCs and scripted replies paced and padded as given."""
    text = DEMO_CONFIG.read_text()
    text = text.replace('npcs_dir = "npcs"', f'npcs_dir = "{DEMO_NPCS}"')
    scripted = (
        f"[overrides.scripted]\ntokens_per_second = {tokens_per_second}\nfirst_token_ms = 0\n"
        f"long_reply_chars = {long_reply_chars}\n"
    )
    text = text.replace("[overrides.scripted]\n", scripted)
    path = directory / f"server-{long_reply_chars}-{tokens_per_second}.toml"
    path.write_text(text)
    return path


async def _start(config: Path) -> ServerProcess:
    return await asyncio.to_thread(
        start_server_process, env=CRASH_ENV, args=["--config", str(config)]
    )


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def crash_restart(scale: Scale = QUICK) -> ScenarioReport:
    """SIGKILL mid-turn, restart: old resume info gets a clean new session; nothing left over."""
    started = time.monotonic()
    count = scale.crash_clients
    players = [f"crash{i}" for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        # Replies far too long to end before the kill; short ones after the restart.
        first = await _start(write_config(Path(tmp), 4000, tokens_per_second=20))
        try:

            async def talk(player: str) -> tuple[RawClient, str]:
                client = await open_client(first.url)
                await client.hello(first.token(player))
                await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "rumours?"})
                frames = await client.recv_until(lambda f: f.get("t") == "delta")
                return client, next(f for f in frames if f.get("t") == "ack")["turn"]

            talking = await asyncio.gather(*(talk(p) for p in players))
            health = await fetch_health(first)
            assert health["generations"] == count, health
            exit_code = await asyncio.to_thread(first.terminate, signal.SIGKILL)
            assert exit_code == -signal.SIGKILL, exit_code
            lost = await asyncio.gather(*(c.close_code(timeout=10) for c, _ in talking))
            assert all(code == 1006 for code in lost), Counter(lost)
            assert await _refused(first.host, first.port), "the killed server's port still open"
        finally:
            first.kill()
        second = await _start(write_config(Path(tmp), 0))
        try:
            fresh = await fetch_health(second)
            assert all(fresh[k] == 0 for k in ("sockets", "sessions", "turns", "generations"))
            await warm_up(second)
            baseline = await process_baseline(second)

            async def reconnect(index: int) -> int | None:
                old, _ = talking[index]
                assert old.session is not None
                client = await open_client(second.url)
                welcome = await client.hello(
                    second.token(players[index]),
                    resume={"session": old.session, "seq": old.last_seq},
                )
                assert welcome["resumed"] is False, welcome
                assert welcome["session"] != old.session and welcome["seq"] == 0, welcome
                await client.send({"t": "ping", "id": "clean", "ts": 1})
                nothing_else = await client.recv()
                assert (nothing_else["t"], nothing_else.get("id")) == ("pong", "clean")
                await client.send({"t": "say", "id": 2, "npc": "guard", "text": "hello"})
                end = await client.expect("turn.end", timeout=30)
                assert end["reason"] == "done", end
                await client.ws.close()
                return client.ws.close_code

            closed = await asyncio.gather(*(reconnect(i) for i in range(count)))
            # Each connection served leaves some allocator retention behind (~40 KB).
            leaks = await settle_process(second, baseline, rss_tolerance_mb=16 + 0.08 * count)
        finally:
            exit_code = await asyncio.to_thread(second.terminate)
        assert exit_code == 0, exit_code
    codes = Counter([*(f"{code} (killed)" for code in lost), *(str(c) for c in closed)])
    outcome = (
        f"{count} mid-turn clients lost the killed server (1006); restarted clean (healthz 0); "
        f"{count}/{count} resume -> welcome{{resumed:false}}, new session, seq 1, turn done"
    )
    return ScenarioReport("crash and restart", outcome, codes, leaks, time.monotonic() - started)


SCENARIOS: dict[str, Callable[[Scale], Awaitable[ScenarioReport]]] = {
    "stalled": stalled_reader,
    "flood": inbound_flood,
    "sustained-flood": sustained_flood,
    "silent": silent_peers,
    "fuzz": malformed_protocol,
    "storm": connect_storm,
    "faults": backend_faults,
    "crash": crash_restart,
}
