"""Codec: client frames decode and validate from plain bytes; server frames encode."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npc_server.protocol.codec import FrameError, decode_client_frame, encode_server_frame
from npc_server.protocol.codes import CloseCode, ErrorCode, should_reconnect
from npc_server.protocol.frames import (
    Act,
    Context,
    Delta,
    Hello,
    Interrupt,
    Limits,
    Resume,
    Say,
    ServerPing,
    ToolResult,
    TurnEnd,
    Welcome,
)


def pack(frame: Any) -> bytes:
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


def refused(data: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_client_frame(data)
    return info.value


def test_say_decodes_to_dataclass() -> None:
    """A valid say becomes a Say with its id, npc, text and room."""
    frame = decode_client_frame(
        pack({"t": "say", "id": 7, "npc": "merchant", "text": "hi", "room": "inn"})
    )
    assert frame == Say(id=7, npc="merchant", text="hi", room="inn")


def test_hello_with_resume() -> None:
    """hello carries the token and an optional resume {session, seq}."""
    data = pack({"t": "hello", "token": "abc", "resume": {"session": "s-1", "seq": 4}})
    assert decode_client_frame(data) == Hello(token="abc", resume=Resume("s-1", 4))


def test_unknown_keys_are_ignored() -> None:
    """Keys the protocol does not define do not make a frame invalid."""
    frame = decode_client_frame(pack({"t": "interrupt", "x": [1, 2], "shown": 3}))
    assert frame == Interrupt(shown=3)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        pack([1, 2, 3]),
        pack("say"),
        pack(None),
        pack({1: "x"}),
        pack({"text": "no type"}),
        pack({"t": 5}),
        b"",
    ],
)
def test_garbage_is_bad_frame(data: bytes) -> None:
    """Malformed msgpack, non-maps and maps without a string t are bad_frame."""
    assert refused(data).code is ErrorCode.BAD_FRAME


def test_unknown_type_keeps_id() -> None:
    """An unknown t is unknown_type, answered with the frame's id."""
    error = refused(pack({"t": "dance", "id": "r1"}))
    assert (error.code, error.request_id) == (ErrorCode.UNKNOWN_TYPE, "r1")


@pytest.mark.parametrize(
    ("frame", "key"),
    [
        ({"t": "say", "id": 1, "npc": 3, "text": "hi"}, "npc"),
        ({"t": "say", "id": 1, "npc": "m", "text": b"bytes"}, "text"),
        ({"t": "seen", "turn": "t", "shown": -1}, "shown"),
        ({"t": "seen", "turn": "t", "shown": True}, "shown"),
        ({"t": "act", "id": 1, "action": "a", "accept": "yes"}, "accept"),
        ({"t": "context", "data": [1]}, "data"),
        ({"t": "hello", "token": "x", "resume": {"session": "s", "seq": "1"}}, "seq"),
    ],
)
def test_wrong_key_types_name_the_key(frame: dict[str, Any], key: str) -> None:
    """A key of the wrong type is bad_frame and the message names frame and key."""
    error = refused(pack(frame))
    assert error.code is ErrorCode.BAD_FRAME
    assert key in error.message


def test_say_needs_an_id() -> None:
    """say without id cannot be acknowledged, so it is refused."""
    assert "id" in refused(pack({"t": "say", "npc": "m", "text": "hi"})).message


def test_long_ids_and_names_are_refused() -> None:
    """Ids are short and names bounded, so huge strings never become keys."""
    assert refused(pack({"t": "ping", "id": "x" * 65})).code is ErrorCode.BAD_FRAME
    assert refused(pack({"t": "join", "id": 1, "room": "r" * 129})).code is ErrorCode.BAD_FRAME


def test_deep_nesting_is_not_a_crash() -> None:
    """Deeply nested context data is decoded or refused, never a crash."""
    data = pack({"t": "context", "data": {"k": 1}})[:-1]  # truncated valid frame
    assert refused(data).code is ErrorCode.BAD_FRAME
    deep = b"\x91" * 100_000 + b"\xc0"
    assert refused(deep).code is ErrorCode.BAD_FRAME


def test_act_and_context() -> None:
    """act and context decode with their types."""
    assert decode_client_frame(
        pack({"t": "act", "id": 2, "action": "a-1", "accept": False})
    ) == Act(2, "a-1", False)
    frame = decode_client_frame(
        pack({"t": "context", "data": {"location": "market"}, "npc": "guard"})
    )
    assert frame == Context(data={"location": "market"}, npc="guard")


def test_server_frames_encode_with_seq() -> None:
    """Server frames encode as one map with t, seq and their keys; None keys left out."""
    assert msgpack.unpackb(encode_server_frame(Delta("t-1", "Hi ", 0), 5)) == {
        "t": "delta",
        "seq": 5,
        "turn": "t-1",
        "text": "Hi ",
        "at": 0,
    }
    end = msgpack.unpackb(encode_server_frame(TurnEnd("t-1", "done", 3, 3), 6))
    assert "usage" not in end


def test_ping_and_welcome_carry_no_assigned_seq() -> None:
    """ping/pong and welcome are not sequenced frames."""
    assert not ServerPing.SEQ
    assert not Welcome.SEQ
    assert Delta.SEQ


def test_close_code_ranges() -> None:
    """4000-4499 reconnect, 4500-4999 stop, as PROTOCOL.md says."""
    assert CloseCode.SLOW_CONSUMER.should_reconnect
    assert CloseCode.TOKEN_EXPIRED.should_reconnect
    assert not CloseCode.AUTH_FAILED.should_reconnect
    assert not CloseCode.REPLACED.should_reconnect
    assert not CloseCode.NORMAL.should_reconnect
    assert CloseCode.GOING_AWAY.should_reconnect
    assert should_reconnect(4123) and not should_reconnect(4999)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    """Any bytes decode to a frame or raise FrameError, nothing else."""
    try:
        decode_client_frame(data)
    except FrameError as exc:
        code = exc.code
        assert code in (ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_TYPE)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["hello", "say", "interrupt", "seen", "typing", "context", "act", "join", "ping", "refresh"]
    ),
    st.dictionaries(
        st.sampled_from(["id", "npc", "text", "turn", "shown", "on", "data", "token", "room"]),
        json_values,
    ),
)
def test_random_maps_never_crash(t: str, keys: dict[str, Any]) -> None:
    """Maps of a known type with random key values decode or are refused cleanly."""
    try:
        decode_client_frame(pack({"t": t, **keys}))
    except FrameError as exc:
        code = exc.code
        assert code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("room", ["inn", "a", "Guild-Hall_2.east:1", "x" * 64])
@pytest.mark.parametrize("t", ["join", "leave", "say", "typing"])
def test_safe_room_names_are_accepted(t: str, room: str) -> None:
    """Room names of 1-64 letters, digits and - _ . : pass in every frame that names a room."""
    frame: Any = decode_client_frame(pack({"t": t, "id": 1, "room": room, **_ROOM_BODY[t]}))
    assert frame.room == room


_ROOM_BODY: dict[str, dict[str, Any]] = {
    "join": {},
    "leave": {},
    "say": {"npc": "merchant", "text": "hi"},
    "typing": {"on": True},
}


@pytest.mark.parametrize("room", ["", "x" * 65, "a b", "inn\n", "inn\x00", "caf\u00e9", "a/b", 7])
@pytest.mark.parametrize("t", ["join", "leave", "say", "typing"])
def test_unsafe_room_names_are_bad_frames(t: str, room: Any) -> None:
    """Control characters, spaces, other symbols, empty or long names: bad_frame naming the rule."""
    exc = refused(pack({"t": t, "id": 4, "room": room, **_ROOM_BODY[t]}))
    assert (exc.code, exc.request_id) == (ErrorCode.BAD_FRAME, 4)
    assert f"{t}.room must be a room name (1-64 characters of A-Z a-z 0-9 - _ . :)" in exc.message


def _context(data: Any) -> bytes:
    return pack({"t": "context", "id": 5, "data": data})


def test_context_within_bounds_decodes() -> None:
    """A context map 4 levels deep, 64 keys and 8 KiB encoded is accepted whole."""
    data: dict[str, Any] = {f"k{i}": i for i in range(63)}
    data["deep"] = {"a": {"b": [1, 2]}}
    frame = decode_client_frame(_context(data))
    assert isinstance(frame, Context) and frame.data == data
    fits = {"text": "x" * (8 * 1024 - 16)}
    assert isinstance(decode_client_frame(_context(fits)), Context)


def test_context_deeper_than_four_is_bad_frame() -> None:
    """context.data nesting a fifth array or map is refused as bad_frame, naming the bound."""
    exc = refused(_context({"a": {"b": {"c": [[]]}}}))
    assert (exc.code, exc.request_id) == (ErrorCode.BAD_FRAME, 5)
    assert "context.data nests deeper than 4" in exc.message


@pytest.mark.parametrize(
    "data", [{b"top": 1}, {"inventory": {b"sword": 1, "shield": 2}}, {"a": [{"b": {b"c": 0}}]}]
)
def test_context_with_a_map_key_that_is_not_a_string_is_bad_frame(data: Any) -> None:
    """msgpack allows bytes keys; a prompt cannot sort or print them beside strings (every
    later turn of the player failed): refused as bad_frame at any level."""
    exc = refused(_context(data))
    assert (exc.code, exc.request_id) == (ErrorCode.BAD_FRAME, 5)
    assert "context.data: every map key must be a string" in exc.message


@pytest.mark.parametrize(
    ("frame", "name", "kind"),
    [
        ({"t": "context", "id": 5, "data": {1: 2}}, "context", "int"),
        (
            {"t": "tool.result", "id": 5, "call": "c-1", "result": {"a": {2: 2}}},
            "tool.result",
            "int",
        ),
        ({"t": "ping", "id": 5, "ts": {1.5: 1}}, "ping", "float"),
        ({"t": "say", "id": 5, "npc": "guard", "text": "hi", "x": {None: 1}}, "say", "nil"),
        ({"t": "ping", "id": 5, 7: 2}, "ping", "int"),
        ({"t": "nonsense", "id": 5, b"k": 2}, "frame", "bytes"),
    ],
)
def test_a_map_key_that_is_not_a_string_at_any_level_names_the_frame_and_keeps_its_id(
    frame: dict[Any, Any], name: str, kind: str
) -> None:
    """msgpack refuses int, float and nil map keys with a ValueError before any check sees
    the frame: that was `not a msgpack message: ValueError` with no id, so the client could
    not tell which request failed. Now the frame is named and its id answered."""
    exc = refused(pack(frame))
    assert (exc.code, exc.request_id) == (ErrorCode.BAD_FRAME, 5)
    assert exc.message == f"{name}: every map key must be a string, got {kind}"


def test_a_refused_key_in_a_frame_with_a_bad_id_or_garbage_is_still_bad_frame() -> None:
    """The second decode only names the key; a bad id is dropped, garbage stays garbage."""
    exc = refused(pack({"t": "ping", "id": [1], "ts": {1: 1}}))
    assert (exc.request_id, exc.message) == (None, "ping: every map key must be a string, got int")
    truncated = pack({"t": "ping", "id": 5, "ts": {1: 1}})[:-1]
    exc = refused(truncated)
    assert exc.request_id is None and exc.message.startswith("not a msgpack message")


def test_context_over_its_bytes_is_too_long() -> None:
    """context.data over context_bytes once encoded is refused with too_long and the size."""
    exc = refused(_context({"text": "x" * (8 * 1024)}))
    assert (exc.code, exc.request_id) == (ErrorCode.TOO_LONG, 5)
    assert "context.data is 8201 bytes encoded; the limit is 8192" in exc.message


def test_context_with_too_many_keys_is_too_long() -> None:
    """More than context_keys keys is too_long; the limit comes from Limits."""
    exc = refused(_context({f"k{i}": i for i in range(65)}))
    assert exc.code is ErrorCode.TOO_LONG and "65 keys; the limit is 64" in exc.message
    small = Limits(context_keys=2, context_bytes=20)
    with pytest.raises(FrameError, match="3 keys; the limit is 2"):
        decode_client_frame(_context({"a": 1, "b": 2, "c": 3}), small)
    with pytest.raises(FrameError, match="the limit is 20"):
        decode_client_frame(_context({"a": "x" * 30}), small)


def test_context_limits_are_announced() -> None:
    """welcome.limits tells clients context_keys and context_bytes."""
    wire = Limits().to_wire()
    assert (wire["context_keys"], wire["context_bytes"]) == (64, 8 * 1024)


def test_delta_fast_path_encodes_the_same_map_as_any_frame() -> None:
    """A delta's direct encoding equals the generic payload + t + seq."""
    frame = Delta(turn="t1", text="héllo", at=3)
    generic = {**frame.payload(), "t": "delta", "seq": 9}
    assert msgpack.unpackb(encode_server_frame(frame, 9)) == generic
    assert msgpack.unpackb(encode_server_frame(frame, None)) == {
        "turn": "t1",
        "text": "héllo",
        "at": 3,
        "t": "delta",
    }


def test_delta_built_directly_is_still_a_frozen_dataclass() -> None:
    """Delta's own __init__ sets the same fields: equal, hashable, frozen, replace() works."""
    delta = Delta("t1", "Hello ", 5)
    assert delta == Delta(turn="t1", text="Hello ", at=5)
    assert hash(delta) == hash(Delta(turn="t1", text="Hello ", at=5))
    assert dataclasses.replace(delta, at=7) == Delta("t1", "Hello ", 7)
    assert dataclasses.asdict(delta) == {"turn": "t1", "text": "Hello ", "at": 5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        delta.at = 6  # type: ignore[misc]
    assert msgpack.unpackb(encode_server_frame(delta, 3)) == {
        "turn": "t1",
        "text": "Hello ",
        "at": 5,
        "t": "delta",
        "seq": 3,
    }


def test_deltas_hand_written_init_sets_every_field_of_the_dataclass() -> None:
    """`Delta.__init__` is written by hand (the frame of every token): it takes exactly the
    dataclass's fields, so a field added later cannot be left unset."""
    import dataclasses
    import inspect

    from npc_server.protocol.frames import Delta as DeltaFrame

    names = tuple(f.name for f in dataclasses.fields(DeltaFrame))
    assert tuple(inspect.signature(DeltaFrame.__init__).parameters)[1:] == names
    delta = DeltaFrame("t1", "word ", 3)
    assert dataclasses.astuple(delta) == ("t1", "word ", 3)
    assert dataclasses.replace(delta, at=9) == DeltaFrame("t1", "word ", 9)


def test_hello_client_of_another_type_is_ignored_not_refused() -> None:
    """`client` is informative; v1 servers welcomed any type, so another type is dropped."""
    assert decode_client_frame(pack({"t": "hello", "token": "x", "client": "unity/1"})) == Hello(
        token="x", client="unity/1"
    )
    for other in (5, {"name": "unity", "version": "1"}):
        frame = decode_client_frame(pack({"t": "hello", "token": "x", "client": other}))
        assert frame == Hello(token="x", client=None)


@pytest.mark.parametrize("frame", [{}, {"result": None}])
def test_a_tool_result_without_a_result_is_the_answer_null(frame: dict[str, Any]) -> None:
    """protocol.md: `result` absent or nil is the answer `null` (a tool may return
    nothing), as nil means absent everywhere; `call` stays required."""
    decoded = decode_client_frame(pack({"t": "tool.result", "id": 3, "call": "c-1", **frame}))
    assert decoded == ToolResult(call="c-1", result=None, id=3)
    error = refused(pack({"t": "tool.result", "id": 4, **frame}))
    assert (error.code, error.request_id) == (ErrorCode.BAD_FRAME, 4)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-1, "-1"), (1.5, "1.5"), (True, "true"), ("50", "str"), ([50], "list")],
)
def test_a_field_of_the_wrong_value_is_named_with_what_came(value: Any, shown: str) -> None:
    """A number or boolean is shown as it came (its type alone says nothing wrong with
    `-1`); anything else by its type."""
    exc = refused(pack({"t": "hello", "token": "x", "delta_ms": value}))
    assert exc.code is ErrorCode.BAD_FRAME
    assert exc.message == f"hello.delta_ms must be a non-negative integer, got {shown}"
