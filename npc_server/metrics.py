"""Prometheus metrics of a node (docs/operations.md lists every name and label).

Two sources, and nothing per token on the hot path:

- counters and histograms per connection and per turn, from `node.events`;
- gauges, queue counters and tool-call failures read from the node's
  statistics by `sample()`, which the scrape runs first (so one process
  answers exactly).

Several worker processes: with `PROMETHEUS_MULTIPROC_DIR` set before
prometheus_client is imported (`prepare_multiprocess()`), every worker writes
its values to files there and any worker's scrape adds them all up; each
worker then also samples its gauges every `[metrics] sample_interval`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from npc_server import __version__
from npc_server.events import (
    AuthFailed,
    BackendFailed,
    Closed,
    Connected,
    DrainStarted,
    Limited,
    NodeEvent,
    SessionAttached,
    TurnEnded,
    TurnStarted,
)
from npc_server.node import Node

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How a gauge adds up over workers: live ones only, summed or the largest.
GaugeMode = Literal["livesum", "livemax", "max"]
# Say -> first delta: model latency, from a local stub to a slow hosted model.
FIRST_DELTA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Interrupt -> turn.end: the server's own work, normally well under 10 ms.
INTERRUPT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Close codes a peer may send are any of 1000-4999: only the standard ones become labels.
PEER_CODES = frozenset(range(1000, 1016))


def multiprocess_mode() -> bool:
    """Whether values go to PROMETHEUS_MULTIPROC_DIR (several workers)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def prepare_multiprocess(directory: Path) -> None:
    """For a parent about to start workers: an empty directory, named in the environment.

    Call before anything imports prometheus_client in the workers (they read
    the variable at import) and before any worker starts.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def worker_exited(pid: int) -> None:
    """For the parent: drop a dead worker's gauges (its counters stay in the totals)."""
    # Any: prometheus-client annotates its multiprocess module in some releases only.
    untyped: Any = multiprocess
    untyped.mark_process_dead(pid)


def close_label(event: Closed) -> tuple[str, str]:
    """(by, code): who closed, and a bounded code label."""
    if event.code is not None:
        return "server", str(event.code)
    if event.peer_code is None:
        return "peer", "none"
    return "peer", str(event.peer_code) if event.peer_code in PEER_CODES else "other"


class NodeMetrics:
    """The metrics of one node, registered on their own registry (one per app)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        if not self.multiprocess:  # these read only the current process
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._make_event_metrics()
        self._make_sampled_metrics()
        self._last: dict[str, int] = {}
        self._info()

    # --- definitions ------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self._target())

    def _gauge(
        self, name: str, doc: str, labels: tuple[str, ...] = (), mode: GaugeMode = "livesum"
    ) -> Gauge:
        return Gauge(name, doc, labels, registry=self._target(), multiprocess_mode=mode)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, ("npc",), buckets=buckets, registry=self._target())

    def _target(self) -> CollectorRegistry | None:
        # In multiprocess mode values live in files; the scrape collects them.
        return None if self.multiprocess else self.registry

    def _make_event_metrics(self) -> None:
        p = "npc_server_"
        self.connections = self._counter(
            p + "connections_total", "Sockets accepted", ("transport",)
        )
        self.auth_failures = self._counter(
            p + "auth_failures_total", "Clients turned away at hello, by close code", ("code",)
        )
        self.attached = self._counter(
            p + "sessions_attached_total",
            "Sessions attached to a socket: new, resumed, or snapshot (a resume that failed)",
            ("outcome",),
        )
        self.closes = self._counter(
            p + "closes_total", "Sockets closed, by who closed and close code", ("by", "code")
        )
        self.limited = self._counter(
            p + "limited_total", "Rate and fair-share limit hits", ("what",)
        )
        self.turns_started = self._counter(p + "turns_started_total", "Turns started", ("npc",))
        self.turns_ended = self._counter(
            p + "turns_ended_total", "Turns ended, by reason", ("npc", "reason")
        )
        self.tokens = self._counter(p + "tokens_total", "Text pieces (tokens) streamed", ("npc",))
        self.chars = self._counter(p + "turn_chars_total", "Characters generated", ("npc",))
        self.kept = self._counter(
            p + "turn_kept_chars_total", "Characters delivered and remembered", ("npc",)
        )
        self.backend_errors = self._counter(
            p + "backend_errors_total", "Turns a backend failed", ("npc", "backend", "reason")
        )
        self.drains = self._counter(p + "drains_total", "Drains started (SIGTERM)")
        self.first_delta = self._histogram(
            p + "first_delta_seconds", "Turn start (say) to its first text", FIRST_DELTA_BUCKETS
        )
        self.interrupt = self._histogram(
            p + "interrupt_seconds", "Interrupt request to turn.end published", INTERRUPT_BUCKETS
        )
        self.duration = self._histogram(
            p + "turn_duration_seconds", "Turn start to turn.end", DURATION_BUCKETS
        )

    def _make_sampled_metrics(self) -> None:
        p = "npc_server_"
        g = self._gauge
        self.sockets = g(p + "sockets", "Open client sockets")
        self.sessions = g(p + "sessions", "Sessions held, by state", ("state",))
        self.players = g(p + "players", "Players with a session")
        self.rooms = g(p + "rooms", "Rooms with members")
        self.memberships = g(p + "room_memberships", "Players in rooms, summed over rooms")
        self.conversations = g(p + "conversations", "Conversations held")
        self.turns_held = g(p + "turns", "Turns queued or generating")
        self.generations = g(p + "generations", "Generation slots in use")
        self.slots = g(p + "generation_slots", "Generation slots ([limits] max_generations)")
        self.open_actions = g(p + "open_actions", "Actions waiting for an answer")
        self.queue_frames = g(p + "outbound_queue_frames", "Frames queued for clients")
        self.queue_bytes = g(p + "outbound_queue_bytes", "Bytes queued for clients (estimate)")
        self.queue_max = g(p + "outbound_queue_frames_max", "Deepest session queue", mode="livemax")
        self.channels = g(p + "broker_channels", "Broker channels with subscribers")
        self.queue_counters = {
            name: self._counter(p + f"outbound_{name}_total", doc)
            for name, doc in (
                ("pushed", "Frames queued for clients"),
                ("merged", "Deltas merged into a queued delta"),
                ("replaced", "Typing notices replaced in the queue"),
                ("dropped", "Queued frames dropped (interrupted turns, ended sessions)"),
            )
        }
        self.published = self._counter(p + "broker_published_total", "Frames published")
        self.tool_failures = self._counter(
            p + "tool_failures_total", "Tool calls that did not answer, by reason", ("reason",)
        )

    def _info(self) -> None:
        info = self._gauge("npc_server_info", "The server's version", ("version",), "max")
        info.labels(__version__).set(1)

    # --- events -----------------------------------------------------------

    def __call__(self, event: NodeEvent) -> None:
        """A node.events listener."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def _connected(self, event: Connected) -> None:
        self.connections.labels(event.transport).inc()

    def _auth_failed(self, event: AuthFailed) -> None:
        self.auth_failures.labels(str(event.code)).inc()

    def _session(self, event: SessionAttached) -> None:
        self.attached.labels(event.outcome).inc()

    def _closed(self, event: Closed) -> None:
        self.closes.labels(*close_label(event)).inc()

    def _limited(self, event: Limited) -> None:
        self.limited.labels(event.what).inc()

    def _turn_started(self, event: TurnStarted) -> None:
        self.turns_started.labels(event.npc).inc()

    def _turn_ended(self, event: TurnEnded) -> None:
        npc = event.npc
        self.turns_ended.labels(npc, event.reason).inc()
        self.tokens.labels(npc).inc(event.tokens)
        self.chars.labels(npc).inc(event.chars)
        self.kept.labels(npc).inc(event.kept)
        self.duration.labels(npc).observe(event.duration_s)
        if event.first_delta_s is not None:
            self.first_delta.labels(npc).observe(event.first_delta_s)
        if event.interrupt_s is not None:
            self.interrupt.labels(npc).observe(event.interrupt_s)

    def _backend_failed(self, event: BackendFailed) -> None:
        self.backend_errors.labels(event.npc, event.backend, event.reason).inc()

    def _draining(self, event: DrainStarted) -> None:
        self.drains.inc()

    _handlers: ClassVar[dict[type, Callable[[NodeMetrics, Any], None]]] = {
        Connected: _connected,
        AuthFailed: _auth_failed,
        SessionAttached: _session,
        Closed: _closed,
        Limited: _limited,
        TurnStarted: _turn_started,
        TurnEnded: _turn_ended,
        BackendFailed: _backend_failed,
        DrainStarted: _draining,
    }

    # --- sampling ---------------------------------------------------------

    def sample(self) -> None:
        """Copy the node's statistics into the gauges and queue counters (O(sessions))."""
        node = self.node
        stats = node.statistics()
        self.sockets.set(len(node.sockets))
        self.sessions.labels("attached").set(stats.attached)
        self.sessions.labels("detached").set(stats.sessions - stats.attached)
        self.players.set(stats.players)
        self.rooms.set(stats.rooms)
        self.memberships.set(stats.memberships)
        self.conversations.set(stats.conversations)
        self.turns_held.set(stats.turns)
        self.generations.set(stats.generations)
        self.slots.set(node.limiter.limit)
        self.open_actions.set(stats.open_actions)
        self._sample_queues()
        broker = node.broker.statistics()
        self.channels.set(broker.channels)
        self._advance("published", broker.published, self.published)
        for reason, total in node.tools.statistics().failures.items():
            self._advance(f"tool_failures:{reason}", total, self.tool_failures.labels(reason))

    def _sample_queues(self) -> None:
        retired = self.node.hub.retired_queues
        totals = {name: getattr(retired, name) for name in self.queue_counters}
        depth = size = deepest = 0
        for session in self.node.hub.all_sessions():
            q = session.queue.statistics()
            depth, size, deepest = depth + q.depth, size + q.bytes, max(deepest, q.depth)
            for name in totals:
                totals[name] += getattr(q, name)
        self.queue_frames.set(depth)
        self.queue_bytes.set(size)
        self.queue_max.set(deepest)
        for name, counter in self.queue_counters.items():
            self._advance(name, totals[name], counter)

    def _advance(self, key: str, total: int, counter: Counter) -> None:
        # The node keeps totals; a Prometheus counter only goes up by steps.
        step = total - self._last.get(key, 0)
        if step > 0:
            counter.inc(step)
            self._last[key] = total

    async def sample_forever(self) -> None:
        """Multiprocess mode: keep this worker's gauges fresh for other workers' scrapes."""
        interval = self.node.config.metrics.sample_interval
        while True:
            self.sample()
            await asyncio.sleep(interval)

    # --- exposition -------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The scrape's body and content type, after a fresh sample of this process."""
        self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        untyped: Any = multiprocess  # as in worker_exited
        untyped.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AdminApp:
    """The ASGI app of the `[metrics] bind` listener: `/metrics`, `/healthz`, `/readyz`, no key.

    Its own address is its protection (a loopback or private interface); it
    shares the node with the main app and has nothing else to start.
    """

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        node = self.metrics.node
        if method != "GET" or path not in ("/metrics", "/healthz", "/readyz"):
            await _respond(send, 404, b"not found", "text/plain")
        elif path in ("/healthz", "/readyz"):  # as the main app's
            code, status = (200, node.health) if path == "/healthz" else node.readiness
            await _respond(send, code, f'{{"status": "{status}"}}'.encode(), "application/json")
        else:
            body, content_type = self.metrics.exposition()
            await _respond(send, 200, body, content_type)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
