"""Hypothesis-driven fuzzing of a live socket with malformed protocol frames.

Every generated probe is built so that its correct answer is known from
PROTOCOL.md alone: `error{code}` with the request's `id` when it had a valid
one, `pong`/`ack` for valid frames, close 1009 for a message over
`limits.frame_bytes`. A model of the connection tracks the bad-frame streak,
so the third `bad_frame` in a row must be followed by close 4501. One
connection is reused until the server closes it; each example starts with
the streak reset (a ping answered by pong).

`run_fuzz` is synchronous (Hypothesis drives it; it uses the blocking
`websockets` client) and is meant for a worker thread while the server runs
in the event loop.

The bounds on decoding work (docs/protocol.md, "Limits") are modelled too: a
message nesting deeper than 16 arrays and maps, or holding more than one per
16 bytes of `frame_bytes`, is a `bad_frame` before its `id` is read.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import msgpack
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Limits

KNOWN_TYPES = frozenset(
    {"hello", "say", "interrupt", "seen", "typing", "context"}
    | {"act", "join", "leave", "ping", "pong", "refresh"}
)
BAD_FRAMES_BEFORE_CLOSE = 3
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_TOKEN_CHARS = 4096
MAX_CONTEXT_KEYS = 64
MAX_CONTEXT_DEPTH = 4
MAX_DEPTH = 16
REPLY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Expect:
    """The answer PROTOCOL.md requires for one message."""

    kind: str  # "error", "pong", "ack" or "close"
    code: str | int | None = None  # error code or close code
    id: Any = None  # the request id the answer must carry (None: no id)
    ts: Any = None  # pong: the ts it must echo


@dataclass(frozen=True, slots=True)
class Probe:
    label: str
    data: bytes | str
    expect: Expect


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """Decode as the server does (msgpack errors propagate)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


def size_of(data: bytes | str) -> int:
    return len(data.encode() if isinstance(data, str) else data)


def bad(label: str, data: bytes | str, request_id: Any = None) -> Probe:
    return Probe(label, data, Expect("error", "bad_frame", request_id))


def shape(value: Any) -> tuple[int, int]:
    """(how deep arrays and maps nest, how many there are) in a decoded value."""
    deepest = count = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            count += 1
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in _children(item))
    return deepest, count


def _children(item: dict[Any, Any] | list[Any]) -> Any:
    return item.values() if isinstance(item, dict) else item


# --- values ---------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=25,
)
valid_ids = st.one_of(ints, st.text(max_size=MAX_ID_CHARS))
invalid_ids = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
    st.text(min_size=MAX_ID_CHARS + 1, max_size=MAX_ID_CHARS + 40),
)
# Values that are not strings; None only where a key is required (None = absent).
not_strings = st.one_of(
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
unknown_types = st.text(min_size=1, max_size=60).filter(lambda t: t not in KNOWN_TYPES)
names = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20)
room_chars = string.ascii_letters + string.digits + "-_.:"
unsafe_rooms = st.one_of(
    st.just(""),
    st.text(alphabet=room_chars, min_size=65, max_size=100),
    st.builds(
        lambda head, bad_char, tail: head + bad_char + tail,
        st.text(alphabet=room_chars, max_size=10),
        st.characters(exclude_characters=room_chars),
        st.text(alphabet=room_chars, max_size=10),
    ),
)


def long_text(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: "x" * n)


# --- probes ---------------------------------------------------------------


def _non_map() -> st.SearchStrategy[Probe]:
    return values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: bad("non-map value", pack(v))
    )


def _bad_keys() -> st.SearchStrategy[Probe]:
    keys = st.one_of(st.integers(-5, 5), st.binary(min_size=1, max_size=4))
    return st.builds(
        # Refused with the frame's id (docs/protocol.md, "Map keys are strings").
        lambda key, value: bad("non-string key", pack({"t": "ping", "id": 1, key: value}), 1),
        keys,
        scalars,
    )


def _bad_t() -> st.SearchStrategy[Probe]:
    t_values = st.one_of(st.just(None), not_strings)
    return st.builds(
        lambda t, extra: bad("t not a string", pack({**extra, "t": t})),
        t_values,
        st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    )


def _missing_t() -> st.SearchStrategy[Probe]:
    docs = st.dictionaries(st.text(max_size=5).filter(lambda k: k != "t"), scalars, max_size=4)
    return docs.map(lambda doc: bad("no t", pack(doc)))


def _bad_id() -> st.SearchStrategy[Probe]:
    t_values = st.one_of(st.sampled_from(sorted(KNOWN_TYPES)), unknown_types)
    return st.builds(
        lambda t, request_id: bad("invalid id", pack({"t": t, "id": request_id})),
        t_values,
        invalid_ids,
    )


def _unknown_type() -> st.SearchStrategy[Probe]:
    def build(t: str, request_id: Any, extra: dict[str, Any]) -> Probe:
        doc = {**extra, "t": t}
        if request_id is not None:
            doc["id"] = request_id
        else:
            doc.pop("id", None)
        return Probe("unknown type", pack(doc), Expect("error", "unknown_type", request_id))

    return st.builds(
        build,
        unknown_types,
        st.one_of(st.none(), valid_ids),
        st.dictionaries(st.text(max_size=5), values, max_size=3),
    )


def _not_dict(value: Any) -> bool:
    return not isinstance(value, dict)


# For each known type: a valid body, and ways to break one key (None removes it).
WRONG: dict[str, tuple[dict[str, Any], dict[str, st.SearchStrategy[Any]]]] = {
    "say": (
        {"npc": "merchant", "text": "hi"},
        {
            "npc": st.one_of(st.none(), not_strings, st.just(""), long_text(129, 300)),
            "text": st.one_of(st.none(), not_strings, st.just("")),
            "room": st.one_of(not_strings, unsafe_rooms),
        },
    ),
    "interrupt": (
        {},
        {
            "turn": not_strings,
            "shown": st.one_of(
                st.integers(max_value=-1), st.booleans(), st.text(max_size=3), st.floats()
            ),
        },
    ),
    "seen": (
        {"turn": "t-1", "shown": 1},
        {
            "turn": st.one_of(st.none(), not_strings, st.just("")),
            "shown": st.one_of(st.none(), st.integers(max_value=-1), st.booleans()),
        },
    ),
    "typing": (
        {"on": True},
        {
            "on": st.one_of(st.none(), st.integers(0, 1), st.text(max_size=3)),
            "room": st.one_of(not_strings, unsafe_rooms),
        },
    ),
    "context": ({"data": {}}, {"data": st.one_of(st.none(), not_strings.filter(_not_dict))}),
    "act": (
        {"action": "a-1", "accept": True},
        {
            "action": st.one_of(st.none(), not_strings, st.just("")),
            "accept": st.one_of(st.none(), st.integers(0, 1), st.text(max_size=3)),
        },
    ),
    "join": ({"room": "hall"}, {"room": st.one_of(st.none(), not_strings, unsafe_rooms)}),
    "leave": ({"room": "hall"}, {"room": st.one_of(st.none(), not_strings, unsafe_rooms)}),
    "refresh": (
        {"token": "x"},
        {"token": st.one_of(st.none(), not_strings, long_text(4097, 4200))},
    ),
}
NEEDS_ID = frozenset(("say", "act", "join", "leave", "refresh"))


def _wrong_field() -> st.SearchStrategy[Probe]:
    @st.composite
    def build(draw: st.DrawFn) -> Probe:
        t = draw(st.sampled_from(sorted(WRONG)))
        body, breakers = WRONG[t]
        key = draw(st.sampled_from(sorted(breakers)))
        value = draw(breakers[key])
        doc = {"t": t, **body, "id": draw(valid_ids)}
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
        return bad(f"{t}.{key} wrong", pack(doc), doc["id"])

    return build()


def _missing_id() -> st.SearchStrategy[Probe]:
    return st.sampled_from(sorted(NEEDS_ID)).map(
        lambda t: bad(f"{t} without id", pack({"t": t, **WRONG[t][0]}))
    )


def _hello_again() -> st.SearchStrategy[Probe]:
    def build(token: Any, request_id: Any) -> Probe:
        doc: dict[str, Any] = {"t": "hello", "token": token}
        if request_id is not None:
            doc["id"] = request_id
        return bad("hello twice", pack(doc), request_id)

    return st.builds(build, st.one_of(st.text(max_size=50), not_strings), valid_ids | st.none())


def _too_long(limits: Limits) -> st.SearchStrategy[Probe]:
    def build(text: str, request_id: Any, npc: str) -> Probe:
        doc = {"t": "say", "id": request_id, "npc": npc, "text": text}
        return Probe("say too long", pack(doc), Expect("error", "too_long", request_id))

    chars = limits.text_chars
    return st.builds(build, long_text(chars + 1, chars + 3000), valid_ids, names)


def _too_many_context_keys() -> st.SearchStrategy[Probe]:
    def build(count: int, request_id: Any) -> Probe:
        data = {f"k{i}": i for i in range(count)}
        doc = {"t": "context", "id": request_id, "data": data}
        return Probe("context keys", pack(doc), Expect("error", "too_long", request_id))

    return st.builds(build, st.integers(MAX_CONTEXT_KEYS + 1, MAX_CONTEXT_KEYS + 400), valid_ids)


def _ping_doc(ts: Any, request_id: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"t": "ping", "ts": ts}
    if request_id is not None:
        doc["id"] = request_id
    return doc


def _ping(label: str, ts: Any, request_id: Any, extra: Mapping[str, Any] | None = None) -> Probe:
    data = pack({**(extra or {}), **_ping_doc(ts, request_id)})
    return Probe(label, data, Expect("pong", None, request_id, unpack(pack(ts))))


def _valid_ping() -> st.SearchStrategy[Probe]:
    return st.builds(
        lambda ts, request_id, extra: _ping("ping", ts, request_id, extra),
        values,
        st.none() | valid_ids,
        st.dictionaries(st.text(max_size=6).filter(lambda k: k not in ("t", "id", "ts")), values),
    )


def _huge_ping() -> st.SearchStrategy[Probe]:
    big_string = st.integers(1000, 20_000).map(lambda n: "y" * n)
    big_list = st.integers(100, 6000).map(lambda n: list(range(n)))
    many_keys = st.integers(100, 3000).map(lambda n: {f"k{i}": i for i in range(n)})

    def with_keys(keys: dict[str, int], request_id: Any) -> Probe:
        return _ping("ping, huge map", None, request_id, keys)

    return st.one_of(
        st.builds(lambda ts, i: _ping("ping, huge ts", ts, i), big_string | big_list, valid_ids),
        st.builds(with_keys, many_keys, valid_ids),
    )


def _deep_ping() -> st.SearchStrategy[Probe]:
    def build(depth: int, request_id: int) -> Probe:
        head = pack({"t": "ping", "id": request_id})
        # Add a third key, "ts", holding `depth` nested one-element arrays around nil.
        data = bytes([head[0] + 1]) + head[1:] + pack("ts") + b"\x91" * depth + b"\xc0"
        label = f"nesting {depth} deep"
        if 1 + depth > MAX_DEPTH:  # the frame's map is the first level
            return bad(label, data)
        return Probe(label, data, Expect("pong", None, request_id, unpack(data)["ts"]))

    edges = st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 1023, 1024, 1025])
    depths = st.one_of(st.integers(1, 2048), edges)
    return st.builds(build, depths, st.integers(0, 1000))


def _nested_headers(limits: Limits) -> st.SearchStrategy[Probe]:
    """The issue's attack: headers that each claim many values, nested to fill the frame."""
    headers = st.sampled_from(
        [b"\xdc\x3f\xff", b"\xdd\x00\x00\x3f\xff", b"\xde\x1f\xff", b"\xdf\x00\x00\x1f\xff"]
    )

    def build(header: bytes, fill: float) -> Probe:
        count = max(1, int(limits.frame_bytes * fill) // len(header))
        return bad("nested length claims", header * count)

    return st.builds(build, headers, st.floats(0.0, 1.0))


def _context_probe(data: dict[str, Any], request_id: Any, limits: Limits) -> Probe:
    doc = {"t": "context", "id": request_id, "data": data}
    if shape(data)[0] > MAX_CONTEXT_DEPTH:
        return bad("context too deep", pack(doc), request_id)
    if len(pack(data)) > limits.context_bytes:
        return Probe("context too big", pack(doc), Expect("error", "too_long", request_id))
    return Probe("context", pack(doc), Expect("ack", None, request_id))


def _valid_context() -> st.SearchStrategy[Probe]:
    """A context within its bounds (with the default limits), or the error that names one."""
    data = st.dictionaries(st.text(max_size=12), values, max_size=MAX_CONTEXT_KEYS)
    return st.builds(_context_probe, data, valid_ids, st.just(Limits()))


def _heavy_context(limits: Limits) -> st.SearchStrategy[Probe]:
    """Contexts at their bounds: deep nests of empty arrays, long strings."""

    def deep(depth: int) -> dict[str, Any]:
        value: Any = []
        for _ in range(depth - 2):
            value = [value]
        return {"k": value}

    big = st.integers(limits.context_bytes - 64, limits.context_bytes + 64).map(
        lambda n: {"text": "x" * n}
    )
    nests = st.integers(2, 40).map(deep)
    return st.builds(_context_probe, nests | big, valid_ids, st.just(limits))


def _truncated() -> st.SearchStrategy[Probe]:
    @st.composite
    def build(draw: st.DrawFn) -> Probe:
        probe = draw(st.one_of(_valid_ping(), _valid_context(), _unknown_type()))
        assert isinstance(probe.data, bytes)
        cut = draw(st.integers(0, len(probe.data) - 1))
        return bad("truncated", probe.data[:cut])

    return build()


def _trailing() -> st.SearchStrategy[Probe]:
    @st.composite
    def build(draw: st.DrawFn) -> Probe:
        probe = draw(st.one_of(_valid_ping(), _valid_context()))
        assert isinstance(probe.data, bytes)
        return bad("trailing bytes", probe.data + draw(st.binary(min_size=1, max_size=16)))

    return build()


def _decodes_to_map(data: bytes) -> bool:
    try:
        return isinstance(unpack(data), dict)
    except Exception:
        return False


def _garbage() -> st.SearchStrategy[Probe]:
    blobs = st.binary(max_size=64).filter(lambda b: not _decodes_to_map(b))
    return blobs.map(lambda b: bad("garbage", b))


def _text_message() -> st.SearchStrategy[Probe]:
    return st.text(max_size=300).map(lambda text: bad("text message", text))


def _oversized(limits: Limits) -> st.SearchStrategy[Probe]:
    def build(extra: int, as_text: bool) -> Probe:
        filler = "z" * (limits.frame_bytes + extra)
        data: bytes | str = filler if as_text else pack({"t": "ping", "id": 1, "ts": filler})
        return Probe("oversized", data, Expect("close", int(CloseCode.MESSAGE_TOO_BIG)))

    return st.builds(build, st.integers(1, 8192), st.booleans())


def probes(limits: Limits) -> st.SearchStrategy[Probe]:
    """Any probe; a message over `frame_bytes` is expected to close with 1009."""
    return st.one_of(
        _non_map(),
        _bad_keys(),
        _bad_t(),
        _missing_t(),
        _bad_id(),
        _unknown_type(),
        _wrong_field(),
        _missing_id(),
        _hello_again(),
        _too_long(limits),
        _too_many_context_keys(),
        _valid_ping(),
        _huge_ping(),
        _deep_ping(),
        _nested_headers(limits),
        _valid_context(),
        _heavy_context(limits),
        _truncated(),
        _trailing(),
        _garbage(),
        _text_message(),
        _oversized(limits),
        st.just(bad("empty message", b"")),
    ).map(lambda probe: _size_checked(probe, limits))


def _size_checked(probe: Probe, limits: Limits) -> Probe:
    if size_of(probe.data) > limits.frame_bytes:
        return Probe(probe.label, probe.data, Expect("close", int(CloseCode.MESSAGE_TOO_BIG)))
    if isinstance(probe.data, bytes) and _over_the_bounds(probe.data, limits):
        return bad(probe.label, probe.data)  # refused before its id is read
    return probe


def _over_the_bounds(data: bytes, limits: Limits) -> bool:
    try:
        depth, containers = shape(unpack(data))
    except Exception:
        return False  # not one msgpack value: already a bad_frame
    return depth > MAX_DEPTH or containers > max(16, limits.frame_bytes // 16)


def exact_size_ping(frame_bytes: int) -> bytes:
    """A valid ping of exactly `frame_bytes` bytes (the largest message allowed)."""
    pad = frame_bytes
    for _ in range(8):  # converges in two or three steps (string header sizes)
        data = pack({"t": "ping", "id": "edge", "ts": "p" * pad})
        if len(data) == frame_bytes:
            return data
        pad -= len(data) - frame_bytes
    raise AssertionError(f"no ping of exactly {frame_bytes} bytes")


# --- the live link ----------------------------------------------------------


@dataclass
class FuzzStats:
    probes: int = 0
    examples: int = 0
    connections: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)


class Link:
    """One live connection and the model of its bad-frame streak."""

    def __init__(self, url: str, token: Callable[[], str], stats: FuzzStats) -> None:
        self.url = url
        self.token = token
        self.stats = stats
        self.ws: ClientConnection | None = None
        self._stack = ExitStack()
        self.streak = 0

    def ensure(self) -> ClientConnection:
        """An open, authenticated connection (a new one if the server closed the last)."""
        if self.ws is None:
            self._stack = ExitStack()
            self.ws = self._stack.enter_context(
                sync_connect(
                    self.url,
                    compression=None,
                    max_size=2**22,
                    ping_interval=None,
                    proxy=None,
                    open_timeout=REPLY_TIMEOUT,
                )
            )
            self.stats.connections += 1
            self.ws.send(pack({"t": "hello", "token": self.token()}))
            welcome = self._next()
            assert welcome["t"] == "welcome", welcome
            self.streak = 0
        return self.ws

    def reset_streak(self) -> None:
        """Start an example with no bad frames counted: a valid ping ends any streak."""
        ws = self.ensure()
        if self.streak:
            ws.send(pack({"t": "ping", "id": "sync"}))
            assert self._next() == {"t": "pong", "id": "sync"}
            self.streak = 0

    def _next(self) -> dict[str, Any]:
        assert self.ws is not None
        data = self.ws.recv(timeout=REPLY_TIMEOUT)
        assert isinstance(data, bytes), f"text from the server: {data!r}"
        frame = msgpack.unpackb(data, raw=False)
        assert isinstance(frame, dict), frame
        frame.pop("seq", None)
        return frame

    def _closed_with(self) -> int | None:
        assert self.ws is not None
        try:
            extra = self._next()
        except websockets.ConnectionClosed:
            code = self.ws.close_code
            self.close()
            return code
        raise AssertionError(f"expected a close, got {extra}")

    def probe(self, probe: Probe) -> None:
        ws = self.ensure()
        self.stats.probes += 1
        self.stats.labels[probe.label] += 1
        expect = probe.expect
        ws.send(probe.data)
        if expect.kind == "close":
            code = self._closed_with()
            assert code is not None and code == expect.code, f"{probe.label}: closed {code}"
            self.stats.closes[code] += 1
            return
        try:
            frame = self._next()
        except websockets.ConnectionClosed as exc:
            raise AssertionError(f"{probe.label}: closed ({exc}) instead of {expect}") from None
        self.stats.answers[f"{frame['t']}:{frame.get('code', '')}"] += 1
        if expect.kind == "error":
            assert frame["t"] == "error", f"{probe.label}: {frame} instead of {expect}"
            assert frame["code"] == expect.code, f"{probe.label}: {frame} instead of {expect}"
            assert isinstance(frame["message"], str)
            assert frame.get("id") == expect.id, f"{probe.label}: id {frame.get('id')!r}"
        else:
            assert frame["t"] == expect.kind, f"{probe.label}: {frame} instead of {expect}"
            assert frame.get("id") == expect.id, f"{probe.label}: id {frame.get('id')!r}"
            if expect.kind == "pong":
                assert pack(frame.get("ts")) == pack(expect.ts), f"{probe.label}: ts differs"
        if expect.code == "bad_frame":
            self.streak += 1
            if self.streak >= BAD_FRAMES_BEFORE_CLOSE:
                code = self._closed_with()
                assert code == CloseCode.PROTOCOL_VIOLATION, f"3 bad frames, then {code}"
                self.stats.closes[code] += 1
                self.streak = 0
        else:
            self.streak = 0

    def close(self) -> None:
        self.ws = None
        self._stack.close()


def run_fuzz(
    url: str, token: Callable[[], str], limits: Limits, examples: int, *, derandomize: bool = False
) -> FuzzStats:
    """Send `examples` batches of 1-4 probes over one reused connection; check every answer."""
    stats = FuzzStats()
    link = Link(url, token, stats)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(probes(limits), min_size=1, max_size=4))
    def check(batch: list[Probe]) -> None:
        stats.examples += 1
        try:
            link.reset_streak()
            for probe in batch:
                link.probe(probe)
        except BaseException:
            link.close()  # the model no longer knows the connection's state
            raise

    try:
        check()
    finally:
        link.close()
    return stats
