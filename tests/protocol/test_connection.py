"""The sans-I/O connection: hello first, bad-frame streaks, size and rate limits."""

from __future__ import annotations

from typing import Any

import msgpack

from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.protocol.connection import (
    CloseConnection,
    ConnectionState,
    FrameReceived,
    SendError,
    ServerConnection,
)
from npc_server.protocol.frames import Hello, Limits, Pong, Say


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pack(frame: Any) -> bytes:
    data: bytes = msgpack.packb(frame)
    return data


def opened(limits: Limits | None = None, clock: FakeClock | None = None) -> ServerConnection:
    conn = ServerConnection(limits or Limits(), clock or FakeClock())
    conn.receive(pack({"t": "hello", "token": "x"}))
    conn.accept_hello()
    return conn


def test_hello_must_come_first() -> None:
    """Anything but hello as the first message closes with 4500."""
    conn = ServerConnection(Limits(), FakeClock())
    [event] = conn.receive(pack({"t": "say", "id": 1, "npc": "m", "text": "hi"}))
    assert isinstance(event, CloseConnection) and event.code is CloseCode.AUTH_FAILED
    assert conn.state is ConnectionState.CLOSED


def test_text_message_before_hello_closes_4500() -> None:
    """A text message instead of hello closes with 4500."""
    [event] = ServerConnection(Limits(), FakeClock()).receive('{"t":"hello"}')
    assert isinstance(event, CloseConnection) and event.code is CloseCode.AUTH_FAILED


def test_hello_is_received_then_opened() -> None:
    """hello comes out as a frame; accept_hello opens the connection."""
    conn = ServerConnection(Limits(), FakeClock())
    [event] = conn.receive(pack({"t": "hello", "token": "tok"}))
    assert event == FrameReceived(Hello(token="tok"))
    conn.accept_hello()
    assert conn.state is ConnectionState.OPEN


def test_three_bad_frames_in_a_row_close_4501() -> None:
    """Each bad frame gets an error; the third in a row closes with 4501."""
    conn = opened()
    first = conn.receive(b"\xc1")
    second = conn.receive("text")
    third = conn.receive(pack([1]))
    assert [type(e) for e in first] == [SendError]
    assert [type(e) for e in second] == [SendError]
    assert isinstance(third[0], SendError) and third[0].frame.code == ErrorCode.BAD_FRAME
    assert isinstance(third[1], CloseConnection) and third[1].code is CloseCode.PROTOCOL_VIOLATION


def test_a_good_frame_resets_the_streak() -> None:
    """Bad frames must be consecutive to close the socket."""
    conn = opened()
    for _ in range(5):
        conn.receive(b"\xc1")
        conn.receive(b"\xc1")
        [event] = conn.receive(pack({"t": "ping"}))
        assert isinstance(event, FrameReceived)
    assert conn.state is ConnectionState.OPEN


def test_unknown_type_does_not_count_as_bad() -> None:
    """unknown_type frames are answered but never close the socket."""
    conn = opened()
    for _ in range(5):
        [event] = conn.receive(pack({"t": "future", "id": 3}))
        assert isinstance(event, SendError) and event.frame.code == ErrorCode.UNKNOWN_TYPE
        assert event.frame.id == 3


def test_oversized_message_closes_1009() -> None:
    """A message over frame_bytes closes with 1009, before or after hello."""
    conn = opened(Limits(frame_bytes=100))
    [event] = conn.receive(pack({"t": "say", "id": 1, "npc": "m", "text": "x" * 200}))
    assert isinstance(event, CloseConnection) and event.code is CloseCode.MESSAGE_TOO_BIG


def test_long_text_is_too_long_error() -> None:
    """say.text over text_chars is refused with too_long and the say's id."""
    conn = opened(Limits(text_chars=10))
    [event] = conn.receive(pack({"t": "say", "id": 9, "npc": "m", "text": "x" * 11}))
    assert isinstance(event, SendError)
    assert (event.frame.code, event.frame.id) == (ErrorCode.TOO_LONG, 9)
    [ok] = conn.receive(pack({"t": "say", "id": 10, "npc": "m", "text": "x" * 10}))
    assert ok == FrameReceived(Say(10, "m", "x" * 10))


def test_second_hello_is_refused() -> None:
    """hello on an open connection is a bad frame."""
    [event] = opened().receive(pack({"t": "hello", "token": "x"}))
    assert isinstance(event, SendError) and "already" in event.frame.message


def test_rate_limit_errors_once_then_closes_on_flood() -> None:
    """Past the burst frames are dropped with one rate_limited error; a flood closes 4029."""
    clock = FakeClock()
    conn = opened(Limits(rate_per_s=10, rate_burst=5, flood_close_after=50), clock)
    events = [e for _ in range(5) for e in conn.receive(pack({"t": "ping"}))]
    assert all(isinstance(e, FrameReceived) for e in events)
    [error] = conn.receive(pack({"t": "ping"}))
    assert isinstance(error, SendError) and error.frame.code == ErrorCode.RATE_LIMITED
    assert error.frame.retry_after is not None and error.frame.retry_after > 0
    quiet = [e for _ in range(48) for e in conn.receive(pack({"t": "ping"}))]
    assert quiet == []  # one error a second, not one per dropped frame
    [close] = conn.receive(pack({"t": "ping"}))
    assert isinstance(close, CloseConnection) and close.code is CloseCode.RATE_LIMITED


def test_rate_refills_with_time() -> None:
    """A client within its rate is never limited."""
    clock = FakeClock()
    conn = opened(Limits(rate_per_s=10, rate_burst=2), clock)
    for _ in range(100):
        clock.now += 0.1
        [event] = conn.receive(pack({"t": "ping"}))
        assert isinstance(event, FrameReceived)


def test_a_sustained_flood_below_the_burst_speed_is_closed() -> None:
    """Frames at 3x the rate for long enough close with 4029; dropped frames decay, not reset."""
    clock = FakeClock()
    conn = opened(Limits(rate_per_s=10, rate_burst=5, flood_close_after=50), clock)
    closes: list[CloseConnection] = []
    for _ in range(2000):  # 30 frames/s for up to ~67 s
        clock.now += 1 / 30
        closes += [e for e in conn.receive(pack({"t": "ping"})) if isinstance(e, CloseConnection)]
        if closes:
            break
    assert [c.code for c in closes] == [CloseCode.RATE_LIMITED]


def test_slightly_over_the_rate_is_slowed_not_closed() -> None:
    """At 1.5x the rate frames are dropped but the socket stays open."""
    clock = FakeClock()
    conn = opened(Limits(rate_per_s=10, rate_burst=5, flood_close_after=50), clock)
    for _ in range(3000):
        clock.now += 1 / 15
        conn.receive(pack({"t": "ping"}))
    assert conn.state is ConnectionState.OPEN


def _over_the_rate(conn: ServerConnection) -> None:
    for _ in range(20):
        conn.receive(pack({"t": "ping"}))


def test_the_pong_answering_a_ping_passes_over_the_rate() -> None:
    """A client over its rate still gets the answer to our heartbeat ping through."""
    conn = opened(Limits(rate_per_s=1, rate_burst=1, flood_close_after=10**6))
    _over_the_rate(conn)
    conn.ping_sent_nowait()
    assert conn.ping_outstanding
    [event] = conn.receive(pack({"t": "pong", "ts": 123}))
    assert event == FrameReceived(Pong(ts=123), answers_ping=True)
    assert not conn.ping_outstanding


def test_an_unsolicited_pong_is_rate_limited() -> None:
    """With no ping outstanding a pong counts toward the rate like any frame."""
    conn = opened(Limits(rate_per_s=1, rate_burst=1, flood_close_after=10**6))
    _over_the_rate(conn)
    assert conn.receive(pack({"t": "pong", "ts": 1})) == []


def test_only_one_pong_answers_each_ping() -> None:
    """The second pong after one ping is not exempt, and not marked as an answer."""
    conn = opened(Limits(rate_per_s=1, rate_burst=1, flood_close_after=10**6))
    conn.ping_sent_nowait()
    first = conn.receive(pack({"t": "pong"}))
    second = conn.receive(pack({"t": "pong"}))
    assert first == [FrameReceived(Pong(), answers_ping=True)]
    assert second == [FrameReceived(Pong())]
    [third] = conn.receive(pack({"t": "pong"}))  # the second took the only token
    assert isinstance(third, SendError) and third.frame.code == ErrorCode.RATE_LIMITED


def test_a_pong_flood_is_closed_4029() -> None:
    """Pongs nobody asked for get rate_limited and then close the socket with 4029."""
    clock = FakeClock()
    conn = opened(Limits(rate_per_s=10, rate_burst=5, flood_close_after=50), clock)
    conn.ping_sent_nowait()
    events = [e for _ in range(200) for e in conn.receive(pack({"t": "pong", "ts": 7}))]
    codes = [e.frame.code for e in events if isinstance(e, SendError)]
    closes = [e.code for e in events if isinstance(e, CloseConnection)]
    assert codes == [ErrorCode.RATE_LIMITED]
    assert closes == [CloseCode.RATE_LIMITED]
    assert sum(1 for e in events if isinstance(e, FrameReceived) and e.answers_ping) == 1


def test_a_large_pong_still_answers_the_ping() -> None:
    """A pong too long for the exemption, taken within the rate, still answers the ping."""
    conn = opened()
    conn.ping_sent_nowait()
    [event] = conn.receive(pack({"t": "pong", "ts": "x" * 100}))
    assert isinstance(event, FrameReceived) and event.answers_ping
