"""Sessions: seq at write time, the replay window, overflow while attached or away."""

from __future__ import annotations

import msgpack

from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Ack, Delta, ServerFrame, ServerPing
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
