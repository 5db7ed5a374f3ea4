"""Tests of the scripted backend: reply choice, markers, pacing, cancellation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npc_server.backends import create_backend
from npc_server.backends.base import ActionPiece, GenerationRequest, Piece, TextPiece
from npc_server.backends.scripted import (
    ScriptedBackend,
    _collapse,
    _line_pieces,
    _split_words,
)
from npc_server.npcs import ActionSpec, NpcConfig, load_npcs
from tests.support.server import DEMO_NPCS

DEMO_DIR = DEMO_NPCS
NO_PACING = {"first_token_ms": 0, "tokens_per_second": 0}

TOPICS: list[dict[str, Any]] = [
    {"name": "wares", "keywords": ["wares", "sell*"], "replies": ["I sell rope and oil."]},
    {
        "name": "wares_at_night",
        "keywords": ["wares", "sell*"],
        "when": {"time": "night"},
        "replies": ["Shh, it is night."],
    },
    {"name": "weather", "keywords": ["rain", "weather"], "replies": ["Rain soon."]},
    {
        "name": "gift",
        "keywords": ["gift"],
        "replies": ["Here you go, {player}. [[give_item item=potion count=2]] Use it well."],
    },
    {"name": "choice", "keywords": ["pick"], "replies": [f"Answer {i}." for i in range(8)]},
]


class FakeSleep:
    """Records requested delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_npc(**backend: Any) -> NpcConfig:
    settings = {"topics": TOPICS, "fallback": ["Eh?"], **backend}
    return NpcConfig(
        id="mira",
        name="Mira",
        greeting="Welcome, {player}!",
        actions=(ActionSpec("give_item"), ActionSpec("open_shop", approval=True)),
        backend_settings=settings,
    )


def make_backend(sleep: FakeSleep | None = None, /, **backend: Any) -> ScriptedBackend:
    npc = make_npc(**backend)
    return ScriptedBackend(npc, npc.backend_settings, sleep=sleep or FakeSleep())


def request(
    text: str, context: Mapping[str, Any] | None = None, seed: int = 0
) -> GenerationRequest:
    return GenerationRequest(
        npc=make_npc(), player="ana", text=text, context=context or {}, seed=seed
    )


async def collect(backend: ScriptedBackend, req: GenerationRequest) -> list[Piece]:
    return [piece async for piece in backend.generate(req)]


def text_of(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))


async def reply(text: str, context: Mapping[str, Any] | None = None, **backend: Any) -> str:
    return text_of(await collect(make_backend(**backend), request(text, context)))


# Choosing a reply.


async def test_keyword_selects_topic_case_insensitively() -> None:
    """A keyword anywhere in the text, in any case, selects its topic."""
    assert await reply("Do you have any WARES?") == "I sell rope and oil."
    assert await reply("what's the weather like") == "Rain soon."


async def test_keyword_prefix_and_whole_words() -> None:
    """`sell*` matches as a prefix, while plain keywords only match whole words."""
    assert await reply("Are you selling anything?") == "I sell rope and oil."
    assert await reply("Rainbows are pretty") == "Eh?"


async def test_context_condition_selects_variant() -> None:
    """A topic's `when` condition makes it win at night and excludes it otherwise."""
    assert await reply("wares?", {"time": "Night"}) == "Shh, it is night."
    assert await reply("wares?", {"time": "day"}) == "I sell rope and oil."
    assert await reply("wares?") == "I sell rope and oil."


async def test_condition_lists_and_booleans() -> None:
    """A `when` list matches any of its values; booleans compare as true/false."""
    when = {"place": ["inn", "tavern"], "quest_done": True}
    topics = [{"keywords": ["news"], "when": when, "replies": ["Heard you did it."]}]
    assert await reply("news?", {"place": "Tavern", "quest_done": True}, topics=topics) == (
        "Heard you did it."
    )
    assert await reply("news?", {"place": "market", "quest_done": True}, topics=topics) == "Eh?"
    assert await reply("news?", {"place": "inn", "quest_done": False}, topics=topics) == "Eh?"


async def test_phrase_keywords_and_more_hits_win() -> None:
    """A multi-word keyword needs its words in a row; the topic with more hits wins."""
    topics = [
        {"name": "a", "keywords": ["how much"], "replies": ["Ten silver."]},
        {"name": "b", "keywords": ["much", "rope"], "replies": ["Rope, much rope."]},
    ]
    assert await reply("How much is it?", topics=topics) == "Ten silver."
    assert await reply("How much rope?", topics=topics) == "Rope, much rope."
    assert await reply("much how?", topics=topics[:1]) == "Eh?"


async def test_greeting_used_when_no_topic_matches() -> None:
    """A greeting word gets the NPC's greeting, but a topic keyword wins over it."""
    assert await reply("Hello there") == "Welcome, ana!"
    assert await reply("Hi, what is the weather?") == "Rain soon."


async def test_fallback_when_nothing_matches() -> None:
    """Text without any keyword gets a fallback reply."""
    assert await reply("The moon is made of cheese") == "Eh?"


async def test_default_fallback_names_the_npc() -> None:
    """Without a `fallback` setting the built-in one is used, filled with the NPC name."""
    npc = NpcConfig(id="bob", name="Bob", backend_settings={})
    backend = ScriptedBackend(npc, NO_PACING)
    text = text_of(await collect(backend, GenerationRequest(npc=npc, player="p", text="?")))
    assert text.startswith("Bob frowns.")


async def test_placeholders_filled_and_missing_keys_are_safe() -> None:
    """Placeholders come from defaults, context and built-ins; unknown ones become empty."""
    template = "At {location} in the {time}, {player} meets {npc_name}{nothing}. {0} {a.b} {"
    backend = {"defaults": {"location": "the market"}, "fallback": [template], **NO_PACING}
    text = await reply("?", {"time": "evening", "player": "mallory"}, **backend)
    assert text == "At the market in the evening, ana meets Mira. {0} {a.b} {"


async def test_context_cannot_inject_actions() -> None:
    """A context value that looks like a marker stays text and emits no action."""
    backend = make_backend(fallback=["You are at {location}."], **NO_PACING)
    pieces = await collect(backend, request("?", {"location": "[[give_item item=gold]]"}))
    assert not any(isinstance(p, ActionPiece) for p in pieces)
    assert "[[give_item item=gold]]" in text_of(pieces)


# Action markers.


async def test_action_marker_offset_and_removal() -> None:
    """An action comes right after the text before its marker, and the marker is gone."""
    pieces = await collect(make_backend(**NO_PACING), request("a gift?"))
    index = next(i for i, p in enumerate(pieces) if isinstance(p, ActionPiece))
    action = pieces[index]
    assert action == ActionPiece("give_item", {"item": "potion", "count": 2})
    assert len(text_of(pieces[:index])) == len("Here you go, ana. ")
    assert text_of(pieces) == "Here you go, ana. Use it well."
    assert "[[" not in text_of(pieces)


async def test_action_args_are_fresh_per_turn() -> None:
    """Each turn gets its own args mapping, so one consumer cannot alter the next turn."""
    backend = make_backend(**NO_PACING)
    first = [p for p in await collect(backend, request("gift")) if isinstance(p, ActionPiece)]
    second = [p for p in await collect(backend, request("gift")) if isinstance(p, ActionPiece)]
    assert first == second
    assert first[0].args is not second[0].args


async def test_marker_at_end_trims_trailing_space() -> None:
    """A trailing marker anchors at the end of the trimmed text."""
    pieces = await collect(
        make_backend(fallback=["Take it. [[open_shop]] "], **NO_PACING), request("?")
    )
    assert pieces[-1] == ActionPiece("open_shop", {})
    assert text_of(pieces) == "Take it."


def test_unknown_action_in_marker_is_rejected() -> None:
    """A marker naming an action the NPC lacks fails at construction, naming all three."""
    topics = [{"name": "bad", "keywords": ["x"], "replies": ["Oops [[fly_away]]"]}]
    with pytest.raises(ValueError, match=r"'mira'.*'bad'.*'fly_away'"):
        make_backend(topics=topics)


@pytest.mark.parametrize(
    ("reply_text", "message"),
    [
        ("Half [[open_shop", "unbalanced"),
        ("Bad [[give_item potion]]", "key=value"),
        ('Bad [[give_item item="unclosed]]', "bad action marker"),
    ],
)
def test_malformed_markers_are_rejected(reply_text: str, message: str) -> None:
    """Unbalanced brackets, args without `=` and broken quoting are construction errors."""
    with pytest.raises(ValueError, match=message):
        make_backend(fallback=[reply_text])


# Streaming and pacing.


async def test_pieces_are_words_with_trailing_punctuation() -> None:
    """Text streams as word pieces carrying their punctuation and following space."""
    pieces = await collect(make_backend(**NO_PACING), request("wares"))
    assert [p.text for p in pieces if isinstance(p, TextPiece)] == [
        "I ",
        "sell ",
        "rope ",
        "and ",
        "oil.",
    ]


@given(st.text())
def test_split_words_loses_nothing(text: str) -> None:
    """Joining the pieces gives back the text exactly, and no piece is empty."""
    pieces = list(_split_words(text))
    assert "".join(pieces) == text
    assert all(pieces)


# The pieces as first defined: one match of this pattern each, words over 10 characters cut.
_REFERENCE_PIECE = re.compile(r"([^\w\s]*)(\w+(?:['\u2019]\w+)*)?([^\w\s]*\s*)")
_TRICKY = st.text(alphabet=st.sampled_from(list("ab Z9_'\u2019,.!-\n\t\x1c\xa0\u2003\xe9")))


def _reference_split(text: str) -> list[str]:
    pieces = []
    for match in _REFERENCE_PIECE.finditer(text):
        lead, word, tail = match.group(1), match.group(2) or "", match.group(3)
        if len(word) <= 10:
            if match.group():
                pieces.append(match.group())
            continue
        chunks = [word[i : i + 10] for i in range(0, len(word), 10)]
        chunks[0] = lead + chunks[0]
        chunks[-1] += tail
        pieces.extend(chunks)
    return pieces


@given(st.one_of(st.text(), _TRICKY))
def test_split_words_matches_the_reference_pieces(text: str) -> None:
    """The fast split (ASCII and Unicode patterns) cuts exactly where the reference does."""
    assert _split_words(text) == _reference_split(text)


@given(st.one_of(st.text(), _TRICKY), st.integers(min_value=0, max_value=1100))
def test_a_line_split_again_comes_from_the_cache_unchanged(text: str, pad: int) -> None:
    """A line's cached pieces are the reference pieces, the first time and every time after."""
    line = text + "a" * pad  # past the cache's line bound as well
    expected = _reference_split(line)
    assert [p.text for p in _line_pieces(line)] == expected
    assert [p.text for p in _line_pieces(line)] == expected


@given(st.one_of(st.text(), _TRICKY))
def test_whitespace_collapses_as_a_substitution_would(text: str) -> None:
    """Every whitespace run becomes one space, as a regex substitution of runs would."""
    assert _collapse(text) == re.sub(r"\s+", " ", text)


async def test_pacing_delays() -> None:
    """The first piece waits first_token_ms, later text pieces 1/tokens_per_second, actions none."""
    sleep = FakeSleep()
    backend = make_backend(sleep, first_token_ms=400, tokens_per_second=20)
    pieces = await collect(backend, request("gift"))
    text_pieces = sum(isinstance(p, TextPiece) for p in pieces)
    assert sleep.delays[0] == pytest.approx(0.4)
    assert sleep.delays[1:] == [pytest.approx(0.05)] * (text_pieces - 1)


async def test_default_pacing() -> None:
    """Without settings the first delay is 350 ms and then 25 pieces per second."""
    sleep = FakeSleep()
    await collect(make_backend(sleep), request("wares"))
    assert sleep.delays[:2] == [pytest.approx(0.35), pytest.approx(0.04)]


async def test_zero_pacing_never_sleeps() -> None:
    """first_token_ms = 0 and tokens_per_second = 0 make no sleep calls at all."""
    sleep = FakeSleep()
    pieces = await collect(make_backend(sleep, **NO_PACING), request("gift"))
    assert pieces
    assert sleep.delays == []


async def test_jitter_is_bounded_and_deterministic() -> None:
    """Jitter varies delays within its fraction, identically for the same request."""
    runs = []
    for _ in range(2):
        sleep = FakeSleep()
        await collect(make_backend(sleep, tokens_per_second=10, jitter=0.5), request("gift"))
        runs.append(sleep.delays)
    assert runs[0] == runs[1]
    assert all(0.05 <= d <= 0.15 for d in runs[0][1:])
    assert len(set(runs[0][1:])) > 1


async def test_jitter_does_not_change_the_reply() -> None:
    """The same seed gives the same reply with or without jitter."""
    plain = await collect(make_backend(**NO_PACING), request("pick one", seed=5))
    jittered = await collect(make_backend(jitter=0.9), request("pick one", seed=5))
    assert plain == jittered


async def test_long_reply_chars_extends_reply() -> None:
    """long_reply_chars continues the reply with more sentences, without repeating actions."""
    backend = make_backend(long_reply_chars=2000, **NO_PACING)
    pieces = await collect(backend, request("gift"))
    assert len(text_of(pieces)) >= 2000
    assert sum(isinstance(p, ActionPiece) for p in pieces) == 1
    assert text_of(pieces).startswith("Here you go, ana. Use it well. ")
    assert "{" not in text_of(pieces)


async def test_create_backend_layers_settings() -> None:
    """create_backend builds a scripted backend; server overrides beat the NPC file."""
    npc = make_npc(first_token_ms=60_000)  # a minute: only the override keeps this fast
    backend = create_backend(npc, overrides={"scripted": NO_PACING})
    assert isinstance(backend, ScriptedBackend)
    pieces = await asyncio.wait_for(collect(backend, request("wares")), timeout=5)
    assert text_of(pieces) == "I sell rope and oil."


# Determinism.


async def test_same_seed_same_pieces() -> None:
    """The same request and seed always stream the same pieces."""
    backend = make_backend(**NO_PACING)
    assert await collect(backend, request("pick", seed=7)) == await collect(
        backend, request("pick", seed=7)
    )


async def test_different_seeds_vary_the_reply() -> None:
    """Across seeds, a topic with several replies uses more than one of them."""
    backend = make_backend(**NO_PACING)
    texts = {text_of(await collect(backend, request("pick", seed=seed))) for seed in range(20)}
    assert len(texts) > 1
    assert texts <= {f"Answer {i}." for i in range(8)}


# Cancellation.


async def test_cancel_mid_stream() -> None:
    """Cancelling the consuming task mid-reply ends it cancelled, CancelledError not swallowed."""
    reached = asyncio.Event()
    calls = 0
    cancelled_in_sleep = False

    async def gate_sleep(delay: float) -> None:
        nonlocal calls, cancelled_in_sleep
        calls += 1
        if calls == 4:  # after three pieces, park here until cancelled
            reached.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled_in_sleep = True
                raise

    npc = make_npc(long_reply_chars=500)
    backend = ScriptedBackend(npc, npc.backend_settings, sleep=gate_sleep)
    received: list[Piece] = []

    async def consume() -> None:
        async for piece in backend.generate(request("wares")):
            received.append(piece)

    task = asyncio.create_task(consume())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert cancelled_in_sleep
    assert len(received) == 3


# Settings validation.


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"first_token_ms": -1}, "first_token_ms"),
        ({"tokens_per_second": -5}, "tokens_per_second"),
        ({"tokens_per_second": "fast"}, "tokens_per_second"),
        ({"first_token_ms": True}, "first_token_ms"),
        ({"first_token_ms": float("nan")}, "first_token_ms"),
        ({"jitter": 1.5}, "jitter"),
        ({"long_reply_chars": -1}, "long_reply_chars"),
        ({"long_reply_chars": 2.5}, "long_reply_chars"),
        ({"topics": {"wares": "x"}}, "topics"),
        ({"topics": ["wares"]}, "topics"),
        ({"topics": [{"name": "t", "keywords": ["x"]}]}, "replies"),
        ({"topics": [{"name": "t", "keywords": ["x"], "replies": []}]}, "replies"),
        ({"topics": [{"name": "t", "replies": ["r"]}]}, "keywords"),
        ({"topics": [{"name": "t", "keywords": ["?!"], "replies": ["r"]}]}, "keyword"),
        ({"topics": [{"keywords": ["x"], "replies": ["r"], "when": "night"}]}, "when"),
        ({"topics": [{"keywords": ["x"], "replies": ["r"], "colour": "red"}]}, "colour"),
        ({"fallback": []}, "fallback"),
        ({"fallback": "Eh?"}, "fallback"),
        ({"defaults": {"location": ["a", "b"]}}, "defaults"),
        ({"tokens_per_sec": 10}, "tokens_per_sec"),
    ],
)
def test_invalid_settings_name_npc_and_key(settings: dict[str, Any], key: str) -> None:
    """Bad settings raise ValueError naming the NPC and the offending key."""
    npc = NpcConfig(id="mira", name="Mira")
    with pytest.raises(ValueError, match=rf"'mira'.*{key}") as info:
        ScriptedBackend(npc, settings)
    assert "mira" in str(info.value)


# The demo NPCs.


@pytest.mark.parametrize(
    ("npc_id", "text", "context", "action"),
    [
        ("merchant", "What do you sell?", {}, "open_shop"),
        ("merchant", "Show me your wares", {"time": "night"}, "open_shop"),
        ("guard", "I will attack you", {}, "draw_sword"),
        ("questgiver", "Do you need help with a problem?", {}, "offer_quest"),
        ("questgiver", "Where did the thieves go?", {}, "mark_map"),
    ],
)
async def test_demo_npcs_act(npc_id: str, text: str, context: dict[str, Any], action: str) -> None:
    """Each demo NPC answers its key topics with the matching action, for every seed."""
    npc = load_npcs(DEMO_DIR)[npc_id]
    backend = ScriptedBackend(npc, npc.backend_settings, sleep=FakeSleep())
    for seed in range(4):
        req = GenerationRequest(npc=npc, player="ana", text=text, context=context, seed=seed)
        pieces = await collect(backend, req)
        assert [p.name for p in pieces if isinstance(p, ActionPiece)] == [action]
        assert "[[" not in text_of(pieces)


async def test_demo_npcs_have_long_replies() -> None:
    """Every demo NPC has a reply of 300+ characters, so interrupts can land mid-reply."""
    prompts = {
        "merchant": "any rumours?",
        "guard": "can I pass the gate?",
        "questgiver": "tell me the details",
    }
    for npc_id, text in prompts.items():
        npc = load_npcs(DEMO_DIR)[npc_id]
        backend = ScriptedBackend(npc, npc.backend_settings, sleep=FakeSleep())
        lengths = []
        for seed in range(10):
            req = GenerationRequest(npc=npc, player="ana", text=text, seed=seed)
            lengths.append(len(text_of(await collect(backend, req))))
        assert max(lengths) >= 300, npc_id


async def test_deliver_with_an_injected_sleep_hands_over_what_generate_yields() -> None:
    """`deliver` with a test's `sleep` gives `take` the same pieces at the same delays as
    `generate` (an action marker included), and calls `finished` once, after the last."""
    generated_sleep, delivered_sleep = FakeSleep(), FakeSleep()
    req = request("a gift, please")
    generated = await collect(make_backend(generated_sleep), req)
    taken: list[Piece] = []
    finished: list[int] = []
    backend = make_backend(delivered_sleep)
    calls = [
        call
        async for call in backend.deliver(req, taken.append, lambda: finished.append(len(taken)))
    ]
    assert calls == [] and taken == generated
    assert any(isinstance(p, ActionPiece) for p in taken)
    assert delivered_sleep.delays == generated_sleep.delays
    assert finished == [len(taken)]
