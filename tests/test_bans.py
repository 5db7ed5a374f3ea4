"""A node's own table of bans (`npc_server/bans.py`), on a fake clock."""

from __future__ import annotations

import asyncio

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
    table.note("d", 100)  # at the mark, but all still run: none dropped, the mark doubles
    assert len(table) == 4
    clock.now += 5
    table.note("e", 100)  # under the new mark (6): nothing swept
    table.note("f", 100)
    assert len(table) == 6
    table.note("g", 100)  # at it: a, b and c have ended and go
    assert len(table) == 4
    assert table.remaining("d") == 95 and table.remaining("g") == 100


def test_many_running_bans_are_not_swept_on_every_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the table full of running bans, each new one does not rebuild it: the sweep
    waits until the table has doubled (O(1) a ban)."""
    monkeypatch.setattr(bans, "PURGE_AT", 100)
    table = Bans(Clock())
    sweeps = 0
    for i in range(1000):
        before = id(table._until)
        table.note(f"p{i}", 600)
        sweeps += id(table._until) != before
    assert len(table) == 1000
    assert sweeps == 4  # at 100, 200, 400 and 800 bans: not at each of the last 900


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


class SlowRedis:
    """A client whose PTTL answers "no key" once `answer` is set (read before a SET)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def pttl(self, key: str) -> int:
        self.asked.set()
        await self.answer.wait()
        return -2


class Broker:
    available = True

    def __init__(self, client: SlowRedis) -> None:
        self.client = client


async def test_a_kick_that_arrives_while_redis_answers_a_hello_wins() -> None:
    """A hello's read of the ban went to Redis just before the kick's SET ("no key"); the
    kick reached this node while the answer was on its way: the hello is refused, and
    the node keeps the ban."""
    client = SlowRedis()
    table = Bans(Clock(), Broker(client))
    hello = asyncio.create_task(table.remaining_shared("alice"))
    await asyncio.wait_for(client.asked.wait(), 5)
    table.note("alice", 600)  # the kick's message, as `_forwarded_kick` notes it
    client.answer.set()
    assert await asyncio.wait_for(hello, 5) == 600
    assert table.remaining("alice") == 600


async def test_redis_no_longer_knowing_a_ban_lifts_this_nodes_copy() -> None:
    """Lifted on another node whose message this node missed: Redis's "no key" wins."""
    client = SlowRedis()
    client.answer.set()
    table = Bans(Clock(), Broker(client))
    table.note("alice", 600)
    assert await table.remaining_shared("alice") == 0
    assert table.remaining("alice") == 0
