"""The embedded default backend: written replies, streamed like a language model.

Replies come from the NPC's `[backend]` table (documented in docs/npcs.md):
topics matched by keyword and game context, templates with `{placeholders}`
and `[[action key=value]]` markers. A turn is deterministic for its seed, so
tests and benchmarks can replay it exactly, and all pacing goes through an
injected `sleep`, so tests run without waiting; by default through the
loop's `Pacer`, which wakes every turn due in one tick from one timer.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from npc_server.backends.base import (
    ActionPiece,
    GenerationRequest,
    Piece,
    TextPiece,
    ToolAnswer,
    ToolCallPiece,
)
from npc_server.backends.pacer import Pacer, Part, loop_pacer
from npc_server.backends.scripted_script import (
    SCALAR,
    Markers,
    Segment,
    Template,
    Topic,
    compile_template,
    defaults,
    display,
    long_reply_chars,
    number,
    strings,
    topics,
)
from npc_server.config import unknown_key
from npc_server.npcs import NpcConfig

Sleep = Callable[[float], Awaitable[None]]

GREETING_WORDS = frozenset({"hello", "hi", "hey", "greetings", "hail", "howdy"})
DEFAULT_FALLBACK = ('{npc_name} frowns. "I am not sure what you mean."',)
# What the first reply to a returning player begins with (GenerationRequest.returning).
DEFAULT_RETURNING = "Back again, {player}?"
SETTING_KEYS = frozenset(
    {"first_token_ms", "tokens_per_second", "jitter", "long_reply_chars"}
    | {"topics", "fallback", "defaults", "returning"}
)
_MAX_WORD_CHARS = 10  # longer words are split, as a tokenizer would
_MAX_CACHED_PIECES = 4096
_TEXT_PIECES: dict[str, TextPiece] = {}
_MAX_CACHED_LINES = 2048
_MAX_CACHED_LINE_CHARS = 1024  # bounds the cache at a few MB; longer lines are split each time
_LINE_PIECES: dict[str, tuple[TextPiece, ...]] = {}
_MAX_VALUE_CHARS = 80  # context comes from clients; keep one value from flooding a reply
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_WORD = re.compile(r"\w+(?:'\w+)*")
_PIECE = re.compile(r"([^\w\s]*)(\w+(?:['\u2019]\w+)*)?([^\w\s]*\s*)")
# _PIECE ungrouped (`\w*` for `(?:\w+...)?`: the lead took any apostrophe a word could
# start with), and for ASCII text the same with ASCII classes, which sre checks faster.
_PIECE_TEXT = re.compile(r"[^\w\s]*\w*(?:['\u2019]\w+)*[^\w\s]*\s*")
_S = r" \t\n\r\f\v\x1c-\x1f"  # what `\s` matches in ASCII (re.ASCII's `\s` lacks \x1c-\x1f)
_PIECE_ASCII = re.compile(rf"[^\w{_S}]*\w*(?:'\w+)*[^\w{_S}]*[{_S}]*", re.ASCII)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Pacing:
    """Delays between pieces, in seconds; zero means do not sleep at all."""

    first_token_s: float
    token_interval_s: float
    jitter: float

    @classmethod
    def from_settings(cls, npc: NpcConfig, settings: Mapping[str, Any]) -> Pacing:
        first_token_ms = number(npc, settings, "first_token_ms", 350)
        tokens_per_second = number(npc, settings, "tokens_per_second", 25)
        interval = 1 / tokens_per_second if tokens_per_second else 0.0
        return cls(first_token_ms / 1000, interval, number(npc, settings, "jitter", 0, upper=1))

    def delay(self, first: bool, piece: Piece, rng: random.Random | None) -> float:
        """How long to wait before `piece` (`rng` is needed only with jitter)."""
        if first:
            delay = self.first_token_s
        elif isinstance(piece, TextPiece):
            delay = self.token_interval_s
        else:
            return 0.0  # an action lands right after its text, as a tool call would
        if delay > 0 and self.jitter:
            assert rng is not None
            delay *= 1 + self.jitter * rng.uniform(-1.0, 1.0)
        return delay


class ScriptedBackend:
    """Replies from the NPC file, streamed in word pieces at a set pace."""

    def __init__(
        self,
        npc: NpcConfig,
        settings: Mapping[str, Any],
        *,
        sleep: Sleep | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self._npc = npc
        self._sleep = sleep
        self._pacer = pacer  # None: the running loop's
        for key in settings:
            if key not in SETTING_KEYS:
                raise unknown_key(f"NPC {npc.id!r}: [backend]", key, SETTING_KEYS)
        self._pacing = Pacing.from_settings(npc, settings)
        self._long_reply_chars = long_reply_chars(npc, settings)
        self._defaults = defaults(npc, settings)
        actions = Markers.of(npc)
        self._topics = topics(npc, settings, actions)
        where = f"NPC {npc.id!r}, backend setting"
        fallback = strings(settings.get("fallback", list(DEFAULT_FALLBACK)), "fallback", where)
        self._fallback = tuple(
            compile_template(reply, actions, f"{where} 'fallback'") for reply in fallback
        )
        self._returning = _text_setting(npc, settings, "returning", DEFAULT_RETURNING)
        where = f"NPC {npc.id!r}, greeting"
        self._greeting = compile_template(npc.greeting, actions, where) if npc.greeting else None
        templates = [r for t in self._topics for r in t.replies] + list(self._fallback)
        # Continuations for long replies are text only: an action repeated
        # every few sentences would spam the player.
        self._filler = tuple("".join(s for s in t if isinstance(s, str)) for t in templates)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        """Stream one reply: word pieces, with actions and tool calls where their markers stood.

        The text after a tool call is filled in once it is answered: the answer's
        fields become placeholders. Unanswered (no game server, a timeout, an
        error), those placeholders take the NPC's `defaults`: the fallback.
        """
        sleep = self._sleep  # tests: each delay waited as it comes
        pacer = None if sleep is not None else (self._pacer or loop_pacer())
        for part in self.plan(request):
            if isinstance(part, ToolCallPiece):
                yield part
                continue
            due = 0.0 if pacer is None else pacer.time()  # kept from the part's start, as play()
            for delay, piece in zip(part.delays, part.pieces, strict=True):
                if delay <= 0:
                    # Unpaced, still give the loop a turn per piece: a generator that
                    # never awaits would starve every socket's writer until it ends.
                    await asyncio.sleep(0)
                elif pacer is None:
                    assert sleep is not None
                    await sleep(delay)
                else:
                    due += delay
                    await pacer.wait_until(due)
                yield piece

    async def deliver(
        self,
        request: GenerationRequest,
        take: Callable[[Piece], None],
        finished: Callable[[], None] | None = None,
    ) -> AsyncIterator[ToolCallPiece]:
        """The same reply at the same pace as `generate()` (each part's pieces kept to
        its schedule from the part's start), each piece handed to `take` from the
        pacer's timer.

        No task wakes per piece (the caller's waits once per part of the reply);
        tool calls are yielded for the caller to answer before the reply goes on.
        `finished()` runs right after the reply's last piece, in the same
        callback (a turn can end there, before its last piece is written).
        Cancelling the caller stops the pieces. With an injected `sleep` (tests)
        each piece waits through it, in the caller's task.
        """
        if self._sleep is not None:  # tests: each piece waits in the caller's task
            async for piece in self.generate(request):
                if isinstance(piece, ToolCallPiece):
                    yield piece
                else:
                    take(piece)
            if finished is not None:
                finished()
            return
        pacer = self._pacer or loop_pacer()
        for part in self.plan(request):
            if isinstance(part, ToolCallPiece):
                yield part
            else:
                await pacer.play(part, take, finished if part.last else None)

    def plan(self, request: GenerationRequest) -> Iterator[Part | ToolCallPiece]:
        """The reply as parts of paced pieces, each part ending at a tool call.

        A part after a tool call is made once the caller has answered it.
        """
        key = f"{request.seed}:{self._npc.id}:{request.text}"
        # Pacing has its own generator so jitter never changes which reply is chosen.
        choice_rng = random.Random(key)
        pacing_rng = random.Random(f"{key}:pacing") if self._pacing.jitter else None
        values = self._values(request)
        parts = _split_at_tools(self._choose(request, choice_rng))
        first = True
        for index, (part, tool) in enumerate(parts):
            segments = _tidy([_fill(s, values) for s in part])
            if index == 0 and request.returning:
                segments = self._welcome_back(segments, values)
            if index == len(parts) - 1:
                segments = self._lengthen(segments, values, choice_rng)
            if not first and segments and isinstance(segments[0], str):
                segments[0] = " " + segments[0]  # the space the marker stood in
            # Only text among the segments: only text among the pieces (checked per segment).
            text_only = all(isinstance(s, str) for s in segments)
            paced = self._paced(_pieces(segments), first, pacing_rng, text_only)
            paced.last = tool is None
            first = first and not paced
            yield paced
            if tool is not None:
                call = ToolCallPiece(tool.name, dict(tool.args))
                yield call
                _learn(values, call)

    def _paced(
        self, pieces: list[Piece], first: bool, rng: random.Random | None, text_only: bool
    ) -> Part:
        pacing = self._pacing
        if pacing.jitter or not text_only:
            delays = []
            for piece in pieces:
                delays.append(pacing.delay(first, piece, rng))
                first = False
            return Part(pieces, delays)
        # Unjittered text: one delay for all but the first piece.
        delays = [pacing.token_interval_s] * len(pieces)
        if first and pieces:
            delays[0] = pacing.delay(True, pieces[0], rng)
        return Part(pieces, delays)

    async def aclose(self) -> None:
        """Nothing to release: the script lives in memory."""

    def _welcome_back(self, segments: list[Segment], values: Mapping[str, str]) -> list[Segment]:
        """The reply led by the `returning` line: the NPC remembers this player."""
        line = _collapse(_fill_text(self._returning, values)).strip()
        if not line:
            return segments
        return [line + " " if segments else line, *segments]

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
            if isinstance(key, str) and isinstance(value, SCALAR):
                values[key] = display(value)[:_MAX_VALUE_CHARS]
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
        filled = (_collapse(_fill_text(f, values)).strip() for f in self._filler)
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


def _text_setting(npc: NpcConfig, settings: Mapping[str, Any], key: str, default: str) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str) or "[[" in value:
        raise ValueError(
            f"NPC {npc.id!r}: backend setting {key!r} must be text (no [[markers]]), got {value!r}"
        )
    return value


# Matching and rendering.


def _split_at_tools(template: Template) -> list[tuple[Template, ToolCallPiece | None]]:
    """The template in parts, each ending at a tool call (the last at the end)."""
    parts: list[tuple[Template, ToolCallPiece | None]] = []
    start = 0
    for i, segment in enumerate(template):
        if isinstance(segment, ToolCallPiece):
            parts.append((template[start:i], segment))
            start = i + 1
    parts.append((template[start:], None))
    return parts


def _learn(values: dict[str, str], call: ToolCallPiece) -> None:
    """An answered call's fields (or its scalar result, as `{tool}`) become placeholders."""
    answer: ToolAnswer = call.answer
    if answer.status != "answered":
        return
    result = answer.result
    fields = result if isinstance(result, dict) else {call.name: result}
    fixed = {k: values[k] for k in ("player", "npc_name", "npc_id", "room")}
    for key, value in fields.items():
        if isinstance(key, str) and isinstance(value, SCALAR):
            values[key] = display(value)[:_MAX_VALUE_CHARS]
    values.update(fixed)


def _fill(segment: Segment, values: Mapping[str, str]) -> Segment:
    if isinstance(segment, ToolCallPiece):
        return ToolCallPiece(segment.name, dict(segment.args))
    if isinstance(segment, ActionPiece):
        # A fresh piece per turn, so one consumer changing args cannot touch another's.
        return ActionPiece(segment.name, dict(segment.args))
    return _fill_text(segment, values)


def _fill_text(text: str, values: Mapping[str, str]) -> str:
    """Replace `{name}` placeholders; unknown names become empty, never an error."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def _collapse(text: str) -> str:
    """Every run of whitespace as one space."""
    # Already so when no two spaces meet and no other whitespace is in it (all
    # whitespace but " " is unprintable): a scan instead of a substitution per space.
    if "  " not in text and text.isprintable():
        return text
    return _SPACE.sub(" ", text)


def _tidy(segments: Sequence[Segment]) -> list[Segment]:
    """Collapse whitespace, also across removed markers, and trim both ends."""
    out: list[Segment] = []
    after_space = True  # strips leading space of the reply
    for segment in segments:
        if not isinstance(segment, str):
            out.append(segment)
            continue
        text = _collapse(segment)
        text = text.lstrip(" ") if after_space else text
        if text:
            out.append(text)
            after_space = text.endswith(" ")
    last = max((i for i, s in enumerate(out) if isinstance(s, str)), default=-1)
    out[last:] = [s.rstrip(" ") if isinstance(s, str) else s for s in out[last:]]
    return [s for s in out if s != ""]


def _pieces(segments: Sequence[Segment]) -> list[Piece]:
    """The turn's pieces, split once per line (no generator per piece)."""
    pieces: list[Piece] = []
    for segment in segments:
        if isinstance(segment, str):
            pieces.extend(_line_pieces(segment))
        else:
            pieces.append(segment)
    return pieces


def _line_pieces(text: str) -> tuple[TextPiece, ...]:
    """The pieces of one line of a reply, from a bounded cache.

    A player who asks again gets the same lines (their placeholders filled the
    same way): a dict lookup per line instead of a split per turn.
    """
    cache = _LINE_PIECES
    found = cache.get(text)
    if found is None:
        found = tuple(_text_pieces(_split_words(text)))
        if len(text) <= _MAX_CACHED_LINE_CHARS:
            if len(cache) >= _MAX_CACHED_LINES:
                cache.clear()
            cache[text] = found
    return found


def _text_pieces(texts: list[str]) -> list[TextPiece]:
    """A piece per text; the same (immutable) piece for the same text, from a bounded cache.

    A script's replies reuse their words turn after turn: a dict lookup per
    piece instead of building a frozen dataclass per piece.
    """
    cache = _TEXT_PIECES
    out = []
    for text in texts:
        piece = cache.get(text)
        if piece is None:
            if len(cache) >= _MAX_CACHED_PIECES:
                cache.clear()
            piece = cache[text] = TextPiece(text)
        out.append(piece)
    return out


def _split_words(text: str) -> list[str]:
    """Pieces of a word with the punctuation around it and the spaces after it."""
    # One pass in C; only a piece longer than a word may hold a word to split.
    found = (_PIECE_ASCII if text.isascii() else _PIECE_TEXT).findall(text)
    if max(map(len, found)) <= _MAX_WORD_CHARS:  # findall always ends with an empty match
        return [piece for piece in found if piece]
    pieces: list[str] = []
    for piece in found:
        if len(piece) <= _MAX_WORD_CHARS:
            if piece:
                pieces.append(piece)
            continue
        match = _PIECE.match(piece)
        assert match is not None  # every part of the pattern is optional
        lead, word, tail = match.group(1), match.group(2) or "", match.group(3)
        if len(word) <= _MAX_WORD_CHARS:
            pieces.append(piece)
            continue
        chunks = [word[i : i + _MAX_WORD_CHARS] for i in range(0, len(word), _MAX_WORD_CHARS)]
        chunks[0] = lead + chunks[0]
        chunks[-1] += tail
        pieces.extend(chunks)
    return pieces
