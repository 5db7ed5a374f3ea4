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
from npc_server.protocol.frames import Hello, Limits, Say


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


def test_pongs_pass_even_when_over_the_rate() -> None:
    """A client over its rate still gets its heartbeat answers through."""
    conn = opened(Limits(rate_per_s=1, rate_burst=1, flood_close_after=10**6))
    for _ in range(20):
        conn.receive(pack({"t": "ping"}))
    [event] = conn.receive(pack({"t": "pong", "ts": 123}))
    assert isinstance(event, FrameReceived)
    assert event.frame.T == "pong"
