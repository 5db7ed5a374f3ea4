"""What nodes send each other: another node's bytes are validated as a client's are."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from npc_server.brokers import wire
from npc_server.protocol.frames import Delta, Members, TurnEnd, TurnStart
from tests.support.alloc import length_claims, peak_allocation

SAMPLES: list[Any] = [
    *(None, "", "x", 0, 7, -1, True, False, 1.5, {}, {"a": 1}, {"a": "b"}, [], b"x"),
    *(["a", "b"], ["a", 1]),
]


def test_each_fields_fast_check_agrees_with_the_full_one() -> None:
    """The per-field checks made once at import answer as `_fits` does, for every field of
    every server frame and values of every msgpack type."""
    for cls, hints in wire._HINTS.items():
        for name, hint in hints.items():
            check = wire._CHECKS[cls][name]
            for value in SAMPLES:
                assert check(value) == wire._fits(value, hint), (cls.T, name, value)


@pytest.mark.parametrize(
    "frame",
    [
        Delta("t-a-1", "hello", 3),
        TurnStart("t-a-1", "guard", "alice", None),
        Members("inn", ["alice", "bob"], True),  # a list field (a handed-over queue has one)
    ],
)
def test_a_frame_survives_the_trip_between_nodes(frame: Any) -> None:
    """Encoded by one node and decoded by another, a frame is the same frame."""
    publication = wire.decode(wire.encode_frame("node-a", frame, "bob", 12))
    assert (publication.origin, publication.exclude, publication.number) == ("node-a", "bob", 12)
    assert publication.frame == frame


def envelope(body: Any, version: int = wire.VERSION) -> bytes:
    data: bytes = msgpack.packb([version, "node-a", 1, "f", None, body])
    return data


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"t": "delta", "turn": "t1", "text": "x", "at": "0"}, "delta.at"),
        ({"t": "delta", "turn": None, "text": "x", "at": 0}, "delta.turn"),
        ({"t": "delta", "turn": "t1", "text": "x", "at": True}, "delta.at"),
        ({"t": "delta", "turn": "t1", "text": "x", "at": 0, "evil": 1}, "unknown keys"),
        ({"t": "delta", "turn": "t1", "text": "x"}, "delta"),
        ({"t": "no-such", "turn": "t1"}, "unknown frame type"),
        ({"t": "members", "room": "inn", "members": ["a", 1]}, "members.members"),
    ],
)
def test_a_frame_that_does_not_fit_is_refused_with_the_reason(body: Any, why: str) -> None:
    """Wrong types, unknown or missing keys and unknown frames raise WireError, naming it."""
    with pytest.raises(wire.WireError, match=why):
        wire.decode(envelope(body))


def test_another_version_is_refused() -> None:
    """A publication of wire version 2 (a node that does not announce interest) is refused."""
    body = wire.frame_body(TurnEnd("t1", "done", 1, 1))
    with pytest.raises(wire.WireError, match="version"):
        wire.decode(envelope(body, version=2))


def test_a_publication_of_nested_length_claims_is_refused_in_bounded_memory() -> None:
    """Bytes that claim more values than they hold are scanned before they are unpacked
    (publications over `SCAN_ABOVE`; below it what they can cost is small)."""
    with peak_allocation() as peak, pytest.raises(wire.WireError):
        wire.decode(length_claims(1000))
    assert peak.bytes < 2_000_000
    with peak_allocation() as small, pytest.raises(wire.WireError):
        wire.decode(length_claims(wire.SCAN_ABOVE // 5))
    assert small.bytes < 1_000_000
