"""The handover's parts without I/O: export and import of a session, validation, dedup."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import pytest

from npc_server.brokers import MemoryBroker, room_channel
from npc_server.cluster.handover_state import (
    MAX_STATE_BYTES,
    BadState,
    StandIn,
    check_adopted,
    decode_state,
    encode_state,
    export_state,
)
from npc_server.node import Node
from npc_server.npcs import load_npcs
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Ack, Delta, Presence, ServerFrame, TurnEnd
from npc_server.session import Session, SessionLimits, SessionState
from tests.support.alloc import length_claims, peak_allocation
from tests.support.server import DEMO_NPCS, server_config


def written(count: int, limits: SessionLimits | None = None) -> Session:
    """A session that has written acks 1..count (seq 1..count)."""
    session = Session("s-x-1", "alice", limits or SessionLimits(), now=0.0)
    for n in range(count):
        session.push_nowait(Ack(n + 1))
    session.take_writes_nowait(0.0)
    return session


def through_the_wire(message: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = msgpack.unpackb(msgpack.packb(message), raw=False)
    return decoded


def state_message(session: Session, after: int) -> dict[str, Any]:
    state = export_state(session, after, ["inn"], {"x": 7}, {"*": {"mood": "calm"}})
    assert state is not None
    message = encode_state("r1", state)
    assert message is not None
    return through_the_wire(message)


def test_an_exported_session_decodes_to_the_same_state() -> None:
    """Replay after the client's seq, queued frames, rooms, position and contexts survive."""
    session = written(5)
    session.push_nowait(Delta("t1", "hel", 0))
    session.push_nowait(Delta("t1", "lo", 3))
    message = state_message(session, after=2)
    assert len(session.queue) == 0  # the queued frames moved into the state
    state = decode_state(message, "s-x-1", "alice", after=2)
    assert state.last_seq == 5 and [seq for seq, _ in state.replay] == [3, 4, 5]
    assert state.replay == session.replay.items_after(2, 5)
    assert state.queued == [Delta("t1", "hello", 0)]
    assert (state.rooms, state.position, state.contexts) == (
        ["inn"],
        {"x": 7},
        {"*": {"mood": "calm"}},
    )


def test_a_restored_session_continues_the_seq_and_the_window() -> None:
    """On the new node the next frame gets seq last+1 and a resume replays the old frames."""
    old = written(4)
    state = decode_state(state_message(old, after=1), "s-x-1", "alice", after=1)
    new = Session("s-x-1", "alice", SessionLimits(), now=10.0)
    new.restore_nowait(state.last_seq, state.replay)
    new.push_nowait(Ack(99))
    [data] = new.take_writes_nowait(10.0)
    assert msgpack.unpackb(data)["seq"] == 5
    assert new.replay_after(1) == [d for _, d in state.replay] + [data]


def test_no_state_when_the_window_no_longer_covers_the_client() -> None:
    """A seq the replay window has dropped exports nothing and leaves the queue alone."""
    session = written(5, SessionLimits(replay_frames=2))
    session.push_nowait(Ack(6))
    assert export_state(session, 1, [], {}, {}) is None
    assert len(session.queue) == 1


def test_a_state_too_large_for_one_publication_is_not_encoded() -> None:
    """Queued text beyond one publication: no message (the caller falls back)."""
    session = written(1)
    session.push_nowait(Delta("t1", "x" * (MAX_STATE_BYTES + 1), 0))
    state = export_state(session, 0, [], {}, {})
    assert state is not None and encode_state("r1", state) is None


def bad(message: dict[str, Any], **change: Any) -> dict[str, Any]:
    return {**message, **change}


BAD_STATES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "seq is not a number": lambda m: bad(m, seq="3"),
    "a replay gap": lambda m: bad(m, replay=m["replay"][1:]),
    "a replay entry out of order": lambda m: bad(m, replay=m["replay"][::-1]),
    "a frame whose own seq differs": lambda m: bad(
        m, replay=[m["replay"][0], [4, m["replay"][2][1]], m["replay"][2]]
    ),
    "truncated frame bytes": lambda m: bad(
        m, replay=[*m["replay"][:2], [5, m["replay"][2][1][:-2]]]
    ),
    "a queued frame of no known type": lambda m: bad(m, queue=[{"t": "nope"}]),
    "a queued frame with a stray key": lambda m: bad(m, queue=[{"t": "ack", "id": 1, "x": 2}]),
    "a room that is no room name": lambda m: bad(m, rooms=["a room"]),
    "a position that is no number": lambda m: bad(m, position={"x": "7"}),
    "contexts that are no maps": lambda m: bad(m, contexts={"*": [1]}),
    "a context with a bytes key": lambda m: bad(m, contexts={"*": {"bag": {b"k": 1}}}),
    "a context nested too deep": lambda m: bad(m, contexts={"*": {"a": {"b": {"c": [[]]}}}}),
    "a frame map with keys of two types": lambda m: bad(
        m, queue=[{"t": "ack", "id": 1, b"x": 2, "y": 3}]
    ),
    "another player": lambda m: bad(m, player="mallory"),
    "a missing replay": lambda m: {k: v for k, v in m.items() if k != "replay"},
}


@pytest.mark.parametrize("name", sorted(BAD_STATES))
def test_a_state_that_does_not_fit_is_rejected(name: str) -> None:
    """Another node's state is validated like client input: each flaw is a BadState."""
    message = BAD_STATES[name](state_message(written(5), after=2))
    with pytest.raises(BadState):
        decode_state(message, "s-x-1", "alice", after=2)


def test_a_parked_window_gives_the_frames_after_the_clients_seq() -> None:
    """A parked state holds the whole window; the resume takes what the client lacks."""
    message = state_message(written(5), after=0)
    state = decode_state(message, "s-x-1", "alice", after=3, window=True)
    assert [seq for seq, _ in state.replay] == [4, 5]
    trimmed = state_message(written(5, SessionLimits(replay_frames=2)), after=3)
    with pytest.raises(BadState):  # the client lacks seq 2 and 3, which the window dropped
        decode_state(trimmed, "s-x-1", "alice", after=1, window=True)


class Delivering:
    """What `broker.delivering` would say for each pushed frame."""

    def __init__(self) -> None:
        self.now = ("x", 0)

    def __call__(self) -> tuple[str, int]:
        return self.now


def test_the_stand_in_keeps_only_what_the_old_node_had_not_received() -> None:
    """Frames at or below the old node's position per origin go; later and unknown ones stay."""
    delivering = Delivering()
    standin = StandIn("s-x-1", "alice", delivering, max_frames=10)
    frames: list[tuple[tuple[str, int], ServerFrame]] = [
        (("x", 9), Delta("t1", "a", 0)),
        (("x", 10), Delta("t1", "b", 1)),
        (("x", 11), Delta("t1", "c", 2)),
        (("b", 3), Ack(1)),
        (("b", 4), Ack(2)),
        (("c", 1), TurnEnd("t2", "done", 0, 0)),
    ]
    for origin, frame in frames:
        delivering.now = origin
        standin.push_nowait(frame)
    kept = standin.kept({"x": 10, "b": 3})
    assert kept == [Delta("t1", "c", 2), Ack(2), TurnEnd("t2", "done", 0, 0)]


def test_the_stand_in_drops_an_interrupted_turns_deltas_and_overflows_to_a_snapshot() -> None:
    """A drop removes buffered deltas of the turn; past its bound the stand-in says so."""
    standin = StandIn("s-x-1", "alice", Delivering(), max_frames=3)
    standin.push_nowait(Delta("t1", "a", 0))
    standin.push_nowait(TurnEnd("t1", "interrupted", 1, 1))
    assert standin.drop_turn_nowait("t1") == 1 and standin.dropped_turns == ["t1"]
    assert [f for _, _, f in standin.frames] == [TurnEnd("t1", "interrupted", 1, 1)]
    for n in range(3):
        standin.push_nowait(Ack(n))
    assert standin.overflowed


# --- the holding node, on a fake clock, with a broker that records its messages ---------


class RecordingBroker(MemoryBroker):
    """The in-memory broker, recording the messages a node sends to other nodes."""

    def __init__(self) -> None:
        super().__init__("x")
        self.handlers: dict[str, Any] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.frames: list[tuple[str, ServerFrame]] = []

    def on_message(self, kind: str, handler: Any) -> None:
        self.handlers[kind] = handler

    def send_nowait(self, node: str, message: Mapping[str, Any]) -> None:
        self.sent.append((node, through_the_wire(message)))

    def publish_nowait(self, channel: str, frame: ServerFrame, exclude: str | None = None) -> None:
        self.frames.append((channel, frame))
        super().publish_nowait(channel, frame, exclude)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def holding_node() -> tuple[Node, RecordingBroker, Clock, Session, list[CloseCode]]:
    broker, clock = RecordingBroker(), Clock()
    node = Node(server_config(), load_npcs(DEMO_NPCS), clock=clock, broker=broker)
    session = node.open_session("alice")
    closes: list[CloseCode] = []
    session.attach(object(), lambda: None, closes.append)
    node.hub.join("inn", "alice")
    node.contexts.set_nowait("alice", None, {"mood": "calm"}, 10)
    return node, broker, clock, session, closes


def ask(broker: RecordingBroker, session: Session, seq: int = 0) -> None:
    message = {"k": "handover.ask", "req": "r1", "session": session.id, "player": "alice"}
    broker.handlers["handover.ask"]("b", {**message, "seq": seq})


def test_the_holder_offers_the_rooms_then_hands_the_session_over_quietly() -> None:
    """Ask: an offer with the rooms; take: the state, the socket closed REPLACED, no presence."""
    node, broker, _, session, closes = holding_node()
    ask(broker, session)
    assert broker.sent == [("b", {"k": "handover.offer", "req": "r1", "rooms": ["inn"]})]
    node.hub.send_to_player("alice", Ack(7))  # queued, not yet written: it moves too
    broker.frames.clear()
    broker.handlers["handover.take"]("b", {"k": "handover.take", "req": "r1"})
    _, message = broker.sent[-1]
    state = decode_state(message, session.id, "alice", after=0)
    assert state.queued == [Ack(7)] and state.rooms == ["inn"]
    assert state.contexts == {"*": {"mood": "calm"}} and state.position["x"] >= 1
    assert closes == [CloseCode.REPLACED] and session.state is SessionState.EXPIRED
    assert node.hub.get(session.id) is None and not node.hub.room_exists("inn")
    assert not [f for _, f in broker.frames if isinstance(f, Presence)]
    assert node.handover.statistics()["handed"] == 1


def test_a_take_from_another_node_than_the_offer_gets_nothing() -> None:
    """Only the node the session was offered to may take it."""
    node, broker, _, session, _ = holding_node()
    ask(broker, session)
    broker.handlers["handover.take"]("mallory", {"k": "handover.take", "req": "r1"})
    assert len(broker.sent) == 1 and node.hub.get(session.id) is session


def test_a_session_past_its_resume_window_is_refused_and_ends() -> None:
    """On the fake clock past the window, an ask for a detached session gets a refusal."""
    node, broker, clock, session, _ = holding_node()
    session.detach(clock.now)
    clock.now += node.config.limits.resume_window + 1
    ask(broker, session)
    assert broker.sent == [("b", {"k": "handover.state", "req": "r1", "ok": False})]
    assert node.hub.get(session.id) is None


def test_an_ask_with_wrong_types_is_rejected_and_counted() -> None:
    """A crafted ask changes nothing and is counted."""
    node, broker, _, session, _ = holding_node()
    broker.handlers["handover.ask"]("evil", {"k": "handover.ask", "req": 5, "seq": "x"})
    assert broker.sent == [] and node.hub.get(session.id) is session
    assert node.handover.statistics()["rejected"] == 1


def test_quiet_joins_and_leaves_publish_no_presence() -> None:
    """A session that moves between nodes joins and leaves its rooms without presence."""
    node, broker, _, _, _ = holding_node()
    broker.frames.clear()
    node.hub.join("hall", "alice", quiet=True)
    node.hub.leave("hall", "alice", quiet=True)
    assert broker.frames == [] and node.hub.rooms_of("alice") == {"inn"}
    assert broker.subscriber_count(room_channel("hall")) == 0


def test_the_sessions_a_draining_node_names_are_checked_like_input() -> None:
    """`handover.adopt` names `[session, player, seq]`s: anything else is refused whole."""
    assert check_adopted([["s-a-1", "alice", 3], ["s-a-2", "bob", 0]]) == [
        ("s-a-1", "alice", 3),
        ("s-a-2", "bob", 0),
    ]
    for bad in (
        None,
        "s-a-1",
        [["s-a-1", "alice"]],
        [["s-a-1", "alice", -1]],
        [["s-a-1", "alice", True]],
        [["", "alice", 1]],
        [["s-a-1", "x" * 201, 1]],
        [[7, "alice", 1]],
        [["s-a-1", "alice", 1]] * 1001,
    ):
        with pytest.raises(BadState):
            check_adopted(bad)


def test_a_replayed_frame_of_nested_length_claims_is_refused_in_bounded_memory() -> None:
    """Another node's replay entry is scanned before it is unpacked, as a client's frame
    is: refused without allocating what its headers claim."""
    message = state_message(written(5), after=2)
    replay = message["replay"]
    message = bad(message, replay=[*replay[:2], [replay[2][0], length_claims(1000)]])
    with peak_allocation() as peak, pytest.raises(BadState):
        decode_state(message, "s-x-1", "alice", after=2)
    assert peak.bytes < 2_000_000
