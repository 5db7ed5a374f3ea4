"""The embedded default backend: written replies, streamed like a language model.

Replies come from the NPC's `[backend]` table (documented in docs/npcs.md):
topics matched by keyword and game context, templates with `{placeholders}`
and `[[action key=value]]` markers. A turn is deterministic for its seed, so
tests and benchmarks can replay it exactly, and all pacing goes through an
injected `sleep`, so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from npc_server.backends.base import ActionPiece, GenerationRequest, Piece, TextPiece
from npc_server.config import unknown_key
from npc_server.npcs import NpcConfig

Sleep = Callable[[float], Awaitable[None]]
Segment = str | ActionPiece
Template = tuple[Segment, ...]

GREETING_WORDS = frozenset({"hello", "hi", "hey", "greetings", "hail", "howdy"})
DEFAULT_FALLBACK = ('{npc_name} frowns. "I am not sure what you mean."',)
SETTING_KEYS = frozenset(
    {"first_token_ms", "tokens_per_second", "jitter", "long_reply_chars"}
    | {"topics", "fallback", "defaults"}
)
TOPIC_KEYS = frozenset({"name", "keywords", "replies", "when"})

_MAX_WORD_CHARS = 10  # longer words are split, as a tokenizer would
_MAX_VALUE_CHARS = 80  # context comes from clients; keep one value from flooding a reply
_MAX_LONG_REPLY = 1_000_000
_MARKER = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_WORD = re.compile(r"\w+(?:'\w+)*")
_KEYWORD_WORD = re.compile(r"\w+(?:'\w+)*\*?")
_PIECE = re.compile(r"([^\w\s]*)(\w+(?:['\u2019]\w+)*)?([^\w\s]*\s*)")
_INT = re.compile(r"[+-]?\d+")
_SPACE = re.compile(r"\s+")
_SCALAR = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class Topic:
    """Replies for one subject; chosen when a keyword occurs and `when` holds."""

    name: str
    keywords: tuple[tuple[str, ...], ...]
    replies: tuple[Template, ...]
    when: Mapping[str, frozenset[str]]

    def score(self, words: Sequence[str], context: Mapping[str, Any]) -> tuple[int, int] | None:
        """(keyword hits, conditions met), or None when the topic does not apply.

        Conditions rank second so a context-specific variant beats the generic
        topic it shadows, but never a topic the player named more clearly.
        """
        for key, allowed in self.when.items():
            if key not in context or _display(context[key]).casefold() not in allowed:
                return None
        hits = sum(1 for keyword in self.keywords if _contains(words, keyword))
        return (hits, len(self.when)) if hits else None


@dataclass(frozen=True, slots=True)
class Pacing:
    """Delays between pieces, in seconds; zero means do not sleep at all."""

    first_token_s: float
    token_interval_s: float
    jitter: float

    @classmethod
    def from_settings(cls, npc: NpcConfig, settings: Mapping[str, Any]) -> Pacing:
        first_token_ms = _number(npc, settings, "first_token_ms", 350)
        tokens_per_second = _number(npc, settings, "tokens_per_second", 25)
        interval = 1 / tokens_per_second if tokens_per_second else 0.0
        return cls(first_token_ms / 1000, interval, _number(npc, settings, "jitter", 0, upper=1))

    def delay(self, first: bool, piece: Piece, rng: random.Random) -> float:
        """How long to wait before `piece`."""
        if first:
            delay = self.first_token_s
        elif isinstance(piece, TextPiece):
            delay = self.token_interval_s
        else:
            return 0.0  # an action lands right after its text, as a tool call would
        if delay > 0 and self.jitter:
            delay *= 1 + self.jitter * rng.uniform(-1.0, 1.0)
        return delay


class ScriptedBackend:
    """Replies from the NPC file, streamed in word pieces at a set pace."""

    def __init__(
        self,
        npc: NpcConfig,
        settings: Mapping[str, Any],
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._npc = npc
        self._sleep = sleep
        for key in settings:
            if key not in SETTING_KEYS:
                raise unknown_key(f"NPC {npc.id!r}: [backend]", key, SETTING_KEYS)
        self._pacing = Pacing.from_settings(npc, settings)
        self._long_reply_chars = _long_reply_chars(npc, settings)
        self._defaults = _defaults(npc, settings)
        actions = frozenset(a.name for a in npc.actions)
        self._topics = _topics(npc, settings, actions)
        where = f"NPC {npc.id!r}, backend setting"
        fallback = _strings(settings.get("fallback", list(DEFAULT_FALLBACK)), "fallback", where)
        self._fallback = tuple(
            _compile(reply, actions, f"{where} 'fallback'") for reply in fallback
        )
        where = f"NPC {npc.id!r}, greeting"
        self._greeting = _compile(npc.greeting, actions, where) if npc.greeting else None
        templates = [r for t in self._topics for r in t.replies] + list(self._fallback)
        # Continuations for long replies are text only: an action repeated
        # every few sentences would spam the player.
        self._filler = tuple("".join(s for s in t if isinstance(s, str)) for t in templates)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream one reply: word pieces, with actions where their markers stood."""
        key = f"{request.seed}:{self._npc.id}:{request.text}"
        # Pacing has its own generator so jitter never changes which reply is chosen.
        choice_rng, pacing_rng = random.Random(key), random.Random(f"{key}:pacing")
        first = True
        for piece in _pieces(self._compose(request, choice_rng)):
            delay = self._pacing.delay(first, piece, pacing_rng)
            if delay > 0:
                await self._sleep(delay)
            else:
                # Unpaced, still give the loop a turn per piece: a generator that
                # never awaits would starve every socket's writer until it ends.
                await asyncio.sleep(0)
            first = False
            yield piece

    async def aclose(self) -> None:
        """Nothing to release: the script lives in memory."""

    def _compose(self, request: GenerationRequest, rng: random.Random) -> list[Segment]:
        values = self._values(request)
        segments = _tidy([_fill(s, values) for s in self._choose(request, rng)])
        return self._lengthen(segments, values, rng)

    def _choose(self, request: GenerationRequest, rng: random.Random) -> Template:
        # Phones type a typographic apostrophe; keywords are written with a plain one.
        said = f"{request.event or ''} {request.text}"  # a game event's name counts too
        words = [w.casefold() for w in _WORD.findall(said.replace("\u2019", "'"))]
        best: tuple[tuple[int, int], Topic] | None = None
        state = request.game_state
        for topic in self._topics:
            score = topic.score(words, state)
            # Strictly greater: on a tie the topic written first in the file wins.
            if score is not None and (best is None or score > best[0]):
                best = (score, topic)
        if best is not None:
            return rng.choice(best[1].replies)
        if self._greeting is not None and GREETING_WORDS.intersection(words):
            return self._greeting
        return rng.choice(self._fallback)

    def _values(self, request: GenerationRequest) -> dict[str, str]:
        values = dict(self._defaults)
        for key, value in request.game_state.items():
            if isinstance(key, str) and isinstance(value, _SCALAR):
                values[key] = _display(value)[:_MAX_VALUE_CHARS]
        # Set last so game context cannot rename the NPC or the player.
        values.update(
            player=request.player[:_MAX_VALUE_CHARS],
            npc_name=self._npc.name,
            npc_id=self._npc.id,
            room=request.room or "",
        )
        return values

    def _lengthen(
        self, segments: list[Segment], values: Mapping[str, str], rng: random.Random
    ) -> list[Segment]:
        length = sum(len(s) for s in segments if isinstance(s, str))
        separator = " " if length else ""
        if length >= self._long_reply_chars:
            return segments
        filled = (_SPACE.sub(" ", _fill_text(f, values)).strip() for f in self._filler)
        pool = [text for text in filled if text]
        if not pool:
            return segments
        extra: list[str] = []
        index = rng.randrange(len(pool))
        while length < self._long_reply_chars:
            sentence = pool[index % len(pool)]
            extra.append(sentence)
            length += len(sentence) + (1 if length else 0)
            index += 1
        return [*segments, separator + " ".join(extra)]


# Matching and rendering.


def _display(value: Any) -> str:
    # TOML and msgpack booleans should read as `true`, not Python's `True`.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _contains(words: Sequence[str], keyword: tuple[str, ...]) -> bool:
    """Whether the keyword's words occur in a row; `word*` matches a prefix."""
    return any(
        all(_word_matches(words[i + j], part) for j, part in enumerate(keyword))
        for i in range(len(words) - len(keyword) + 1)
    )


def _word_matches(word: str, pattern: str) -> bool:
    return word.startswith(pattern[:-1]) if pattern.endswith("*") else word == pattern


def _fill(segment: Segment, values: Mapping[str, str]) -> Segment:
    if isinstance(segment, ActionPiece):
        # A fresh piece per turn, so one consumer changing args cannot touch another's.
        return ActionPiece(segment.name, dict(segment.args))
    return _fill_text(segment, values)


def _fill_text(text: str, values: Mapping[str, str]) -> str:
    """Replace `{name}` placeholders; unknown names become empty, never an error."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def _tidy(segments: Sequence[Segment]) -> list[Segment]:
    """Collapse whitespace, also across removed markers, and trim both ends."""
    out: list[Segment] = []
    after_space = True  # strips leading space of the reply
    for segment in segments:
        if isinstance(segment, ActionPiece):
            out.append(segment)
            continue
        text = _SPACE.sub(" ", segment)
        text = text.lstrip(" ") if after_space else text
        if text:
            out.append(text)
            after_space = text.endswith(" ")
    last = max((i for i, s in enumerate(out) if isinstance(s, str)), default=-1)
    out[last:] = [s.rstrip(" ") if isinstance(s, str) else s for s in out[last:]]
    return [s for s in out if s != ""]


def _pieces(segments: Sequence[Segment]) -> Iterator[Piece]:
    for segment in segments:
        if isinstance(segment, ActionPiece):
            yield segment
        else:
            yield from (TextPiece(chunk) for chunk in _split_words(segment))


def _split_words(text: str) -> Iterator[str]:
    """Pieces of a word with the punctuation around it and the spaces after it."""
    for match in _PIECE.finditer(text):
        lead, word, tail = match.group(1), match.group(2) or "", match.group(3)
        if len(word) <= _MAX_WORD_CHARS:
            if match.group():
                yield match.group()
            continue
        chunks = [word[i : i + _MAX_WORD_CHARS] for i in range(0, len(word), _MAX_WORD_CHARS)]
        chunks[0] = lead + chunks[0]
        chunks[-1] += tail
        yield from chunks


# Settings validation: every error names the NPC and the key.


def _number(
    npc: NpcConfig, settings: Mapping[str, Any], key: str, default: float, upper: float = math.inf
) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"NPC {npc.id!r}: backend setting {key!r} must be a number, got {value!r}")
    if not 0 <= value <= upper:
        bound = f"between 0 and {upper:g}" if upper < math.inf else ">= 0"
        raise ValueError(f"NPC {npc.id!r}: backend setting {key!r} must be {bound}, got {value!r}")
    return float(value)


def _long_reply_chars(npc: NpcConfig, settings: Mapping[str, Any]) -> int:
    value = settings.get("long_reply_chars", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_LONG_REPLY:
        raise ValueError(
            f"NPC {npc.id!r}: backend setting 'long_reply_chars' must be an integer "
            f"from 0 to {_MAX_LONG_REPLY}, got {value!r}"
        )
    return value


def _topics(
    npc: NpcConfig, settings: Mapping[str, Any], actions: frozenset[str]
) -> tuple[Topic, ...]:
    value = settings.get("topics", [])
    if not isinstance(value, list):
        raise ValueError(f"NPC {npc.id!r}: backend setting 'topics' must be a list, got {value!r}")
    return tuple(_topic(npc, raw, i, actions) for i, raw in enumerate(value))


def _defaults(npc: NpcConfig, settings: Mapping[str, Any]) -> dict[str, str]:
    value = settings.get("defaults", {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, _SCALAR) for k, v in value.items()
    ):
        raise ValueError(
            f"NPC {npc.id!r}: backend setting 'defaults' must be a table of "
            f"placeholder names to strings or numbers, got {value!r}"
        )
    return {k: _display(v) for k, v in value.items()}


def _topic(npc: NpcConfig, raw: Any, index: int, actions: frozenset[str]) -> Topic:
    where = f"NPC {npc.id!r}, topics[{index}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: each topic must be a table, got {raw!r}")
    for key in raw:
        if key not in TOPIC_KEYS:
            raise unknown_key(f"{where} ([[backend.topics]])", key, TOPIC_KEYS)
    name = raw.get("name", f"topics[{index}]")
    if not isinstance(name, str):
        raise ValueError(f"{where}: 'name' must be a string, got {name!r}")
    where = f"NPC {npc.id!r}, topic {name!r}"
    keywords = tuple(_keyword(k, where) for k in _strings(raw.get("keywords"), "keywords", where))
    replies = tuple(
        _compile(r, actions, where) for r in _strings(raw.get("replies"), "replies", where)
    )
    return Topic(name, keywords, replies, _conditions(raw.get("when", {}), where))


def _strings(value: Any, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key!r} must be a non-empty list of strings, got {value!r}")
    return value


def _keyword(keyword: str, where: str) -> tuple[str, ...]:
    words = tuple(_KEYWORD_WORD.findall(keyword.casefold()))
    if not words or any(w == "*" for w in words):
        raise ValueError(f"{where}: keyword {keyword!r} has no words to match")
    return words


def _conditions(raw: Any, where: str) -> dict[str, frozenset[str]]:
    error = f"{where}: 'when' must be a table of context keys to a value or list of values"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{error}, got {raw!r}")
    conditions: dict[str, frozenset[str]] = {}
    for key, value in raw.items():
        options = value if isinstance(value, list) else [value]
        if not options or not all(isinstance(v, _SCALAR) for v in options):
            raise ValueError(f"{error}, got {key!r} = {value!r}")
        conditions[key] = frozenset(_display(v).casefold() for v in options)
    return conditions


def _compile(template: str, actions: frozenset[str], where: str) -> Template:
    """Split a reply at its `[[action]]` markers, checking each action exists."""
    segments: list[Segment] = []
    position = 0
    for match in _MARKER.finditer(template):
        segments.append(template[position : match.start()])
        segments.append(_marker(match.group(1), actions, where))
        position = match.end()
    segments.append(template[position:])
    for segment in segments:
        if isinstance(segment, str) and ("[[" in segment or "]]" in segment):
            raise ValueError(f"{where}: unbalanced action marker in reply {template!r}")
    return tuple(s for s in segments if s != "")


def _marker(body: str, actions: frozenset[str], where: str) -> ActionPiece:
    try:
        name, *pairs = shlex.split(body) or [""]
    except ValueError as exc:
        raise ValueError(f"{where}: bad action marker [[{body}]]: {exc}") from None
    if name not in actions:
        raise ValueError(
            f"{where}: action {name!r} is not one of the NPC's [[actions]] {sorted(actions)}"
        )
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: action {name!r} argument {pair!r} must be key=value")
        args[key] = int(value) if _INT.fullmatch(value) else value
    return ActionPiece(name, args)
