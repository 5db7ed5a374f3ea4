"""The scripted backend's script: topics, reply templates and their checks.

Read from an NPC's `[backend]` table (docs/npcs.md) when the backend is built;
every error names the NPC and the key. A template is text split at its
`[[name key=value]]` markers: a marker naming one of the NPC's `[[actions]]`
is an action, one naming a `[[tools]]` entry a tool call whose answer the
text after it may use as `{placeholders}`.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from npc_server.backends.base import ActionPiece, ToolCallPiece
from npc_server.config import unknown_key
from npc_server.npcs import NpcConfig

Segment = str | ActionPiece | ToolCallPiece
Template = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Markers:
    """The names a `[[marker]]` may use: the NPC's actions and its tools."""

    actions: frozenset[str]
    tools: frozenset[str] = frozenset()

    @classmethod
    def of(cls, npc: NpcConfig) -> Markers:
        return cls(frozenset(a.name for a in npc.actions), frozenset(t.name for t in npc.tools))


TOPIC_KEYS = frozenset({"name", "keywords", "replies", "when"})
MAX_LONG_REPLY = 1_000_000
SCALAR = (str, int, float, bool)
_MARKER = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_KEYWORD_WORD = re.compile(r"\w+(?:'\w+)*\*?")
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Topic:
    """Replies for one subject; chosen when a keyword occurs and `when` holds."""

    name: str
    keywords: tuple[tuple[str, ...], ...]
    replies: tuple[Template, ...]
    when: Mapping[str, frozenset[str]]
    # The keywords' first words: a say holding none of them skips the topic
    # without scanning it (matching ran on every say, 7% of a busy server's CPU).
    _firsts: frozenset[str] = field(init=False, repr=False, compare=False)
    _first_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        firsts = [keyword[0] for keyword in self.keywords if keyword]
        exact = frozenset(f for f in firsts if not f.endswith("*"))
        object.__setattr__(self, "_firsts", exact)
        object.__setattr__(self, "_first_prefixes", tuple(f[:-1] for f in firsts if f[-1:] == "*"))

    def score(self, words: Sequence[str], context: Mapping[str, Any]) -> tuple[int, int] | None:
        """(keyword hits, conditions met), or None when the topic does not apply.

        Conditions rank second so a context-specific variant beats the generic
        topic it shadows, but never a topic the player named more clearly.
        """
        for key, allowed in self.when.items():
            if key not in context or display(context[key]).casefold() not in allowed:
                return None
        prefixes = self._first_prefixes
        if self._firsts.isdisjoint(words) and not any(w.startswith(prefixes) for w in words):
            return None
        hits = sum(1 for keyword in self.keywords if _contains(words, keyword))
        return (hits, len(self.when)) if hits else None


def display(value: Any) -> str:
    # TOML and msgpack booleans should read as `true`, not Python's `True`.
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _contains(words: Sequence[str], keyword: tuple[str, ...]) -> bool:
    """Whether the keyword's words occur in a row; `word*` matches a prefix."""
    if len(keyword) == 1 and keyword[0][-1:] != "*":
        return keyword[0] in words  # most keywords: one plain word
    return any(
        all(_word_matches(words[i + j], part) for j, part in enumerate(keyword))
        for i in range(len(words) - len(keyword) + 1)
    )


def _word_matches(word: str, pattern: str) -> bool:
    return word.startswith(pattern[:-1]) if pattern.endswith("*") else word == pattern


# Settings validation: every error names the NPC and the key.


def number(
    npc: NpcConfig, settings: Mapping[str, Any], key: str, default: float, upper: float = math.inf
) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"NPC {npc.id!r}: backend setting {key!r} must be a number, got {value!r}")
    if not 0 <= value <= upper:
        bound = f"between 0 and {upper:g}" if upper < math.inf else ">= 0"
        raise ValueError(f"NPC {npc.id!r}: backend setting {key!r} must be {bound}, got {value!r}")
    return float(value)


def long_reply_chars(npc: NpcConfig, settings: Mapping[str, Any]) -> int:
    value = settings.get("long_reply_chars", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LONG_REPLY:
        raise ValueError(
            f"NPC {npc.id!r}: backend setting 'long_reply_chars' must be an integer "
            f"from 0 to {MAX_LONG_REPLY}, got {value!r}"
        )
    return value


def topics(npc: NpcConfig, settings: Mapping[str, Any], actions: Markers) -> tuple[Topic, ...]:
    value = settings.get("topics", [])
    if not isinstance(value, list):
        raise ValueError(f"NPC {npc.id!r}: backend setting 'topics' must be a list, got {value!r}")
    return tuple(_topic(npc, raw, i, actions) for i, raw in enumerate(value))


def defaults(npc: NpcConfig, settings: Mapping[str, Any]) -> dict[str, str]:
    value = settings.get("defaults", {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, SCALAR) for k, v in value.items()
    ):
        raise ValueError(
            f"NPC {npc.id!r}: backend setting 'defaults' must be a table of "
            f"placeholder names to strings or numbers, got {value!r}"
        )
    return {k: display(v) for k, v in value.items()}


def _topic(npc: NpcConfig, raw: Any, index: int, actions: Markers) -> Topic:
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
    keywords = tuple(_keyword(k, where) for k in strings(raw.get("keywords"), "keywords", where))
    replies = tuple(
        compile_template(r, actions, where) for r in strings(raw.get("replies"), "replies", where)
    )
    return Topic(name, keywords, replies, _conditions(raw.get("when", {}), where))


def strings(value: Any, key: str, where: str) -> list[str]:
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
        if not options or not all(isinstance(v, SCALAR) for v in options):
            raise ValueError(f"{error}, got {key!r} = {value!r}")
        conditions[key] = frozenset(display(v).casefold() for v in options)
    return conditions


def compile_template(template: str, actions: Markers, where: str) -> Template:
    """Split a reply at its `[[action]]` and `[[tool]]` markers, checking each name exists."""
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


def _marker(body: str, actions: Markers, where: str) -> ActionPiece | ToolCallPiece:
    try:
        name, *pairs = shlex.split(body) or [""]
    except ValueError as exc:
        raise ValueError(f"{where}: bad action marker [[{body}]]: {exc}") from None
    if name not in actions.actions and name not in actions.tools:
        raise ValueError(
            f"{where}: action {name!r} is not one of the NPC's [[actions]] "
            f"{sorted(actions.actions)} or [[tools]] {sorted(actions.tools)}"
        )
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: action {name!r} argument {pair!r} must be key=value")
        args[key] = int(value) if _INT.fullmatch(value) else value
    return ToolCallPiece(name, args) if name in actions.tools else ActionPiece(name, args)
