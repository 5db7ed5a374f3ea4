"""The SSE decoder: event data out of body bytes, however the bytes are split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npc_server.backends.sse import EventTooLarge, SSEDecoder

# Every framing feature in one body: BOM, comments, CRLF, lone CR, multi-line
# data, fields that are ignored, a data line without the space, an empty data
# field, an event without data, and [DONE].
BODY = (
    b'\xef\xbb\xbfdata: {"a": 1}\r\n\r\n'
    b": keep-alive\r\n"
    b'data:{"b": 2}\n\n'
    b"event: message\nid: 7\nretry: 100\n"
    b'data: {"c":\ndata:  3}\n\n'
    b"event: ping\n\n"
    b": comment\r"
    b'data: {"d": 4}\r\r'
    b"data\n\n"
    b'data: {"e":\r\ndata: 5}\r\n\r\n'
    b"unknown: field\n"
    b"data: [DONE]\n\n"
    b"data: never ended\n"
)
EVENTS = [b'{"a": 1}', b'{"b": 2}', b'{"c":\n 3}', b'{"d": 4}', b"", b'{"e":\n5}', b"[DONE]"]


def decode(parts: list[bytes]) -> list[bytes]:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for part in parts:
        events += decoder.feed(part)
    return events


def test_whole_body_gives_every_event_in_order() -> None:
    """All framings decode to the data of each dispatched event; an unfinished event is not."""
    assert decode([BODY]) == EVENTS


@pytest.mark.parametrize("cut", range(len(BODY) + 1))
def test_a_split_at_any_position_gives_the_same_events(cut: int) -> None:
    """Two reads split anywhere (inside CRLF, the BOM, a field name) decode alike."""
    assert decode([BODY[:cut], BODY[cut:]]) == EVENTS


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    """Reads of a single byte each decode alike."""
    assert decode([BODY[i : i + 1] for i in range(len(BODY))]) == EVENTS


@given(st.lists(st.integers(0, len(BODY)), max_size=12))
def test_any_partition_gives_the_same_events(cuts: list[int]) -> None:
    """Any number of reads, of any sizes (empty ones too), decode alike."""
    points = [0, *sorted(cuts), len(BODY)]
    assert decode([BODY[a:b] for a, b in itertools.pairwise(points)]) == EVENTS


def test_events_complete_as_soon_as_their_blank_line_arrives() -> None:
    """An event is returned by the read that ends it, not held back for the next one."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n") == []
    assert decoder.feed(b"\n") == [b"x"]
    assert decoder.feed(b"data: y\r\n\r") == [b"y"]
    assert decoder.feed(b"\ndata: z\n\n") == [b"z"]  # that LF paired with the CR


def test_a_line_over_the_limit_is_refused() -> None:
    """A line that never ends stops growing the buffer at the limit."""
    decoder = SSEDecoder(max_event_bytes=64)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 50)


def test_an_event_over_the_limit_is_refused() -> None:
    """Many data lines without a blank line are refused once they pass the limit."""
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_an_empty_read_between_cr_and_lf_keeps_them_one_line_end() -> None:
    """CR, then an empty read, then LF: one line end, not an extra blank line (found by fuzzing)."""
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"e":\r') == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: 5}\r\n") == []
    assert decoder.feed(b"\r\n") == [b'{"e":\n5}']


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"x": 1}\n\n',
        b"data: \n\n",
        b"data: [DONE]\n\n",
        b'data:{"x": 1}\n\n',
        b'data: {"x": 1}\r\n\r\n',
        b'data: {"x":\ndata: 1}\n\n',
        b'data: {"x": 1}\n',
        b": ping\n\n",
        b'data: {"x": 1}\n\ndata: {"y": 2}\n\n',
    ],
)
def test_a_read_of_one_whole_event_decodes_as_a_split_one(event: bytes) -> None:
    """A read holding just one event (the common read, decoded without splitting lines)
    gives what the same bytes give in two reads, after a first event and alone."""
    first = b'data: {"first": true}\n\n'
    whole = decode([first, event])
    assert whole == decode([first, event[:1], event[1:]]) == decode([first + event])
    assert whole[0] == b'{"first": true}'


@pytest.mark.parametrize(
    "events",
    [
        b'data: {"x": 1}\n\ndata: {"y": 2}\n\ndata: [DONE]\n\n',
        b"data: \n\ndata: \n\n",
        b"data: data: x\n\ndata: y\n\n",
        b"data:  two spaces\n\ndata: z\n\n",
        b"data: a\n\n\ndata: b\n\n",
        b"data: a\n\n\n\ndata: b\n\n",
        b"data: a\n\ndata: b\ndata: c\n\n",
        b"data: a\n\ndata:b\n\n",
        b"data: a\n\n: ping\n\ndata: b\n\n",
        b"data: a\n\ndata: b\n\ndata: c\n",
        b"data: a\n\ndata: b\r\n\r\n",
    ],
)
def test_a_read_of_several_events_decodes_as_a_split_one(events: bytes) -> None:
    """A read holding several events (a busy server's backlog, decoded without splitting
    lines when each is one `data: ` line) gives what the same bytes give one at a time."""
    first = b'data: {"first": true}\n\n'
    whole = decode([first, events])
    assert whole == decode([first, *(events[i : i + 1] for i in range(len(events)))])
    assert whole == decode([first + events])


def test_several_one_line_events_keep_the_decoder_between_events() -> None:
    """After a read of several whole events, an event split over reads still decodes."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 0\n\n") == [b"0"]
    assert decoder.feed(b"data: 1\n\ndata: 2\n\n") == [b"1", b"2"]
    assert decoder.feed(b"data: 3\n") == []
    assert decoder.feed(b"\ndata: 4\n\n") == [b"3", b"4"]
