"""A sans-I/O decoder of `text/event-stream` bodies: bytes in, event data out.

Follows the WHATWG "event stream interpretation" for what a chat-completion
stream needs: lines end in LF, CRLF or CR (a CR at the end of one read and an
LF at the start of the next are one line end); `data:` lines of an event are
joined with LF; a blank line ends an event; lines starting with `:` are
comments (keep-alives); `event`, `id`, `retry` and unknown fields are ignored,
because chat completions carry everything in `data`. An event without data
lines is not dispatched. A leading UTF-8 BOM is dropped.

Payloads stay `bytes`: orjson parses them without a decode step, and nothing
is built per event except the payload itself.
"""

from __future__ import annotations

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 1 << 20


class EventTooLarge(ValueError):
    """An event (or a line) grew past the decoder's limit without ending."""


class SSEDecoder:
    """Feed it body bytes as they arrive; it returns the data of each complete event."""

    __slots__ = ("_buffer", "_clean", "_cr_pending", "_data", "_data_size", "_max", "_started")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = b""  # an unfinished line
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_size = 0
        self._cr_pending = False  # the last read ended in CR: a following LF is its pair
        self._started = False
        # Between events: no line, data or CR pending, the BOM checked (see `feed`).
        self._clean = False

    def feed(self, data: bytes) -> list[bytes]:
        """Decode the next bytes of the body; return the data of the events they complete."""
        if (
            self._clean
            and data.startswith(b"data: ")
            and data.endswith(b"\n\n")
            and b"\r" not in data
            and len(data) <= self._max
        ):  # between events, whole "data: ...\n\n" ones come (LF line ends, no BOM)
            end = len(data) - 2
            if data.find(b"\n", 6) == end:  # the common read: exactly one, of one line
                return [data[6:end]]
            if (events := _whole_events(data)) is not None:  # a backlog read at once
                return events
        if not data:
            return []  # an empty read must not forget a CR still waiting for its LF
        self._clean = False  # until this read is decoded (it may raise `EventTooLarge`)
        events = self._feed(data)
        self._clean = self._started and not self._buffer and not self._data and not self._cr_pending
        return events

    def _feed(self, data: bytes) -> list[bytes]:
        if not self._started:
            data = self._strip_bom(data)
        if self._cr_pending:
            self._cr_pending = False
            if data[:1] == b"\n":
                data = data[1:]
        if self._buffer:
            data = self._buffer + data
        if b"\r" in data:
            self._cr_pending = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > self._max:
            raise EventTooLarge(f"a line is longer than {self._max} bytes")
        return self._interpret(lines) if lines else []

    def _strip_bom(self, data: bytes) -> bytes:
        if len(self._buffer) + len(data) < len(BOM) and BOM.startswith(self._buffer + data):
            self._buffer += data  # too short to tell yet
            return b""
        data, self._buffer = self._buffer + data, b""
        self._started = True
        return data[len(BOM) :] if data.startswith(BOM) else data

    def _interpret(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
                    self._data_size = 0
            elif line.startswith(b"data:"):
                self._add_data(line[6:] if line[5:6] == b" " else line[5:])
            elif line == b"data":
                self._add_data(b"")  # a field name alone has an empty value
        return events

    def _add_data(self, value: bytes) -> None:
        self._data_size += len(value) + 1
        if self._data_size > self._max:
            raise EventTooLarge(f"an event is longer than {self._max} bytes")
        self._data.append(value)


def _whole_events(data: bytes) -> list[bytes] | None:
    """The data of `data` (which starts with "data: " and ends in LF LF, no CR) when
    it is whole events of one data line each; else None (for the general decoding).

    Each event but the first starts after "\\n\\ndata: ", which holds two of the line
    ends, and the last two are the end: with no other line end, every line is a
    `data: ` field or the blank line after it."""
    events = data.split(b"\n\ndata: ")
    if data.count(b"\n") != 2 * len(events):
        return None
    events[0] = events[0][6:]
    events[-1] = events[-1][:-2]
    return events
