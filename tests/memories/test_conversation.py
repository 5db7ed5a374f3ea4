"""A conversation and its store: memory loaded once before the first request, saved on change."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from npc_server import turns
from npc_server.backends.base import GenerationRequest, MemoryEntry, TextPiece
from npc_server.memories import LocalMemoryStore
from npc_server.memories.base import Lines
from npc_server.protocol.frames import Delta, TurnEnd, TurnStart
from npc_server.turns import Audience, Conversation, GenerationLimiter, Turn, TurnState
from tests.memories.test_store import said
from tests.support.wait import wait_until
from tests.test_turns import END, NPC, FakeScheduler, PuppetBackend, RecordingDelivery

ALICE = Audience(player="alice")


class GatedStore(LocalMemoryStore):
    """The local store, whose loads wait for `gate` and can fail (as a Redis away would)."""

    def __init__(self, answer: str = "ok") -> None:
        super().__init__(3600.0)
        self.gate = asyncio.Event()
        self.gate.set()
        self.answer = answer
        self.load_calls = 0

    async def load(self, npc_id: str, audience_key: str) -> Lines | None:
        self.load_calls += 1
        await self.gate.wait()
        if self.answer == "unavailable":
            return None
        if self.answer == "raise":
            raise RuntimeError("the store broke")
        return await super().load(npc_id, audience_key)


class Rig:
    def __init__(self, store: LocalMemoryStore) -> None:
        self.backend = PuppetBackend()
        self.delivery = RecordingDelivery(ALICE.key)
        self.store = store
        ids = itertools.count(1)
        self.conversation = Conversation(
            NPC,
            ALICE,
            backend=self.backend,
            publisher=self.delivery,
            limiter=GenerationLimiter(10),
            scheduler=FakeScheduler(),
            make_request=lambda turn, history: GenerationRequest(
                NPC, turn.player, turn.text_in, history
            ),
            new_id=lambda prefix: f"{prefix}{next(ids)}",
            memories=store,
        )

    def say(self, text: str) -> Turn:
        return self.conversation.submit("alice", text, reply_to=1).turn

    async def talk(self, text: str, reply: str) -> GenerationRequest:
        """One whole turn; the request the backend got for it."""
        turn = self.say(text)
        self.backend.feed(text, TextPiece(reply), END)
        await self.delivery.wait_for(lambda: turn.state is TurnState.ENDED)
        [request] = [r for r in self.backend.requests if r.text == text]
        return request

    async def stored(self) -> Lines | None:
        return await self.store.load(NPC.id, ALICE.key)


async def test_a_returning_player_gets_the_old_lines_and_one_returning_request() -> None:
    """Memory from an earlier conversation is the history; only the first request is `returning`."""
    store = GatedStore()
    store.save_nowait(NPC.id, ALICE.key, said("hello", "Hi there"))
    rig = Rig(store)
    first = await rig.talk("remember me?", "I do")
    second = await rig.talk("and now?", "Still")
    assert first.returning and not second.returning
    assert [e.text for e in first.history] == ["hello", "Hi there"]
    assert [e.text for e in second.history] == ["hello", "Hi there", "remember me?", "I do"]
    assert store.load_calls == 1


async def test_a_stranger_is_not_returning() -> None:
    """Nothing stored: no `returning`, no history."""
    rig = Rig(GatedStore())
    request = await rig.talk("hello", "Who are you?")
    assert not request.returning and request.history == ()


async def test_every_change_is_saved() -> None:
    """After each line the store holds the memory as it is (the player's, then the NPC's)."""
    store = GatedStore()
    rig = Rig(store)
    turn = rig.say("hello")
    await wait_until(lambda: bool(rig.backend.requests), what="the request")
    assert await rig.stored() == said("hello")
    rig.backend.feed("hello", TextPiece("Hi"), END)
    await rig.delivery.wait_for(lambda: turn.state is TurnState.ENDED)
    assert await rig.stored() == (
        MemoryEntry("player", "alice", "hello"),
        MemoryEntry("npc", "mira", "Hi"),
    )


async def test_turn_start_goes_out_before_the_load_and_deltas_after() -> None:
    """A slow load: `turn.start` is published at once; the reply follows the load, in order."""
    store = GatedStore()
    store.save_nowait(NPC.id, ALICE.key, said("earlier"))
    store.gate.clear()
    rig = Rig(store)
    turn = rig.say("hello")
    assert [type(f) for f in rig.delivery.frames] == [TurnStart]
    rig.backend.feed("hello", TextPiece("Back"), END)
    for _ in range(5):
        await asyncio.sleep(0)
    assert rig.backend.requests == [] and [type(f) for f in rig.delivery.frames] == [TurnStart]
    store.gate.set()
    await rig.delivery.wait_for(lambda: turn.state is TurnState.ENDED)
    assert [type(f) for f in rig.delivery.frames] == [TurnStart, Delta, TurnEnd]
    assert [e.text for e in rig.backend.requests[0].history] == ["earlier"]


async def test_an_interrupt_during_the_load_leaves_it_to_the_next_turn() -> None:
    """A turn cut while memory loads: one load, and the next turn's request is the returning one."""
    store = GatedStore()
    store.save_nowait(NPC.id, ALICE.key, said("earlier"))
    store.gate.clear()
    rig = Rig(store)
    first = rig.say("wait")
    await asyncio.sleep(0)
    rig.conversation.interrupt(first, None)
    assert first.state is TurnState.ENDED
    second = rig.say("hello")
    store.gate.set()
    rig.backend.feed("hello", TextPiece("Yes"), END)
    await rig.delivery.wait_for(lambda: second.state is TurnState.ENDED)
    [request] = rig.backend.requests
    assert request.returning and [e.text for e in request.history] == ["earlier", "wait"]
    assert store.load_calls == 1


@pytest.mark.parametrize("answer", ["unavailable", "raise"])
async def test_a_failed_load_starts_empty_and_saves_nothing_over_the_store(answer: str) -> None:
    """The store cannot answer: the turn runs without memory, and what is stored stays."""
    store = GatedStore()
    store.save_nowait(NPC.id, ALICE.key, said("precious"))
    store.answer = answer
    rig = Rig(store)
    request = await rig.talk("hello", "Hm?")
    assert request.history == () and not request.returning
    store.answer = "ok"
    assert await rig.stored() == said("precious")
    second = await rig.talk("again", "Ah, you")
    assert [e.text for e in second.history] == ["precious", "hello", "Hm?"]
    assert not second.returning  # the conversation already answered without it
    assert [e.text for e in await rig.stored() or ()] == [
        "precious",
        "hello",
        "Hm?",
        "again",
        "Ah, you",
    ]


async def test_a_load_that_hangs_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that never answers: after the recall timeout the turn goes on without memory."""
    monkeypatch.setattr(turns, "RECALL_TIMEOUT", 0.05)
    store = GatedStore()
    store.gate.clear()
    rig = Rig(store)
    request = await rig.talk("hello", "Hm?")
    assert request.history == ()


async def test_without_a_store_nothing_waits() -> None:
    """No store: the request is built as the turn starts, exactly as before stores existed."""
    backend = PuppetBackend()
    delivery = RecordingDelivery(ALICE.key)
    built: list[str] = []

    def make(turn: Turn, history: Lines) -> GenerationRequest:
        built.append(turn.text_in)
        return GenerationRequest(NPC, turn.player, turn.text_in, history)

    conversation = Conversation(
        NPC,
        ALICE,
        backend=backend,
        publisher=delivery,
        limiter=GenerationLimiter(1),
        scheduler=FakeScheduler(),
        make_request=make,
        new_id=lambda prefix: prefix,
    )
    conversation.submit("alice", "hello", reply_to=1)
    assert built == ["hello"]
    await conversation.aclose()
