"""The outgoing queue: merge, replace, purge, bounds, statistics."""

from __future__ import annotations

from npc_server.outbound import FRAME_OVERHEAD_BYTES, OutboundQueue, PushResult
from npc_server.protocol.frames import (
    Ack,
    Delta,
    Presence,
    Said,
    ServerFrame,
    TurnEnd,
    TypingNotice,
)


def drain(queue: OutboundQueue) -> list[ServerFrame]:
    frames = []
    while (frame := queue.pop_nowait()) is not None:
        frames.append(frame)
    return frames


def test_consecutive_deltas_merge_without_losing_text() -> None:
    """Deltas of one turn waiting together become one delta with the first at."""
    queue = OutboundQueue(10, 10_000)
    assert queue.push_nowait(Delta("t1", "Hel", 0)) is PushResult.QUEUED
    assert queue.push_nowait(Delta("t1", "lo ", 3)) is PushResult.MERGED
    assert queue.push_nowait(Delta("t1", "there", 6)) is PushResult.MERGED
    assert drain(queue) == [Delta("t1", "Hello there", 0)]
    assert queue.statistics().merged == 2


def test_deltas_of_different_turns_each_merge_in_place() -> None:
    """Interleaved turns merge per turn and keep each turn's order."""
    queue = OutboundQueue(10, 10_000)
    for i in range(3):
        queue.push_nowait(Delta("a", f"a{i}", 2 * i))
        queue.push_nowait(Delta("b", f"b{i}", 2 * i))
    assert drain(queue) == [Delta("a", "a0a1a2", 0), Delta("b", "b0b1b2", 0)]


def test_a_later_frame_of_the_turn_stops_merging() -> None:
    """A delta after the turn's end frame is not merged ahead of it."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "x", 0))
    queue.push_nowait(TurnEnd("t", "done", 1, 1))
    queue.push_nowait(Delta("t", "y", 1))
    assert drain(queue) == [Delta("t", "x", 0), TurnEnd("t", "done", 1, 1), Delta("t", "y", 1)]


def test_merging_stops_once_the_delta_was_popped() -> None:
    """A delta already handed to the writer is never changed afterwards."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "a", 0))
    assert queue.pop_nowait() == Delta("t", "a", 0)
    assert queue.push_nowait(Delta("t", "b", 1)) is PushResult.QUEUED
    assert drain(queue) == [Delta("t", "b", 1)]


def test_newer_typing_replaces_queued_one() -> None:
    """typing from the same player and place keeps only the latest, in place."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(TypingNotice("bob", True, "inn"))
    queue.push_nowait(Ack(1))
    assert queue.push_nowait(TypingNotice("bob", False, "inn")) is PushResult.REPLACED
    queue.push_nowait(TypingNotice("eve", True, "inn"))
    assert drain(queue) == [
        TypingNotice("bob", False, "inn"),
        Ack(1),
        TypingNotice("eve", True, "inn"),
    ]
    assert queue.statistics().replaced == 1


def test_newer_presence_of_a_member_replaces_the_queued_one_at_the_end() -> None:
    """Joins and leaves of one member in one room, queued, keep only the latest, moved
    to the end: a flapping member costs a slow or absent reader one frame, and what the
    member said after joining never comes after their `left`."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Presence("inn", "eve", "joined"))
    queue.push_nowait(Said("inn", "eve", "guard", "hi"))
    for state in ("left", "joined", "left") * 100:
        assert queue.push_nowait(Presence("inn", "eve", state)) is PushResult.REPLACED
    queue.push_nowait(Presence("inn", "bob", "joined"))  # another member: its own
    queue.push_nowait(Presence("cellar", "eve", "joined"))  # another room: its own
    assert len(queue) == 4 and len(queue._entries) <= 2 * 4 + 64  # dead ones compacted
    assert drain(queue) == [
        Said("inn", "eve", "guard", "hi"),
        Presence("inn", "eve", "left"),
        Presence("inn", "bob", "joined"),
        Presence("cellar", "eve", "joined"),
    ]
    assert queue.statistics().replaced == 300
    queue.push_nowait(Presence("inn", "eve", "joined"))  # written: a new one queues
    assert len(queue) == 1
    assert queue.pop_all_nowait() == [Presence("inn", "eve", "joined")]


def test_drop_turn_removes_only_that_turns_deltas() -> None:
    """An interrupted turn's queued deltas are dropped; other frames stay."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "a", 0))
    queue.push_nowait(Ack(1))
    queue.push_nowait(Delta("u", "keep", 0))
    assert queue.drop_turn_nowait("t") == 1
    assert len(queue) == 2
    assert drain(queue) == [Ack(1), Delta("u", "keep", 0)]
    stats = queue.statistics()
    assert (stats.dropped, stats.depth, stats.bytes) == (1, 0, 0)


def test_overflow_is_returned_and_frame_kept() -> None:
    """Past max_frames a push reports OVERFLOW but keeps the frame (no loss)."""
    queue = OutboundQueue(2, 10_000)
    assert queue.push_nowait(Ack(1)) is PushResult.QUEUED
    assert queue.push_nowait(Ack(2)) is PushResult.QUEUED
    assert queue.push_nowait(Ack(3)) is PushResult.OVERFLOW
    assert [f.id for f in drain(queue) if isinstance(f, Ack)] == [1, 2, 3]


def test_merged_text_counts_against_the_byte_bound() -> None:
    """A stalled reader's merged delta still overflows the byte bound."""
    queue = OutboundQueue(100, 1000)
    results = [queue.push_nowait(Delta("t", "x" * 100, i * 100)) for i in range(12)]
    assert results[0] is PushResult.QUEUED
    assert results[-1] is PushResult.OVERFLOW
    assert queue.statistics().bytes > 1000
    [merged] = drain(queue)
    assert isinstance(merged, Delta) and len(merged.text) == 1200


def test_statistics_track_peaks() -> None:
    """statistics() reports depth, bytes and their peaks as an immutable snapshot."""
    queue = OutboundQueue(10, 10_000)
    for i in range(4):
        queue.push_nowait(Ack(i))
    drain(queue)
    stats = queue.statistics()
    assert (stats.depth, stats.bytes, stats.peak_depth, stats.pushed, stats.popped) == (
        0,
        0,
        4,
        4,
        4,
    )
    assert stats.peak_bytes > 0


def test_clear_drops_everything() -> None:
    """clear_nowait empties the queue and its indexes."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "a", 0))
    queue.push_nowait(TypingNotice("bob", True))
    assert queue.clear_nowait() == 2
    assert queue.pop_nowait() is None
    assert queue.push_nowait(Delta("t", "b", 1)) is PushResult.QUEUED


def test_urgent_counts_queued_frames_other_than_deltas() -> None:
    """urgent is true while a non-delta frame waits, false once only deltas are left."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "a", 0))
    assert not queue.urgent
    queue.push_nowait(TurnEnd("t", "done", 1, 1))
    assert queue.urgent
    queue.pop_nowait()
    queue.pop_nowait()
    assert not queue.urgent
    queue.push_nowait(Ack(1))
    queue.clear_nowait()
    assert not queue.urgent


def test_pop_all_takes_every_frame_in_order_with_merges() -> None:
    """pop_all_nowait empties the queue in one call, merged deltas joined, order kept."""
    queue = OutboundQueue(10, 10_000)
    queue.push_nowait(Delta("t", "é", 0))
    queue.push_nowait(Delta("t", "a", 1))
    queue.push_nowait(TurnEnd("t", "done", 2, 2))
    assert queue.statistics().bytes == FRAME_OVERHEAD_BYTES * 5 + 3  # "é" is 2 bytes
    assert queue.pop_all_nowait() == [Delta("t", "éa", 0), TurnEnd("t", "done", 2, 2)]
    assert len(queue) == 0 and queue.statistics().popped == 2
