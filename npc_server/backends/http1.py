"""A sans-I/O reader of HTTP/1.1 responses: bytes in, the head and the body's bytes out.

Only what a streamed chat completion needs, read strictly where framing is at
stake: a status line and headers (informational 1xx heads skipped), then a
body framed by `transfer-encoding: chunked`, by `content-length`, or by the
connection's end; `content-encoding` gzip or deflate is undone. Lines and
heads are bounded, so a server cannot make the reader buffer without end.
Each `feed` returns the body bytes that data completes, as one `bytes`, so
a streamed event costs one slice, not an object per HTTP chunk.

No asyncio here: `http_pool.py` drives it from a transport.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 4096  # a chunk-size or trailer line
_SIZE_LINE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?")  # size, extensions
_DIGITS = re.compile(r"[0-9]{1,18}")
_HEX = b"0123456789abcdefABCDEF"
_STATUS = re.compile(r"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: (.*))?")


class ProtocolError(ValueError):
    """The server broke HTTP/1.1: a bad status line, header, chunk or length."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status, reason and headers (names lowercased; repeats joined with ", ")."""

    status: int
    reason: str
    headers: dict[str, str]
    keep_alive: bool


# Parser states: plain ints, because they are compared several times per read.
_HEAD, _SIZE, _DATA, _DATA_END, _TRAILERS, _LENGTH, _UNTIL_CLOSE, _DONE = range(8)
_STATE_NAMES = (
    "head",
    "chunk size",
    "chunk data",
    "chunk end",
    "trailers",
    "content-length body",
    "body until close",
    "done",
)


def parse_head(raw: bytes) -> ResponseHead:
    """The head of a response, from its bytes up to (not including) the blank line."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ProtocolError("the response head is not text") from None
    status_line, *lines = text.replace("\r\n", "\n").split("\n")
    match = _STATUS.fullmatch(status_line)
    if match is None:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    minor, code, reason = match.groups()
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    status = int(code)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if minor == "0" else "close" not in tokens
    return ResponseHead(status, reason or _phrase(status), headers, keep_alive)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class ResponseParser:
    """Feed it the bytes of one response as they arrive; `head` is set once it is in."""

    __slots__ = ("_buffer", "_decoder", "_remaining", "_state", "error", "head", "trailing")

    def __init__(self) -> None:
        self._state = _HEAD
        self._buffer = b""
        self._remaining = 0
        self._decoder: zlib._Decompress | None = None
        self.head: ResponseHead | None = None
        self.trailing = False  # bytes came after the response's end: the connection is spoiled
        # Bad framing after some body in the same feed: that body is returned, this kept.
        self.error: ProtocolError | None = None

    @property
    def complete(self) -> bool:
        """The whole body has been read."""
        return self._state is _DONE

    @property
    def reusable(self) -> bool:
        """Complete, kept alive, and nothing after it: the connection may serve another request."""
        head = self.head
        return self.complete and not self.trailing and head is not None and head.keep_alive

    def feed(self, data: bytes) -> bytes:
        """The body bytes `data` completes (b"" if none); raise `ProtocolError` on bad framing.

        When the framing breaks after some body bytes of `data`, those are returned
        and the error is in `error` (and raised by the next feed).
        """
        if self.error is not None:
            raise self.error
        state = self._state
        if state is _SIZE and not self._buffer and self._decoder is None:
            # The common read of a stream: exactly one whole chunk, "<hex>\r\n<data>\r\n".
            end = data.find(b"\r\n", 0, 17)
            if end > 0 and not data[:end].strip(_HEX):
                size = int(data[:end], 16)
                start = end + 2
                if size and len(data) == start + size + 2 and data.endswith(b"\r\n"):
                    return data[start : start + size]
        if state is _DATA and not self._buffer and len(data) < self._remaining:
            self._remaining -= len(data)  # the middle of a long chunk: no copy
            return self._decode(data)
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        if state is _HEAD:
            data = self._read_head(data)
        state = self._state
        if state is _LENGTH:
            body = data[: self._remaining]
            self._remaining -= len(body)
            self.trailing = self.trailing or len(data) > len(body)
            if not self._remaining:
                self._state = _DONE
            return self._decode(body)
        if state is _UNTIL_CLOSE:
            return self._decode(data)
        if state is _DONE:
            self.trailing = self.trailing or bool(data)
            return b""
        if not data:
            return b""
        body = self._chunked(data)
        return body if self._decoder is None else self._decode(body)

    def feed_eof(self) -> None:
        """The connection ended: the body is complete if it was framed by the end, else cut."""
        if self._state is _UNTIL_CLOSE:
            self._state = _DONE
        elif self._state is not _DONE:
            raise ProtocolError(f"the connection closed in the {_STATE_NAMES[self._state]}")

    def _read_head(self, data: bytes) -> bytes:
        while self._state is _HEAD:
            end, sep = data.find(b"\r\n\r\n"), 4
            if end < 0:
                end, sep = data.find(b"\n\n"), 2
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"the response head is over {MAX_HEAD_BYTES} bytes")
                self._buffer = data
                return b""
            if end > MAX_HEAD_BYTES:
                raise ProtocolError(f"the response head is over {MAX_HEAD_BYTES} bytes")
            head = parse_head(data[:end])
            data = data[end + sep :]
            if head.status >= 200:  # 1xx (103 Early Hints ...) come before the real head
                self._start_body(head)
        return data

    def _start_body(self, head: ResponseHead) -> None:
        self.head = head
        headers = head.headers
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding in ("gzip", "deflate", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif coding not in ("identity", ""):
            raise ProtocolError(f"unsupported content-encoding {coding!r}")
        codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",")]
        if head.status in (204, 304):
            self._state = _DONE
        elif codings[-1] == "chunked":
            self._state = _SIZE
        elif "content-length" in headers:
            self._remaining = _content_length(headers["content-length"])
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _UNTIL_CLOSE
            self.head = ResponseHead(head.status, head.reason, headers, keep_alive=False)

    def _chunked(self, data: bytes) -> bytes:
        parts: list[bytes] = []
        try:
            self._read_chunks(data, parts)
        except ProtocolError as exc:
            if not parts:
                raise
            self.error = exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_chunks(self, data: bytes, parts: list[bytes]) -> None:
        pos, size = 0, len(data)
        while pos < size:
            state = self._state
            if state is _DATA:
                end = min(pos + self._remaining, size)
                parts.append(data[pos:end])
                self._remaining -= end - pos
                pos = end
                if not self._remaining:
                    self._state = _DATA_END
            elif state is _DATA_END:
                if size - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("a chunk does not end in CRLF")
                pos += 2
                self._state = _SIZE
            elif state is _DONE:
                self.trailing = True
                pos = size
            else:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    break
                line = data[pos:line_end]
                if state is _SIZE and 0 < len(line) < 16 and not line.strip(_HEX):
                    # a bare size (the common line), as `_line` would read it
                    self._remaining = int(line, 16)
                    self._state = _DATA if self._remaining else _TRAILERS
                else:
                    self._line(line)
                pos = line_end + 2
                end = pos + self._remaining
                if self._state is _DATA and data[end : end + 2] == b"\r\n":
                    parts.append(data[pos:end])  # the whole chunk is here: the common case
                    self._state = _SIZE
                    pos = end + 2
        self._buffer = data[pos:]
        if len(self._buffer) > MAX_LINE_BYTES and self._state is not _DATA:
            raise ProtocolError(
                f"a {_STATE_NAMES[self._state]} line is over {MAX_LINE_BYTES} bytes"
            )

    def _line(self, line: bytes) -> None:
        """A chunk-size line, or a trailer line (an empty one ends the body)."""
        if self._state is _TRAILERS:
            if not line:
                self._state = _DONE
            return
        match = _SIZE_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"not a chunk size: {line[:40]!r}")
        self._remaining = int(match.group(1), 16)
        self._state = _DATA if self._remaining else _TRAILERS

    def _decode(self, body: bytes) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return body
        try:
            out = decoder.decompress(body)
            if self._state is _DONE:
                out += decoder.flush()
        except zlib.error:
            raise ProtocolError("the compressed body is corrupt") from None
        return out


def _content_length(value: str) -> int:
    lengths = {v.strip() for v in value.split(",")}  # repeats must agree
    if len(lengths) != 1 or _DIGITS.fullmatch(next(iter(lengths))) is None:
        raise ProtocolError(f"not a content-length: {value[:40]!r}")
    return int(lengths.pop())


def request_prefix(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The head of a request up to its `content-length` (see `with_length`)."""
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n"


def with_length(prefix: bytes, body: bytes) -> bytes:
    """A request's head and body, from `request_prefix` and the body."""
    return b"%scontent-length: %d\r\n\r\n%s" % (prefix, len(body), body)
