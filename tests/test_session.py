"""Sessions: seq at write time, the replay window, overflow while attached or away."""

from __future__ import annotations

import msgpack

from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Ack, Delta, ServerFrame, ServerPing, ServerPong
from npc_server.session import ReplayBuffer, Session, SessionLimits, SessionState


def decode(data: bytes | None) -> dict[str, object]:
    assert data is not None
    frame: dict[str, object] = msgpack.unpackb(data)
    return frame


def session_state(session: Session) -> SessionState:
    """Read the state afresh (mypy narrows attributes across calls otherwise)."""
    return session.state


def attached(limits: SessionLimits | None = None) -> tuple[Session, list[CloseCode]]:
    session = Session("s1", "alice", limits or SessionLimits(), now=0.0)
    closes: list[CloseCode] = []
    session.attach(object(), lambda: None, closes.append)
    return session, closes


def test_seq_is_assigned_when_written_without_gaps() -> None:
    """seq counts written frames 1, 2, 3; pings get none."""
    session, _ = attached()
    session.push_nowait(Ack(1))
    session.push_nowait(ServerPing(ts=5))
    session.push_nowait(Ack(2))
    frames = [decode(session.next_write_nowait()) for _ in range(3)]
    assert [f.get("seq") for f in frames] == [1, None, 2]
    assert session.last_seq == 2


def test_written_frames_are_reported() -> None:
    """on_written sees each sequenced frame as it is handed to the socket."""
    session, _ = attached()
    seen: list[ServerFrame] = []
    session.on_written = seen.append
    session.push_nowait(Delta("t", "ab", 0))
    session.push_nowait(Delta("t", "cd", 2))
    session.next_write_nowait()
    assert seen == [Delta("t", "abcd", 0)]


def test_replay_after_returns_missed_frames_in_order() -> None:
    """A resume at seq n gets every frame after n."""
    session, _ = attached()
    for i in range(5):
        session.push_nowait(Ack(i))
        session.next_write_nowait()
    replay = session.replay_after(2)
    assert replay is not None
    assert [decode(d)["seq"] for d in replay] == [3, 4, 5]
    assert session.replay_after(5) == []


def test_a_resume_across_a_hole_is_not_served() -> None:
    """After `mark_hole` (frames for the session may be lost), a resume from before what
    was written or queued then is refused; from after it, served. Detached, none is."""
    session, _ = attached()
    for i in range(5):
        session.push_nowait(Ack(i))
        session.next_write_nowait()
    session.push_nowait(Ack(5))  # queued, written later as seq 6
    session.mark_hole()
    session.next_write_nowait()
    assert session.replay_after(5) is None  # it lacked what was queued when the hole began
    assert session.replay_after(6) == []
    session.detach(now=1.0)
    session.push_nowait(Ack(6))
    session.mark_hole()  # away: the hole is in its queue
    assert session.replay_after(6) is None
    assert session.holed_at == 8


def test_a_hole_counts_only_the_queued_frames_that_take_a_seq() -> None:
    """A pong queued at the mark takes no seq: a client with every written frame resumes."""
    session, _ = attached()
    session.push_nowait(Ack(1))
    session.next_write_nowait()
    session.push_nowait(ServerPong(ts=1))
    session.mark_hole()
    session.next_write_nowait()
    session.detach(now=1.0)
    assert session.replay_after(1) == []


def test_replay_gap_or_future_seq_is_none() -> None:
    """A seq older than the window, or ahead of the server, cannot resume."""
    buffer = ReplayBuffer(max_frames=3, max_bytes=10_000)
    for seq in range(1, 7):
        buffer.append(seq, b"x")
    assert buffer.after(2, 6) is None
    assert buffer.after(3, 6) == [b"x", b"x", b"x"]
    assert buffer.after(7, 6) is None


def test_replay_buffer_is_bounded_by_bytes() -> None:
    """The replay window drops its oldest frames past max_bytes."""
    buffer = ReplayBuffer(max_frames=100, max_bytes=10)
    for seq in range(1, 6):
        buffer.append(seq, b"abcd")
    assert buffer.bytes <= 10 and len(buffer) == 2


def test_overflow_while_attached_asks_for_close_4000() -> None:
    """An attached session over its queue bound asks its socket to close with 4000."""
    session, closes = attached(SessionLimits(queue_frames=2))
    for i in range(3):
        session.push_nowait(Ack(i))
    assert closes == [CloseCode.SLOW_CONSUMER]
    assert len(session.queue) == 3  # nothing lost: the session stays resumable


def test_detached_session_keeps_queueing_then_expires_past_its_hold() -> None:
    """Away, frames queue (deltas merge) up to detached_factor times the bound."""
    session, _ = attached(SessionLimits(queue_frames=2, detached_factor=2))
    session.detach(now=1.0)
    for i in range(500):
        session.push_nowait(Delta("t", "x", i))
    assert session.state is SessionState.DETACHED and len(session.queue) == 1
    for i in range(4):
        session.push_nowait(Ack(i))
    assert session_state(session) is SessionState.EXPIRED
    assert len(session.queue) == 0


def test_detached_session_expires_past_hold_bytes() -> None:
    """Text held for an absent player is capped by hold_bytes."""
    session, _ = attached(SessionLimits(queue_bytes=100, hold_bytes=1000))
    session.detach(now=1.0)
    session.push_nowait(Delta("t", "x" * 900, 0))
    assert session.state is SessionState.DETACHED
    session.push_nowait(Delta("t", "x" * 200, 900))
    assert session_state(session) is SessionState.EXPIRED


def test_attach_replaces_an_attached_socket_with_4503() -> None:
    """A second socket taking the session closes the first with 4503."""
    session, closes = attached()
    session.attach(object(), lambda: None, lambda code: None)
    assert closes == [CloseCode.REPLACED]


def test_resume_window_expiry() -> None:
    """A detached session expires after resume_window seconds."""
    session, _ = attached(SessionLimits(resume_window=10))
    session.detach(now=100.0)
    assert not session.expired_at(109.0)
    assert session.expired_at(111.0)


def paced(delta_ms: int) -> Session:
    session, _ = attached()
    session.pace(delta_ms)
    return session


def test_paced_deltas_wait_for_the_window_and_merge() -> None:
    """With a 50 ms window a lone delta after a delta write is held, then goes merged."""
    session = paced(50)
    session.push_nowait(Delta("t", "a", 0))
    assert [decode(d)["text"] for d in session.take_writes_nowait(1.0)] == ["a"]
    session.push_nowait(Delta("t", "b", 1))
    session.push_nowait(Delta("t", "c", 2))
    assert session.take_writes_nowait(1.02) == []
    assert session.held_until == 1.05
    assert [decode(d)["text"] for d in session.take_writes_nowait(1.05)] == ["bc"]
    assert session.held_until is None


def test_other_frames_flush_held_deltas_in_order() -> None:
    """A frame other than a delta goes at once, with the held delta before it."""
    session = paced(50)
    session.push_nowait(Delta("t", "a", 0))
    session.take_writes_nowait(1.0)
    session.push_nowait(Delta("t", "b", 1))
    session.push_nowait(Ack(7))
    session.push_nowait(Delta("u", "x", 0))
    batch = [decode(d) for d in session.take_writes_nowait(1.01)]
    assert [(f["t"], f.get("text")) for f in batch] == [("delta", "b"), ("ack", None)]
    assert session.held_until == 1.06


def test_unpaced_session_takes_everything_queued() -> None:
    """delta_ms 0: one call takes every queued frame; a flush ignores the window."""
    session = paced(0)
    session.push_nowait(Delta("t", "a", 0))
    session.push_nowait(Ack(1))
    session.push_nowait(Delta("u", "b", 0))
    assert len(session.take_writes_nowait(1.0)) == 3
    held = paced(50)
    held.push_nowait(Delta("t", "a", 0))
    held.take_writes_nowait(1.0)
    held.push_nowait(Delta("t", "b", 1))
    assert held.take_writes_nowait(1.001) == []
    assert [decode(d)["text"] for d in held.take_writes_nowait(1.001, hold=False)] == ["b"]


def test_interrupt_drops_held_deltas() -> None:
    """Deltas held in the window are dropped with the turn; nothing is left to write."""
    session = paced(50)
    session.push_nowait(Delta("t", "a", 0))
    session.take_writes_nowait(1.0)
    session.push_nowait(Delta("t", "b", 1))
    assert session.drop_turn_nowait("t") == 1
    assert session.take_writes_nowait(2.0) == [] and session.held_until is None


def test_merged_pushes_do_not_wake_the_writer() -> None:
    """Only a frame queued anew calls on_ready: a merge joins one that already woke it."""
    session = Session("s1", "alice", SessionLimits(), now=0.0)
    wakes: list[None] = []
    session.attach(object(), lambda: wakes.append(None), lambda code: None)
    for i in range(5):
        session.push_nowait(Delta("t", "x", i))
    assert len(wakes) == 1
