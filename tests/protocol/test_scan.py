"""Bounded decoding: any message within frame_bytes is refused or decoded in bounded work."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npc_server.protocol.codec import (
    MAX_DEPTH,
    FrameError,
    decode_client_frame,
    max_containers,
)
from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.protocol.connection import CloseConnection, SendError, ServerConnection
from npc_server.protocol.frames import Limits, Ping
from npc_server.protocol.scan import ScanError, ScanReport, scan

FRAME_BYTES = Limits().frame_bytes
# Decoded Python objects cost more than their msgpack: a 3-byte string is a
# 50-byte object, a map entry a key object and a slot in a growing table.
# Measured worst: ~44x (a map of unique two-letter keys). Before the scan one
# 16 KiB message peaked at 82 MB, 5000x.
MEMORY_PER_BYTE = 64
MEMORY_SLACK = 32 * 1024
# The message: 16 KiB of nested array16 headers, each claiming 16383 elements.
ATTACK = b"\xdc\x3f\xff" * (FRAME_BYTES // 3)
PING_PREFIX = b"\x82\xa1t\xa4ping\xa2ts"  # {"t": "ping", "ts": <what follows>}


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def peak_bytes(call: Callable[[], object]) -> int:
    """The traced memory peak while `call` runs, above what was in use before: the lower
    of two runs. msgpack interns map keys, and new keys may grow the interpreter's table
    of interned strings (1.9 MB once, seen when the e2e tests were imported too): an
    allocation of the process, made once, not one of the message."""
    return min(_peak_once(call), _peak_once(call))


def _peak_once(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def decode_or_refuse(data: bytes) -> ErrorCode | None:
    """Decode; the error code it was refused with, or None."""
    try:
        decode_client_frame(data)
    except FrameError as exc:
        return exc.code
    return None


def scan_default(data: bytes) -> ScanReport:
    return scan(data, max_depth=MAX_DEPTH, max_containers=max_containers(FRAME_BYTES))


@pytest.mark.parametrize(
    "header",
    [b"\xdc\x3f\xff", b"\xdd\x00\x00\x3f\xff", b"\xde\x1f\xff", b"\xdf\x00\x00\x1f\xff"],
)
def test_nested_headers_claiming_large_lengths_are_refused_cheaply(header: bytes) -> None:
    """The issue's attack (and its map and 32-bit forms) is a bad_frame at once, in kilobytes."""
    data = header * (FRAME_BYTES // len(header))
    with pytest.raises(ScanError) as info:
        scan_default(data)
    assert info.value.offset <= len(header)  # refused at the first header
    assert peak_bytes(lambda: decode_or_refuse(data)) < MEMORY_SLACK
    with pytest.raises(FrameError) as refused:
        decode_client_frame(data)
    assert refused.value.code is ErrorCode.BAD_FRAME


def test_the_attack_closes_before_hello_and_errors_after() -> None:
    """Before hello the attack closes 4500; after it it gets a bad_frame error, both cheaply."""
    fresh = ServerConnection(Limits(), lambda: 0.0)
    [close] = fresh.receive(ATTACK)
    assert isinstance(close, CloseConnection) and close.code is CloseCode.AUTH_FAILED
    opened = ServerConnection(Limits(), lambda: 0.0)
    opened.receive(pack({"t": "hello", "token": "x"}))
    opened.accept_hello()
    [error] = opened.receive(ATTACK)
    assert isinstance(error, SendError) and error.frame.code == ErrorCode.BAD_FRAME
    assert peak_bytes(lambda: ServerConnection(Limits(), lambda: 0.0).receive(ATTACK)) < 64 * 1024


def test_nesting_is_bounded() -> None:
    """MAX_DEPTH nested arrays decode; one more is a bad_frame naming the bound."""

    def ping(depth: int) -> bytes:
        return PING_PREFIX + b"\x91" * depth + b"\xc0"

    frame = decode_client_frame(ping(MAX_DEPTH - 1))
    assert isinstance(frame, Ping)
    with pytest.raises(FrameError) as info:
        decode_client_frame(ping(MAX_DEPTH))
    assert (
        info.value.code is ErrorCode.BAD_FRAME and f"deeper than {MAX_DEPTH}" in info.value.message
    )


def test_containers_are_bounded_by_the_frame_size() -> None:
    """A message may hold one array or map per 16 bytes of frame_bytes, no more."""
    limit = max_containers(FRAME_BYTES)
    assert limit == FRAME_BYTES // 16
    decode_client_frame(pack({"t": "ping", "ts": [[]] * (limit - 2)}))
    with pytest.raises(FrameError) as info:
        decode_client_frame(pack({"t": "ping", "ts": [[]] * limit}))
    assert f"more than {limit} arrays and maps" in info.value.message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "truncated"),
        (b"\x81\xa1t", "truncated"),
        (pack({"t": "ping"}) + b"\x00", "trailing"),
        (b"\xc1", "0xc1"),
        (b"\xdb\xff\xff\xff\xff", "truncated"),
    ],
)
def test_malformed_bytes_are_named(data: bytes, words: str) -> None:
    """Truncated, trailing and never-used bytes are refused with what was wrong."""
    with pytest.raises(ScanError, match=words):
        scan_default(data)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_scan_agrees_with_msgpack(value: Any) -> None:
    """Whatever msgpack packs scans as one value with the same count of values."""
    data = pack(value)
    report = scan(data, max_depth=10**6, max_containers=10**6)
    assert report.values == _count(value)


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(1 + _count(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count(v) for v in value)
    return 1


# Pieces an attacker strings together: headers of every kind claiming any length,
# scalars, and raw bytes; repeated to nest or to fill the frame.
lengths = st.sampled_from([0, 1, 15, 255, 4096, 16383, 65535, 2**32 - 1])
headers = st.one_of(
    st.integers(0x80, 0x9F).map(lambda b: bytes([b])),
    st.builds(lambda n: b"\xdc" + (n % 65536).to_bytes(2, "big"), lengths),
    st.builds(lambda n: b"\xdd" + n.to_bytes(4, "big"), lengths),
    st.builds(lambda n: b"\xde" + (n % 65536).to_bytes(2, "big"), lengths),
    st.builds(lambda n: b"\xdf" + n.to_bytes(4, "big"), lengths),
    st.builds(lambda n: b"\xdb" + n.to_bytes(4, "big"), lengths),
    st.builds(lambda n: b"\xc6" + n.to_bytes(4, "big"), lengths),
    st.builds(lambda n: b"\xc9" + n.to_bytes(4, "big") + b"\x01", lengths),
)
pieces = st.one_of(headers, values.map(pack), st.binary(max_size=16))
runs = st.tuples(pieces, st.integers(1, 6000)).map(lambda run: run[0] * run[1])
garbage = st.builds(
    lambda prefix, parts: (prefix + b"".join(parts))[:FRAME_BYTES],
    st.sampled_from([b"", PING_PREFIX]),
    st.lists(runs, min_size=1, max_size=6),
)


def _filled(value: Any, count: int, unique_keys: bool) -> bytes:
    """A valid ping whose ts holds up to `count` copies of `value`, within frame_bytes."""
    count = min(count, (FRAME_BYTES - 64) // (len(pack(value)) + (6 if unique_keys else 0)))
    ts = {f"{i:x}": value for i in range(count)} if unique_keys else [value] * count
    return pack({"t": "ping", "ts": ts})


# Valid messages that decode: many small values are what costs most once decoded.
filled = st.builds(_filled, values, st.integers(1, 16384), st.booleans())
messages = st.one_of(garbage, filled)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(messages)
def test_decoding_work_per_byte_is_bounded(data: bytes) -> None:
    """Any message within frame_bytes: memory a small multiple of its size, steps at most 2n."""
    try:
        report: ScanReport | None = scan_default(data)
    except ScanError as exc:
        report, refused_at = None, exc.offset
    if report is None:
        assert refused_at <= len(data)
    else:
        assert report.values <= len(data)  # every value takes a byte at least
        assert report.containers <= max_containers(FRAME_BYTES)
        assert report.steps <= 2 * len(data)
    codes: list[ErrorCode | None] = []
    peak = peak_bytes(lambda: codes.append(decode_or_refuse(data)))
    assert codes[0] in (None, ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_TYPE)
    assert peak <= MEMORY_PER_BYTE * len(data) + MEMORY_SLACK, (len(data), peak)
