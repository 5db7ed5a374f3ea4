"""A kick while a session is being parked or unparked counts it once: `POST /api/kick`
to a node in this process, the nodes' parts in the cluster started, on a real
redis-server; the Redis call the race hangs on is held until the kick got there."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from npc_server.app import create_app
from npc_server.cluster.handover import PARKED, Kicked
from npc_server.node import Node
from npc_server.protocol.codes import CloseCode
from npc_server.protocol.frames import Ack, Resume
from npc_server.session import Session
from tests.cluster.test_api_forwarded import started
from tests.support.game_server import API_KEY
from tests.support.redis import RedisServer
from tests.support.wait import wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def away(node: Node, player: str = "alice") -> Session:
    """A session of `player` on `node` with three frames written, its socket gone."""
    session = node.open_session(player)
    for n in range(3):
        session.push_nowait(Ack(n + 1))
    session.take_writes_nowait(node.clock())
    session.detach(node.clock())
    return session


async def kick(node: Node, player: str = "alice") -> dict[str, Any]:
    """`POST /api/kick` to `node`'s API; its JSON answer."""
    app = create_app(dataclasses.replace(node.config, api_key=API_KEY), node=node)
    answer = await app.test_client().post("/api/kick", json={"player": player}, headers=AUTH)
    assert answer.status_code == 200, await answer.get_data()
    body: dict[str, Any] = await answer.get_json()
    return body


@asynccontextmanager
async def calls_held(
    monkeypatch: pytest.MonkeyPatch, target: Any, name: str
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Event]]:
    """Hold each call of `target.name` (a coroutine function) until the first event is
    set; the second is set once a call is held."""
    release, reached = asyncio.Event(), asyncio.Event()
    call = getattr(target, name)

    async def holding(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await release.wait()
        return await call(*args, **kwargs)

    monkeypatch.setattr(target, name, holding)
    try:
        yield release, reached
    finally:
        release.set()


def on_kick(node: Node, then: Callable[[], None], monkeypatch: pytest.MonkeyPatch) -> None:
    """Call `then` right after `node` ends a session for a kick."""
    end = node.end_session

    def ending(session: Session, code: CloseCode = CloseCode.GOING_AWAY, **kw: Any) -> None:
        end(session, code, **kw)
        if code is CloseCode.KICKED:
            then()

    monkeypatch.setattr(node, "end_session", ending)


class HeldWrites:
    """Each transaction `client` starts waits for its own release (`writes[n].release`)
    while `hold` is on; `done` is set once it ran."""

    @dataclass
    class Write:
        release: asyncio.Event = field(default_factory=asyncio.Event)
        done: asyncio.Event = field(default_factory=asyncio.Event)

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: Any) -> None:
        self.writes: list[HeldWrites.Write] = []
        self.hold = True
        self._pipeline = client.pipeline
        monkeypatch.setattr(client, "pipeline", self._held)

    def _held(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._pipeline(*args, **kwargs)
        execute, write = pipe.execute, HeldWrites.Write()
        self.writes.append(write)
        if not self.hold:
            write.release.set()

        async def execute_later(**options: Any) -> Any:
            await write.release.wait()
            try:
                return await execute(**options)
            finally:
                write.done.set()

        pipe.execute = execute_later
        return pipe

    def release_all(self) -> None:
        self.hold = False
        for write in self.writes:
            write.release.set()


async def test_a_kick_while_a_draining_node_writes_its_parked_sessions_counts_one(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X drains and writes alice's session to Redis; the kick (sent to K) reaches X while
    that write is on its way: X ends the session, and the kick's drop after the nodes
    answered finds its state. One session, counted once, and nothing left in Redis."""
    async with started(redis, "x", "k") as (x, k):
        session = away(x)
        client = x.broker.client  # type: ignore[attr-defined]
        held = HeldWrites(monkeypatch, client)
        parking = asyncio.create_task(x.handover.park_all())
        await wait_until(lambda: bool(held.writes), what="X's parking write")
        on_kick(x, held.writes[0].release.set, monkeypatch)  # it goes once X ended it
        forget = k.handover.forget_parked
        drops = 0

        async def forget_once_written(player: str) -> Any:
            nonlocal drops
            drops += 1
            if drops == 2:  # the drop after the nodes answered: X's write is in by then
                await held.writes[0].done.wait()
            return await forget(player)

        monkeypatch.setattr(k.handover, "forget_parked", forget_once_written)
        answer = await kick(k)
        assert answer["sessions"] == 1 and answer["sockets"] == 0
        held.release_all()
        assert await parking == 0  # the kick ended it: not parked
        assert x.hub.get(session.id) is None
        assert await client.exists(PARKED + session.id) == 0


async def test_a_state_written_after_the_kicks_drop_is_dropped_by_its_node(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kick reaches X, and its drops of parked states are done, before X's write of
    alice's state is in Redis: X drops that state itself once written (the kick ended the
    session), so no resume of it finds one; the kick counted it once (X's)."""
    async with started(redis, "x", "k") as (x, k):
        session = away(x)
        client = x.broker.client  # type: ignore[attr-defined]
        held = HeldWrites(monkeypatch, client)
        parking = asyncio.create_task(x.handover.park_all())
        await wait_until(lambda: bool(held.writes), what="X's parking write")
        answer = await kick(k)
        assert answer["sessions"] == 1
        held.release_all()
        assert await parking == 0
        assert await client.exists(PARKED + session.id) == 0
        assert await k.handover.list_parked("alice") == []


async def test_a_kick_while_a_node_unparks_the_session_counts_one(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X parked alice's session and exited; her resume reaches B, which is about to take
    the parked state when the kick (sent to X) drops it: B's resume ends refused, and the
    kick counts one session (the drop and B's resume under way are the same one)."""
    async with started(redis, "x", "b") as (x, b):
        session = away(x)
        assert await x.handover.park_all() == 1
        client = b.broker.client  # type: ignore[attr-defined]
        async with calls_held(monkeypatch, client, "getdel") as (release, reached):
            resuming = asyncio.create_task(b.handover.resume("alice", Resume(session.id, 3)))
            await reached.wait()
            answer = await kick(x)
            release.set()
            with pytest.raises(Kicked):
                await resuming
        assert answer["sessions"] == 1 and answer["sockets"] == 0
        assert await client.exists(PARKED + session.id) == 0
