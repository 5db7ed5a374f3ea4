"""A node's own table of bans (`npc_server/bans.py`), on a fake clock."""

from __future__ import annotations

import pytest

from npc_server import bans
from npc_server.bans import Bans, refusal_reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_ban_runs_for_its_seconds_then_ends() -> None:
    clock = Clock()
    table = Bans(clock)
    table.note("alice", 60)
    assert table.remaining("alice") == 60
    assert table.remaining("bob") == 0
    clock.now += 59.5
    assert table.remaining("alice") == pytest.approx(0.5)
    clock.now += 0.5
    assert table.remaining("alice") == 0
    assert len(table) == 0  # an ended ban is dropped when it is read


def test_a_lift_ends_a_ban_and_says_whether_one_ran() -> None:
    clock = Clock()
    table = Bans(clock)
    table.note("alice", 60)
    assert table.forget("alice") is True
    assert table.remaining("alice") == 0
    assert table.forget("alice") is False
    table.note("bob", 1)
    clock.now += 2
    assert table.forget("bob") is False  # it had ended: nothing was lifted


def test_a_new_ban_replaces_the_old_one_for_the_same_player() -> None:
    clock = Clock()
    table = Bans(clock)
    table.note("alice", 600)
    table.note("alice", 10)
    assert table.remaining("alice") == 10


def test_a_full_table_drops_the_bans_that_ended_before_it_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bans, "PURGE_AT", 3)
    clock = Clock()
    table = Bans(clock)
    for player in ("a", "b", "c"):
        table.note(player, 1)
    table.note("d", 100)  # still under the mark: nothing dropped yet
    clock.now += 5
    table.note("e", 100)  # at the mark: a, b and c have ended and go
    assert len(table) == 2
    assert table.remaining("d") == 95 and table.remaining("e") == 100


async def test_one_process_keeps_bans_without_redis() -> None:
    table = Bans(Clock())
    assert not table.shared
    await table.ban("alice", 30)
    assert await table.remaining_shared("alice") == 30
    assert await table.lift("alice") is True
    assert await table.remaining_shared("alice") == 0


def test_the_refusal_says_how_long_the_ban_still_runs() -> None:
    assert refusal_reason(59.2) == "banned for 59 more seconds"
    assert refusal_reason(0.2) == "banned for 1 more second"
