"""The sans-I/O HTTP/1.1 response reader: heads, chunked and sized bodies, splits, bounds."""

from __future__ import annotations

import gzip
import zlib

import pytest

from npc_server.backends.http1 import (
    MAX_HEAD_BYTES,
    MAX_LINE_BYTES,
    ProtocolError,
    ResponseParser,
    parse_head,
    request_prefix,
    with_length,
)

SSE = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"16\r\n" + SSE[:22] + b"\r\n"
    b"e;ext=1\r\n" + SSE[22:] + b"\r\n"
    b"0\r\nx-trailer: yes\r\n\r\n"
)


def read(parser: ResponseParser, *parts: bytes) -> bytes:
    return b"".join(parser.feed(part) for part in parts)


def test_a_chunked_response_split_at_every_position_gives_the_same_body() -> None:
    """Cut anywhere (head, size line, data, CRLF, trailer), the body and the end are the same."""
    for cut in range(len(CHUNKED) + 1):
        parser = ResponseParser()
        assert read(parser, CHUNKED[:cut], CHUNKED[cut:]) == SSE, f"cut at {cut}"
        assert parser.complete and parser.reusable
        assert parser.head is not None and parser.head.status == 200


def test_a_chunked_response_fed_byte_by_byte_gives_the_same_body() -> None:
    """One byte per feed: the same body, complete at the last byte and not before."""
    parser = ResponseParser()
    body = b""
    for i in range(len(CHUNKED)):
        assert not parser.complete
        body += parser.feed(CHUNKED[i : i + 1])
    assert (body, parser.complete) == (SSE, True)


def test_a_sized_body_ends_at_its_length() -> None:
    """content-length frames the body; bytes after it spoil the connection for reuse."""
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    for cut in range(len(response) + 1):
        parser = ResponseParser()
        assert read(parser, response[:cut], response[cut:]) == b"hello"
        assert parser.reusable
    parser = ResponseParser()
    assert parser.feed(response + b"extra") == b"hello"
    assert parser.complete and not parser.reusable


def test_a_body_without_framing_lasts_until_the_connection_ends() -> None:
    """No length and no chunking: the body ends with the connection, which is not reused."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\nsome") == b"some"
    assert parser.feed(b" more") == b" more"
    assert not parser.complete
    parser.feed_eof()
    assert parser.complete and not parser.reusable


def test_an_end_before_the_body_is_complete_is_an_error() -> None:
    """The connection closing inside a chunk or a sized body is a protocol error."""
    for partial in (CHUNKED[:-12], b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhalf"):
        parser = ResponseParser()
        parser.feed(partial)
        with pytest.raises(ProtocolError, match="closed in the"):
            parser.feed_eof()


def test_informational_heads_are_skipped() -> None:
    """103 Early Hints before the real head is not the response."""
    parser = ResponseParser()
    body = parser.feed(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + CHUNKED)
    assert body == SSE
    assert parser.head is not None and parser.head.status == 200


def test_head_fields() -> None:
    """Status, reason, lowercased names, repeated headers joined, keep-alive by version."""
    head = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nX-A: 1\r\nx-a: 2")
    assert (head.status, head.reason, head.keep_alive) == (429, "Too Many Requests", True)
    assert head.headers == {"retry-after": "2", "x-a": "1, 2"}
    assert not parse_head(b"HTTP/1.1 200 OK\r\nConnection: close").keep_alive
    assert not parse_head(b"HTTP/1.0 200 OK").keep_alive
    assert parse_head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive").keep_alive
    assert parse_head(b"HTTP/1.1 503").reason == "Service Unavailable"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n bad: folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
    ],
)
def test_broken_framing_is_a_protocol_error(response: bytes) -> None:
    """A bad status line, header, length, coding, chunk size or chunk end is refused."""
    parser = ResponseParser()

    def feed_twice() -> None:
        parser.feed(response)
        parser.feed(b"")  # when body came before the break, the break is raised next

    with pytest.raises(ProtocolError):
        feed_twice()


def test_body_before_broken_framing_is_kept() -> None:
    """The body bytes ahead of a framing error in the same read are returned, then the error."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY") == b"ab"
    assert parser.error is not None
    with pytest.raises(ProtocolError, match="CRLF"):
        parser.feed(b"more")


def test_an_endless_head_is_refused() -> None:
    """A head over 64 KiB is refused, not buffered further."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    line = b"x-filler: " + b"a" * 990 + b"\r\n"
    for _ in range(MAX_HEAD_BYTES // len(line)):
        parser.feed(line)
    with pytest.raises(ProtocolError, match="head is over"):
        parser.feed(line)


def test_an_endless_chunk_size_line_is_refused() -> None:
    """A chunk-size line over 4 KiB without its CRLF is refused."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError, match="line is over"):
        parser.feed(b"1" + b";" * MAX_LINE_BYTES)


def test_a_long_chunk_is_passed_on_as_it_arrives() -> None:
    """The middle of a big chunk is returned per feed, not held until the chunk ends."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n100000\r\n")
    assert parser.feed(b"a" * 1000) == b"a" * 1000
    assert parser.feed(b"b" * 1000) == b"b" * 1000


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress], ids=["gzip", "deflate"])
def test_a_compressed_body_is_decompressed(compress: object) -> None:
    """content-encoding gzip or deflate (the SDK's accept-encoding) is undone, split anywhere."""
    assert callable(compress)
    packed: bytes = compress(SSE)
    coding = b"gzip" if packed[:2] == b"\x1f\x8b" else b"deflate"
    response = b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        coding,
        len(packed),
        packed,
    )
    for cut in range(len(response) + 1):
        assert read(ResponseParser(), response[:cut], response[cut:]) == SSE


def test_no_body_statuses() -> None:
    """204 and 304 have no body, whatever their headers say."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n")
    assert parser.complete and parser.reusable


def test_request_bytes() -> None:
    """A request is its line, the headers as given, then content-length and the body."""
    prefix = request_prefix("POST", "/v1/chat/completions", [(b"Host", b"h:1"), (b"a", b"b")])
    assert with_length(prefix, b"{}") == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h:1\r\na: b\r\ncontent-length: 2\r\n\r\n{}"
    )


@pytest.mark.parametrize(
    "chunk",
    [
        b"5\r\nhello\r\n",
        b"5;ext=1\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"0005\r\nhello\r\n",
        b"A\r\nhello hell\r\n",
        b"5\r\nhello\r\n3\r\nabc\r\n",
        b"5\r\nhel",
        b"0\r\n\r\n",
    ],
)
def test_a_read_of_one_whole_chunk_parses_as_a_split_one(chunk: bytes) -> None:
    """A read holding just one chunk (the common read, taken without the general loop)
    gives the body and state the same bytes give fed one at a time."""
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    whole, split = ResponseParser(), ResponseParser()
    whole.feed(head)
    split.feed(head)
    assert whole.feed(chunk) == read(split, *(chunk[i : i + 1] for i in range(len(chunk))))
    assert whole.complete == split.complete
    assert read(whole, b"0\r\n\r\n") == read(split, b"0\r\n\r\n")
