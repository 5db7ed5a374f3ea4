"""The per-socket protocol state machine, sans I/O.

Messages go in with `receive()`; out come events: frames to handle, error
frames to send back, or a close with its code. Time comes from an injected
clock so that rate limits are tested without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from npc_server.protocol.codec import FrameError, decode_client_frame
from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.protocol.frames import ClientFrame, Error, Hello, Limits, Pong, Say

BAD_FRAMES_BEFORE_CLOSE = 3
# A pong is a map of `t` and `ts`; anything longer is not one.
MAX_PONG_BYTES = 64


class ConnectionState(Enum):
    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    CLOSED = "closed"


class InvalidState(RuntimeError):
    """An operation was called in a state that does not allow it."""


@dataclass(frozen=True, slots=True)
class FrameReceived:
    """A valid frame to handle; `answers_ping` marks the pong that answers our ping."""

    frame: ClientFrame
    answers_ping: bool = False


@dataclass(frozen=True, slots=True)
class SendError:
    frame: Error


@dataclass(frozen=True, slots=True)
class CloseConnection:
    code: CloseCode
    reason: str


Event = FrameReceived | SendError | CloseConnection


class RateLimiter:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._now = now
        self._tokens = float(burst)
        self._stamp = now()

    def take_nowait(self) -> bool:
        """Take one token if there is one; False means the caller is over its rate."""
        now = self._now()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one token is available again."""
        return round(max(0.0, 1.0 - self._tokens) / self.rate, 3) if self.rate > 0 else 1.0


class ServerConnection:
    """Validates what one client sends and decides errors and closes."""

    def __init__(self, limits: Limits, now: Callable[[], float]) -> None:
        self.limits = limits
        self.state = ConnectionState.AWAITING_HELLO
        self._now = now
        self._limiter = RateLimiter(limits.rate_per_s, limits.rate_burst, now)
        self._bad_streak = 0
        self._dropped = 0.0
        self._dropped_at = now()
        self._last_limited_error = -1e9
        self._ping_outstanding = False

    def accept_hello(self) -> None:
        """The hello's token was accepted: from now on any frame may come."""
        if self.state is not ConnectionState.AWAITING_HELLO:
            raise InvalidState(f"accept_hello needs state AWAITING_HELLO, not {self.state.name}")
        self.state = ConnectionState.OPEN

    def ping_sent_nowait(self) -> None:
        """The server sent a heartbeat ping: the next pong answers it, past the rate limit."""
        self._ping_outstanding = True

    @property
    def ping_outstanding(self) -> bool:
        """Whether a ping sent with `ping_sent_nowait` still waits for its pong."""
        return self._ping_outstanding

    def close(self, code: CloseCode, reason: str) -> CloseConnection:
        """Mark the connection closed and return the close to perform."""
        self.state = ConnectionState.CLOSED
        return CloseConnection(code, reason)

    def receive(self, data: bytes | str) -> list[Event]:
        """Handle one inbound WebSocket message."""
        if self.state is ConnectionState.CLOSED:
            return []
        size = len(data.encode() if isinstance(data, str) else data)
        if size > self.limits.frame_bytes:
            return [
                self.close(
                    CloseCode.MESSAGE_TOO_BIG, f"message over {self.limits.frame_bytes} bytes"
                )
            ]
        if self.state is ConnectionState.AWAITING_HELLO:
            return self._receive_hello(data)
        # The pong answering our heartbeat is never dropped, or a client over its
        # rate would look dead (4001) instead of flooding (4029). Any other pong
        # is a frame like the rest: a flood of them is closed.
        answering = self._ping_outstanding and self._is_pong(data)
        if not answering and not self._limiter.take_nowait():
            return self._rate_limited()
        return self._receive_open(data)

    def _is_pong(self, data: bytes | str) -> bool:
        if isinstance(data, str) or len(data) > MAX_PONG_BYTES:
            return False
        try:
            return isinstance(decode_client_frame(data, self.limits), Pong)
        except FrameError:
            return False

    def _receive_hello(self, data: bytes | str) -> list[Event]:
        try:
            frame = None if isinstance(data, str) else decode_client_frame(data, self.limits)
        except FrameError as exc:
            return [self.close(CloseCode.AUTH_FAILED, f"expected hello: {exc.message}")]
        if not isinstance(frame, Hello):
            got = "a text message" if frame is None else f"{frame.T!r}"
            return [self.close(CloseCode.AUTH_FAILED, f"the first frame must be hello, got {got}")]
        return [FrameReceived(frame)]

    def _receive_open(self, data: bytes | str) -> list[Event]:
        try:
            if isinstance(data, str):
                raise FrameError(
                    ErrorCode.BAD_FRAME, "text messages are not accepted; send binary msgpack"
                )
            frame = decode_client_frame(data, self.limits)
            self._check(frame)
        except FrameError as exc:
            return self._refused(exc)
        self._bad_streak = 0
        if isinstance(frame, Pong) and self._ping_outstanding:
            self._ping_outstanding = False
            return [FrameReceived(frame, answers_ping=True)]
        return [FrameReceived(frame)]

    def _check(self, frame: ClientFrame) -> None:
        if isinstance(frame, Hello):
            raise FrameError(
                ErrorCode.BAD_FRAME, "hello was already accepted on this socket", frame.id
            )
        if isinstance(frame, Say) and len(frame.text) > self.limits.text_chars:
            raise FrameError(
                ErrorCode.TOO_LONG,
                f"say.text has {len(frame.text)} characters; the limit is {self.limits.text_chars}",
                frame.id,
            )

    def _refused(self, exc: FrameError) -> list[Event]:
        events: list[Event] = [
            SendError(Error(code=exc.code, message=exc.message, id=exc.request_id))
        ]
        if exc.code is not ErrorCode.BAD_FRAME:
            self._bad_streak = 0
            return events
        self._bad_streak += 1
        if self._bad_streak >= BAD_FRAMES_BEFORE_CLOSE:
            events.append(
                self.close(CloseCode.PROTOCOL_VIOLATION, f"{self._bad_streak} bad frames in a row")
            )
        return events

    def _rate_limited(self) -> list[Event]:
        # Dropped frames decay at the allowed rate: a client a little over its rate
        # is only slowed down; one far over it (a flood) is closed.
        now = self._now()
        decayed = self._dropped - (now - self._dropped_at) * self.limits.rate_per_s
        self._dropped = max(0.0, decayed) + 1
        self._dropped_at = now
        if self._dropped >= self.limits.flood_close_after:
            return [self.close(CloseCode.RATE_LIMITED, "too many frames")]
        # One error a second is enough to tell the client; more would feed its flood.
        if now - self._last_limited_error < 1.0:
            return []
        self._last_limited_error = now
        error = Error(
            code=ErrorCode.RATE_LIMITED,
            message=f"over {self.limits.rate_per_s:g} frames/s; frame dropped",
            retry_after=self._limiter.retry_after(),
        )
        return [SendError(error)]
