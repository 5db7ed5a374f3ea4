"""The WebSocket writer's machinery around direct writes (hypercorn_fixes fix 7).

A direct write is synchronous, so a push needs no task switch to reach the
socket: the session's `on_ready` (`ReadySignal.set`) marks the socket due,
and one loop callback per iteration (`FlushRound`) writes every due socket's
batch, each as one `transport.write`. The writer task only waits out the
drain of a full buffer (a slow reader); nothing is written meanwhile, so what
comes waits in the session's bounded queue, and that drain is the pending
write the watchdog times.
"""

from __future__ import annotations

import asyncio
import weakref

from npc_server.hypercorn_fixes import DirectWrites
from npc_server.session import Session
from npc_server.transports.base import ClientLink


class Wake:
    """At most one pending timer that sets the writer's `ready` event."""

    __slots__ = ("_at", "_handle", "_ready")

    def __init__(self, ready: asyncio.Event) -> None:
        self._ready = ready
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def at(self, when: float, now: float) -> None:
        """Wake the writer at `when` (on the node's clock), unless already due then."""
        if self._handle is not None and self._at == when:
            return
        self.cancel()
        self._at = when
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, when - now), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._ready.set()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class DirectFlush:
    """Writes what a session may send now, from a loop callback."""

    __slots__ = ("direct", "drain_wanted", "draining", "link", "session", "wake")

    def __init__(
        self, link: ClientLink, session: Session, wake: Wake, direct: DirectWrites
    ) -> None:
        self.link = link
        self.session = session
        self.wake = wake
        self.direct = direct
        self.draining = False
        # Set for the writer task: a buffer to drain, or the session is no longer ours.
        self.drain_wanted = asyncio.Event()

    def flush_nowait(self) -> None:
        """Write the session's batch; leave it queued while a drain is under way."""
        session = self.session
        if self.draining:
            return
        if session.owner is not self.link:
            self.drain_wanted.set()  # the writer task ends and closes the socket
            return
        try:
            # The clock matters only to a paced socket (its window); unpaced, skip the call.
            now = self.link.node.clock() if session.delta_window else 0.0
            batch = session.take_writes_nowait(now)
            if batch and self.direct.write_nowait(batch):
                self.draining = True
                self.drain_wanted.set()
            elif session.held_until is not None:
                self.wake.at(session.held_until, now)
        except Exception:
            # As in the writer task: a failed write closes this socket only.
            self.link.request_close(None)


class FlushRound:
    """One loop callback per iteration that flushes every socket marked due in it."""

    __slots__ = ("_due", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[ReadySignal] = []

    def add(self, ready: ReadySignal) -> None:
        if not self._due:
            self._loop.call_soon(self._run)
        self._due.append(ready)

    def _run(self) -> None:
        due, self._due = self._due, []
        for ready in due:
            ready.flush_nowait()


_rounds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlushRound] = (
    weakref.WeakKeyDictionary()
)


def flush_round() -> FlushRound:
    """The running loop's `FlushRound`."""
    loop = asyncio.get_running_loop()
    found = _rounds.get(loop)
    if found is None:
        found = _rounds[loop] = FlushRound(loop)
    return found


class ReadySignal(asyncio.Event):
    """A WebSocketEdge's `ready` (the session's `on_ready`).

    Without direct writes it is the event the writer task waits on. With them,
    `set()` marks the socket due in this iteration's `FlushRound` instead, so
    every frame pushed until then goes out in the same write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.direct: DirectFlush | None = None
        self._scheduled = False
        self._round = flush_round()  # looked up once: get_running_loop() is a getpid() on 3.11

    def set(self) -> None:
        if self.direct is None:
            super().set()
        elif not self._scheduled:
            self._scheduled = True
            self._round.add(self)

    def flush_nowait(self) -> None:
        self._scheduled = False
        if self.direct is not None:
            self.direct.flush_nowait()
