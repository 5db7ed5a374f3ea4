"""Which channels a node may keep off Redis, on its own (sans-I/O, a fake clock)."""

from __future__ import annotations

from npc_server.brokers.listeners import RELEARN_AFTER, Listeners


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def live(channels: list[str], clock: Clock | None = None) -> Listeners:
    """Listeners with `channels` subscribed and confirmed by Redis."""
    listeners = Listeners(clock or Clock())
    for channel in channels:
        listeners.subscribed(channel, 1)
    assert listeners.confirmed(1) == channels  # each announced once live
    return listeners


def test_only_a_confirmed_channel_whose_answer_was_one_is_alone() -> None:
    """A count of 1 makes a confirmed channel alone; 2, or a channel not confirmed yet (the
    1 may be another node), does not."""
    listeners = live(["player:a", "room:inn"])
    listeners.subscribed("session:s1", 2)  # Redis has not confirmed it
    heard = listeners.heard
    listeners.answered(["player:a", "room:inn", "session:s1"], [1, 2, 1], heard)
    assert listeners.alone == {"player:a"}


def test_an_answer_sent_before_an_announcement_was_heard_teaches_nothing() -> None:
    """An interest heard during the round trip may be newer than the answer."""
    listeners = live(["player:a"])
    heard = listeners.heard
    listeners.interest("room:elsewhere")
    listeners.answered(["player:a"], [1], heard)
    assert listeners.alone == set()


def test_an_announcement_ends_alone_and_an_unsubscribe_forgets() -> None:
    listeners = live(["player:a", "room:inn"])
    listeners.answered(["player:a", "room:inn"], [1, 1], listeners.heard)
    listeners.interest("room:inn")
    assert listeners.alone == {"player:a"}
    listeners.unsubscribed("player:a")
    assert listeners.alone == set()
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.alone == set()  # not subscribed any more


def test_after_a_lost_link_nothing_is_learnt_for_a_while_and_all_is_announced_again() -> None:
    """A lost link forgets every alone channel; back, the live channels are announced again
    and answers teach nothing for RELEARN_AFTER, while other nodes resubscribe."""
    clock = Clock()
    listeners = live(["player:a"], clock)
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.link_changed(False) == [] and listeners.alone == set()
    assert listeners.link_changed(True) == ["player:a"]
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.alone == set()
    clock.now += RELEARN_AFTER + 0.1
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.alone == {"player:a"}


def test_a_new_connection_confirms_its_channels_again() -> None:
    """A new subscription connection: channels are live again only once it confirms them."""
    listeners = live(["player:a"])
    listeners.new_connection(5)
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.alone == set()
    assert listeners.confirmed(5) == ["player:a"]


def test_nothing_is_held_back_at_start_up() -> None:
    """The first connection is no lost link: a node learns at once."""
    listeners = live(["player:a"])
    listeners.link_changed(True)
    listeners.answered(["player:a"], [1], listeners.heard)
    assert listeners.alone == {"player:a"}
