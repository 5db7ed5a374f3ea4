"""A player's session: its outgoing queue, its `seq` and its replay window.

A session outlives its socket. While no socket is attached, frames keep
queueing (deltas merge), so turns that generate while the player is away lose
no text; `hello{resume}` attaches a new socket, which first gets the frames
after the client's `seq` from the replay window and then the queue.
Sans I/O: the socket edge is told through the `on_ready` / `on_close`
callbacks and pulls frames with `take_writes_nowait()`.

Pacing (`hello.delta_ms`, set per socket with `pace()`): deltas go out at
most once per window. While only deltas wait, they stay queued (merging per
turn) until the window since the last delta write has passed, and
`held_until` says when; any other frame flushes what waits before it, in
order, so `turn.end` and `action` are never delayed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from npc_server.outbound import OutboundQueue, PushResult
from npc_server.protocol.codec import encode_server_frame
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Delta, ServerFrame


class SessionState(Enum):
    ATTACHED = "attached"
    DETACHED = "detached"
    EXPIRED = "expired"


_EXPIRED, _QUEUED = SessionState.EXPIRED, PushResult.QUEUED


@dataclass(frozen=True, slots=True)
class SessionLimits:
    queue_frames: int = 256
    queue_bytes: int = 256 * 1024
    # While detached the queue may hold this many times `queue_frames`, and up
    # to `hold_bytes` (text of turns that go on generating, merged), before the
    # session gives up; a resume then falls back to a snapshot.
    detached_factor: int = 4
    hold_bytes: int = 1024 * 1024
    replay_frames: int = 2048
    replay_bytes: int = 1024 * 1024
    resume_window: float = 120.0


class ReplayBuffer:
    """Encoded frames as written, bounded by count and bytes."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._frames: deque[tuple[int, bytes]] = deque()
        self._bytes = 0

    def append(self, seq: int, data: bytes) -> None:
        frames = self._frames
        frames.append((seq, data))
        self._bytes += len(data)
        if len(frames) > self.max_frames or self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        frames = self._frames
        while frames and (len(frames) > self.max_frames or self._bytes > self.max_bytes):
            _, old = frames.popleft()
            self._bytes -= len(old)

    def after(self, seq: int, last_seq: int) -> list[bytes] | None:
        """Frames with a seq above `seq`, or None if some of them are gone."""
        if seq > last_seq:
            return None
        if seq == last_seq:
            return []
        if not self._frames or self._frames[0][0] > seq + 1:
            return None
        return [data for s, data in self._frames if s > seq]

    def items_after(self, seq: int, last_seq: int) -> list[tuple[int, bytes]] | None:
        """Like `after`, with each frame's seq (a handover carries them to another node)."""
        if self.after(seq, last_seq) is None:
            return None
        return [(s, data) for s, data in self._frames if s > seq]

    def load(self, items: list[tuple[int, bytes]]) -> None:
        """Replace the window with `items` (seq, encoded frame), oldest first."""
        self._frames.clear()
        self._bytes = 0
        for seq, data in items:
            self.append(seq, data)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)


def _noop() -> None:
    return None


def _ignore_close(code: CloseCode) -> None:
    return None


def _ignore_session(session: Session) -> None:
    pass


def _ignore_frame(frame: ServerFrame) -> None:
    return None


class Session:
    """One client session; frames reach its socket only through here."""

    def __init__(
        self,
        session_id: str,
        player: str,
        limits: SessionLimits,
        now: float,
        on_written: Callable[[ServerFrame], None] = _ignore_frame,
    ) -> None:
        self.id = session_id
        self.player = player
        self.limits = limits
        self.queue = OutboundQueue(limits.queue_frames, limits.queue_bytes)
        self.replay = ReplayBuffer(limits.replay_frames, limits.replay_bytes)
        self.last_seq = 0
        self.state = SessionState.DETACHED
        self.ended_with = CloseCode.GOING_AWAY  # the close code it expired with
        self.detached_at: float | None = now
        self.on_ready: Callable[[], None] = _noop
        self.on_close: Callable[[CloseCode], None] = _ignore_close
        self.on_written = on_written
        # Told when the session ends itself (a held one whose queue outgrew its bounds),
        # so its node forgets it as it does a session it ends (`Node.end_session`).
        self.on_ended: Callable[[Session], None] = _ignore_session
        self.owner: object | None = None
        self.delta_window = 0.0
        # When held deltas may go (None: nothing is held back).
        self.held_until: float | None = None
        self._next_delta_at = 0.0
        # Frames for the session may have been lost before this seq (Redis was away):
        # a resume from an earlier seq would replay across the hole (`mark_hole`).
        self.holed_at = 0

    def attach(
        self, owner: object, on_ready: Callable[[], None], on_close: Callable[[CloseCode], None]
    ) -> None:
        """A socket (`owner`) takes over this session; one already attached is replaced."""
        if self.state is SessionState.ATTACHED:
            self.on_close(CloseCode.REPLACED)
        self.owner = owner
        self.state = SessionState.ATTACHED
        self.detached_at = None
        self.on_ready = on_ready
        self.on_close = on_close

    def detach(self, now: float) -> None:
        """The socket is gone; the session waits `resume_window` for a resume."""
        if self.state is SessionState.ATTACHED:
            self.owner = None
            self.state = SessionState.DETACHED
            self.detached_at = now
            self.on_ready = _noop
            self.on_close = _ignore_close

    def hold_for_resume(self, now: float) -> None:
        """A hello resumes this detached session: its window starts again, so nothing ends
        it while the hello still waits (in a cluster: the socket claim, subscriptions)."""
        if self.state is SessionState.DETACHED:
            self.detached_at = now

    def expire(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """The session can no longer be resumed; drop what it holds.

        A socket still attached is closed with `code`: no socket stays open
        on a session that has ended.
        """
        if self.state is SessionState.ATTACHED:
            self.on_close(code)
        self.state = SessionState.EXPIRED
        self.ended_with = code
        self.owner = None
        self.queue.clear_nowait()
        self.on_ready = _noop
        self.on_close = _ignore_close

    def expired_at(self, now: float) -> bool:
        """Whether a detached session has outlived its resume window."""
        return self.detached_at is not None and now - self.detached_at > self.limits.resume_window

    def push_nowait(self, frame: ServerFrame) -> None:
        """Queue a frame for this session's socket; never waits."""
        if self.state is _EXPIRED:
            return
        result = self.queue.push_nowait(frame)
        if result is _QUEUED:
            self.on_ready()
        elif result is PushResult.OVERFLOW:
            self._overflowed()
        # MERGED / REPLACED: the entry it joined still waits, so the writer is
        # already awake or holding it on a timer: no wake-up per token.

    def _overflowed(self) -> None:
        if self.state is SessionState.ATTACHED:
            self.on_close(CloseCode.SLOW_CONSUMER)
            return
        stats = self.queue.statistics()
        limits = self.limits
        too_many = stats.depth > limits.detached_factor * self.queue.max_frames
        if too_many or stats.bytes > limits.hold_bytes:
            self.expire()
            self.on_ended(self)

    def drop_turn_nowait(self, turn: str) -> int:
        """Drop queued deltas of an interrupted turn."""
        return self.queue.drop_turn_nowait(turn)

    def pace(self, delta_ms: int) -> None:
        """Deltas to the attached socket at most every `delta_ms` (0: as they come)."""
        self.delta_window = delta_ms / 1000
        self._next_delta_at = 0.0
        self.held_until = None

    def take_writes_nowait(self, now: float, *, hold: bool = True) -> list[bytes]:
        """Every frame that may be written at `now`, encoded, in order.

        With a pacing window, deltas waiting alone are held until
        `held_until`; `hold=False` (the flush before a close) takes everything.
        """
        queue = self.queue
        window = self.delta_window
        if not window:
            # Unpaced (the common case): everything, and nothing is ever held.
            return self._encode_all(queue.pop_all_nowait())
        if hold and now < self._next_delta_at:
            # Held: only up to the last frame that is not a delta (FIFO keeps the order).
            frames = []
            while queue.urgent and (frame := queue.pop_nowait()) is not None:
                frames.append(frame)
        else:
            frames = queue.pop_all_nowait()
        if any(type(frame) is Delta for frame in frames):
            # Every delta of this write counts as one: the window starts now.
            self._next_delta_at = now + window
        self.held_until = self._next_delta_at if len(queue) else None
        return self._encode_all(frames)

    def next_write_nowait(self) -> bytes | None:
        """The next frame to write, encoded with its seq and kept for replay (unpaced)."""
        frame = self.queue.pop_nowait()
        if frame is None:
            return None
        return self._encode_all([frame])[0]

    def _encode_all(self, frames: list[ServerFrame]) -> list[bytes]:
        """Each frame encoded with its seq (if it has one), kept for replay, reported written."""
        # Every written frame passes here: one loop for the batch.
        out = []
        keep = self.replay.append
        on_written = self.on_written
        for frame in frames:
            if not frame.SEQ:
                out.append(encode_server_frame(frame, None))
                continue
            seq = self.last_seq = self.last_seq + 1
            data = encode_server_frame(frame, seq)
            keep(seq, data)
            on_written(frame)
            out.append(data)
        return out

    def replay_after(self, seq: int) -> list[bytes] | None:
        """Frames the client missed after `seq`, or None if that gap can't be filled."""
        if seq < self.holed_at:
            return None
        return self.replay.after(seq, self.last_seq)

    def mark_hole(self) -> None:
        """Frames meant for this session may be lost from here on (Redis is or was away).

        A client that has not received every frame written or queued so far would
        resume across the hole: it gets a new session and a snapshot instead. A
        detached session's hole is in its queue, so no resume of it is served.
        """
        queued = self.queue.sequenced()
        hole = self.last_seq + queued + (self.state is not SessionState.ATTACHED)
        self.holed_at = max(self.holed_at, hole)

    # --- handover to another node (npc_server/cluster/handover.py) ----------

    def take_queued_nowait(self) -> list[ServerFrame]:
        """Every frame queued but not yet written, in order, leaving the queue empty."""
        return self.queue.pop_all_nowait()

    def restore_nowait(self, last_seq: int, replay: list[tuple[int, bytes]]) -> None:
        """Continue another node's session: its last seq and its replay window."""
        self.last_seq = last_seq
        self.replay.load(replay)
