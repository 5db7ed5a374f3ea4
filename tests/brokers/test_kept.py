"""Room talk kept local for a newcomer not heard yet (`KeptLocal`), on a fake clock."""

from __future__ import annotations

from npc_server.brokers.kept import KEEP_FOR, MAX_KEPT, KeptLocal
from npc_server.protocol.frames import Delta, Presence, Said, TypingNotice


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def said(text: str) -> Said:
    return Said(room="inn", player="alice", npc="bard", text=text)


def test_room_talk_is_kept_in_order_and_taken_once() -> None:
    """Said, typing and presence on a room channel come back in order, with their
    exclusions, for that room only, and only once."""
    kept = KeptLocal(Clock())
    typing = TypingNotice(player="bob", on=True, room="inn")
    presence = Presence(room="inn", player="carol", state="joined")
    kept.keep_nowait("room:inn", said("a"), None)
    kept.keep_nowait("room:hall", said("elsewhere"), None)
    kept.keep_nowait("room:inn", typing, "s1")
    kept.keep_nowait("room:inn", presence, None)
    assert kept.take("room:inn") == [(said("a"), None), (typing, "s1"), (presence, None)]
    assert kept.take("room:inn") == []
    assert kept.take("room:hall") == [(said("elsewhere"), None)]


def test_turn_frames_and_other_channels_are_not_kept() -> None:
    """A delta (caught up from its turn's node instead) and anything on a session's or a
    player's channel (a handover accounts for those) are not kept."""
    kept = KeptLocal(Clock())
    kept.keep_nowait("room:inn", Delta("t1", "word", 0), None)
    kept.keep_nowait("player:alice", said("private"), None)
    kept.keep_nowait("session:s1", said("private"), None)
    assert len(kept) == 0


def test_what_is_older_than_keep_for_is_forgotten() -> None:
    """Talk kept longer ago than KEEP_FOR predates any newcomer's subscription: gone."""
    clock = Clock()
    kept = KeptLocal(clock)
    kept.keep_nowait("room:inn", said("old"), None)
    clock.now += KEEP_FOR / 2
    kept.keep_nowait("room:inn", said("recent"), None)
    clock.now += KEEP_FOR / 2 + 0.01
    assert kept.take("room:inn") == [(said("recent"), None)]


def test_at_most_max_kept_frames_are_held() -> None:
    """A burst of talk holds at most MAX_KEPT frames, the newest."""
    kept = KeptLocal(Clock())
    for n in range(MAX_KEPT + 5):
        kept.keep_nowait("room:inn", said(str(n)), None)
    assert len(kept) == MAX_KEPT
    taken = kept.take("room:inn")
    assert taken[0] == (said("5"), None) and taken[-1] == (said(str(MAX_KEPT + 4)), None)


def test_a_channel_that_stops_being_alone_otherwise_keeps_nothing() -> None:
    """Unsubscribed, or every channel after a link change: what was kept is dropped, so it
    can never follow frames published normally after it."""
    kept = KeptLocal(Clock())
    kept.keep_nowait("room:inn", said("a"), None)
    kept.keep_nowait("room:hall", said("b"), None)
    kept.forget("room:inn")
    assert kept.take("room:inn") == [] and len(kept) == 1
    kept.forget_all()
    assert kept.take("room:hall") == [] and len(kept) == 0
