"""What the demo NPCs in npc_server/demo/npcs say: long enough to cut by hand, and sensible."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from npc_server.backends.base import GenerationRequest, TextPiece
from npc_server.backends.scripted import ScriptedBackend, _split_words
from npc_server.npcs import NpcConfig, load_npcs
from tests.support.server import DEMO_NPCS

# A person needs a moment to see a reply start and reach for Interrupt.
MIN_REPLY_SECONDS = 3.0
MARKER = re.compile(r"\[\[[^\]]*\]\]")
NPCS = load_npcs(DEMO_NPCS)


def settings(npc_id: str) -> dict[str, Any]:
    with Path(DEMO_NPCS / f"{npc_id}.toml").open("rb") as file:
        backend: dict[str, Any] = tomllib.load(file)["backend"]
    return backend


def replies(npc_id: str) -> list[tuple[str, str]]:
    """(where, template) for every topic reply and fallback line of an NPC."""
    backend = settings(npc_id)
    found = [(f"fallback {i}", text) for i, text in enumerate(backend.get("fallback", []))]
    for topic in backend.get("topics", []):
        found += [(f"{topic['name']} {i}", text) for i, text in enumerate(topic["replies"])]
    return found


def streaming_seconds(npc_id: str, template: str) -> float:
    """How long a reply streams at the NPC's own pace (the jitter averages out)."""
    backend = settings(npc_id)
    pieces = list(_split_words(MARKER.sub("", template).replace("{player}", "Ann")))
    first = float(backend["first_token_ms"]) / 1000
    return first + (len(pieces) - 1) / float(backend["tokens_per_second"])


@pytest.mark.parametrize("npc_id", sorted(NPCS))
def test_every_demo_reply_streams_for_a_few_seconds(npc_id: str) -> None:
    """At the default pace each reply lasts long enough to interrupt by hand."""
    short = {
        where: round(seconds, 1)
        for where, template in replies(npc_id)
        if (seconds := streaming_seconds(npc_id, template)) < MIN_REPLY_SECONDS
    }
    assert short == {}, f"{npc_id}: replies under {MIN_REPLY_SECONDS} s: {short}"


async def reply(npc: NpcConfig, text: str, seed: int) -> str:
    backend = ScriptedBackend(npc, npc.backend_settings, sleep=_no_sleep)
    request = GenerationRequest(npc, "ann", text, seed=seed)
    pieces = [p.text async for p in backend.generate(request) if isinstance(p, TextPiece)]
    return "".join(pieces)


NOT_STOCKED = ("not that", "what you see is what i have")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("how much is a potion?", ("twelve silver",)),
        ("How much does rope cost?", ("rope is three",)),
        ("do you have rope?", ("fifty feet",)),
        ("Got any potions?", ("twelve silver",)),
        ("do you have lamp oil?", ("two silver",)),
        ("do you have a sword?", NOT_STOCKED),
        ("Have you got any horses?", NOT_STOCKED),
    ],
)
async def test_merchant_answers_prices_and_goods(question: str, expected: tuple[str, ...]) -> None:
    """Mira names prices, talks about what she stocks, and says what she does not stock."""
    merchant = NPCS["merchant"]
    answers = {(await reply(merchant, question, seed)).casefold() for seed in range(12)}
    wrong = [a for a in answers if not any(phrase in a for phrase in expected)]
    assert wrong == [], f"{question!r} got {wrong}"
    fallback = [t.casefold()[:30] for t in settings("merchant")["fallback"]]
    assert not [a for a in answers if any(a.startswith(f) for f in fallback)]


async def test_merchant_still_opens_her_shop_for_wares() -> None:
    """'What wares do you sell?' still gets the pitch with the open_shop action."""
    merchant = NPCS["merchant"]
    backend = ScriptedBackend(merchant, merchant.backend_settings, sleep=_no_sleep)
    request = GenerationRequest(merchant, "ann", "What wares do you sell?", seed=1)
    names = [getattr(p, "name", None) async for p in backend.generate(request)]
    assert "open_shop" in names


async def test_the_guard_shouts_at_a_theft_the_game_reports_and_only_then() -> None:
    """A game's `theft` event gets "Thief!"; a player who says "steal" is threatening
    (trouble, as before), and one whose amulet was stolen is not accused."""
    guard = NPCS["guard"]
    backend = ScriptedBackend(guard, guard.backend_settings, sleep=_no_sleep)

    async def answers(text: str, event: str | None = None) -> list[str]:
        said = []
        for seed in range(8):
            request = GenerationRequest(guard, "ann", text, seed=seed, event=event)
            pieces = [p.text async for p in backend.generate(request) if isinstance(p, TextPiece)]
            said.append("".join(pieces))
        return said

    assert all("Thief!" in a for a in await answers("ann stole an apple", event="theft"))
    threats = await answers("I will steal your purse")
    assert all("Say that again" in a or "That's enough" in a for a in threats)
    assert not any("Thief" in a for a in await answers("my amulet was stolen on the road"))


async def _no_sleep(delay: float) -> None:
    return None
