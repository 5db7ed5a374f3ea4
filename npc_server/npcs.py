"""NPC definitions, one TOML file per NPC in the NPC directory (the demo: `npc_server/demo/npcs/`).

A file looks like::

    id = "mira"
    name = "Mira the Merchant"
    persona = "A shrewd but warm merchant..."
    greeting = "Welcome, traveller!"
    busy = "queue"            # or "interrupt": what a `say` to a busy NPC does
    interruptible = true      # may players interrupt its turns at all
    room_interrupt = "speaker"  # or "anyone": who may interrupt a room turn
    max_queue = 3             # queued says per audience when busy = "queue"
    memory_chars = 6000       # conversation memory per player (or room)

    [[actions]]
    name = "open_shop"
    description = "Open the shop window"
    approval = true           # waits for the player's `act`
    timeout_s = 30

    [[tools]]
    name = "check_purse"
    description = "How much gold the player carries"
    answered_by = "game"      # or "client": who answers (docs/game-server.md)
    timeout_s = 3             # default: [game] tool_timeout_s

    [backend]
    kind = "scripted"         # or "openai"
    # ... settings read by that backend

Every key is checked here (unknown ones are refused with the valid ones, as in
`server.toml`); the backend's own settings are checked when it is built at
start-up (`npc_server.backends.build_backends`). Errors name the file and key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from npc_server.config import ConfigError, parse_toml, unknown_key

# The generators an NPC may name in `[backend] kind`; npc_server.backends
# holds how each is built, and checks that it covers exactly these.
BACKEND_KINDS = ("scripted", "openai")


class NpcConfigError(ConfigError):
    """An NPC file has an unknown or missing key, or a value of the wrong kind or range."""


# Actions and tools are functions a model may call: OpenAI's rule for a function's name
# (a model server refuses others), which also keeps a tool's name one plain path segment
# of its game server's URL (`{url}/tools/<name>`).
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
FUNCTION_NAME_RULE = "1 to 64 letters, digits, '_' or '-'"


def _function_name(doc: Mapping[str, Any], where: str) -> None:
    name = doc["name"]
    if isinstance(name, str) and FUNCTION_NAME.fullmatch(name) is None:
        raise NpcConfigError(f"{where}: 'name' must be {FUNCTION_NAME_RULE}, got {name!r}")


class BusyPolicy(StrEnum):
    INTERRUPT = "interrupt"
    QUEUE = "queue"


class RoomInterrupt(StrEnum):
    SPEAKER = "speaker"
    ANYONE = "anyone"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """An action the NPC may take; `parameters` is a JSON schema for its args."""

    name: str
    description: str = ""
    approval: bool = False
    timeout_s: float = 30.0
    parameters: Mapping[str, Any] = field(default_factory=dict)


class AnsweredBy(StrEnum):
    GAME = "game"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A question the NPC may ask mid-reply; its answer comes from the game or the client."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    answered_by: AnsweredBy = AnsweredBy.GAME
    # None: the server's [game] tool_timeout_s.
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class NpcConfig:
    id: str
    name: str
    persona: str = ""
    greeting: str = ""
    busy: BusyPolicy = BusyPolicy.INTERRUPT
    interruptible: bool = True
    room_interrupt: RoomInterrupt = RoomInterrupt.SPEAKER
    max_queue: int = 3
    memory_chars: int = 6000
    actions: tuple[ActionSpec, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    backend: str = "scripted"
    backend_settings: Mapping[str, Any] = field(default_factory=dict)
    # The file it came from, for error messages about its backend.
    source: str = "<npc>"

    def action(self, name: str) -> ActionSpec | None:
        """The spec of the named action, or None if this NPC has no such action."""
        return next((a for a in self.actions if a.name == name), None)

    def tool(self, name: str) -> ToolSpec | None:
        """The spec of the named tool, or None if this NPC has no such tool."""
        return next((t for t in self.tools if t.name == name), None)


Kind = type | tuple[type, ...]
_NUMBER = (int, float)
# What each key must hold beyond its type, as (check, expected); absent: any value.
_RANGES: Mapping[str, tuple[Any, str]] = {
    "id": (lambda v: bool(v.strip()), "a non-empty string"),
    "name": (lambda v: bool(v.strip()), "a non-empty string"),
    "max_queue": (lambda v: v >= 0, "an integer >= 0"),
    "memory_chars": (lambda v: v >= 0, "an integer >= 0"),
    "timeout_s": (lambda v: 0 < v < math.inf, "a number of seconds > 0"),
}
TOP_KEYS: Mapping[str, Kind] = {
    "id": str,
    "name": str,
    "persona": str,
    "greeting": str,
    "busy": str,
    "interruptible": bool,
    "room_interrupt": str,
    "max_queue": int,
    "memory_chars": int,
    "actions": list,
    "tools": list,
    "backend": dict,
}
TOOL_KEYS: Mapping[str, Kind] = {
    "name": str,
    "description": str,
    "parameters": dict,
    "answered_by": str,
    "timeout_s": _NUMBER,
}
ACTION_KEYS: Mapping[str, Kind] = {
    "name": str,
    "description": str,
    "approval": bool,
    "timeout_s": _NUMBER,
    "parameters": dict,
}


def _kind_name(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"dict": "a table", "list": "an array"}
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)


def _check_keys(doc: Mapping[str, Any], schema: Mapping[str, Kind], where: str) -> None:
    """Refuse unknown keys and values of the wrong type or range."""
    for key, value in doc.items():
        if key not in schema:
            raise NpcConfigError(str(unknown_key(where, key, schema)))
        kind = schema[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise NpcConfigError(f"{where}: {key!r} must be {_kind_name(kind)}, got {value!r}")
        check, expected = _RANGES.get(key, (None, ""))
        if check is not None and not check(value):
            raise NpcConfigError(f"{where}: {key!r} must be {expected}, got {value!r}")


def _enum(doc: Mapping[str, Any], key: str, enum: type[StrEnum], where: str) -> Any:
    try:
        return enum(doc[key])
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise NpcConfigError(
            f"{where}: {key!r} must be one of {allowed}, got {doc[key]!r}"
        ) from None


def parse_action(doc: Any, where: str) -> ActionSpec:
    """One `[[actions]]` entry, every key checked."""
    if not isinstance(doc, Mapping):
        raise NpcConfigError(f"{where}: each [[actions]] entry must be a table, got {doc!r}")
    if "name" not in doc:
        raise NpcConfigError(f"{where}: every [[actions]] entry needs a 'name'")
    _check_keys(doc, ACTION_KEYS, where)
    _function_name(doc, where)
    fields = dict(doc)
    if "parameters" in fields:
        fields["parameters"] = dict(fields["parameters"])
    return ActionSpec(**fields)


def _actions(doc: Mapping[str, Any], where: str) -> tuple[ActionSpec, ...]:
    actions = doc.get("actions", [])
    specs = tuple(parse_action(a, f"{where} actions[{i}]") for i, a in enumerate(actions))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise NpcConfigError(f"{where} actions[{i}]: action {spec.name!r} is declared twice")
        seen.add(spec.name)
    return specs


def parse_tool(doc: Any, where: str) -> ToolSpec:
    """One `[[tools]]` entry, every key checked."""
    if not isinstance(doc, Mapping):
        raise NpcConfigError(f"{where}: each [[tools]] entry must be a table, got {doc!r}")
    if "name" not in doc:
        raise NpcConfigError(f"{where}: every [[tools]] entry needs a 'name'")
    _check_keys(doc, TOOL_KEYS, where)
    _function_name(doc, where)
    fields = dict(doc)
    if "parameters" in fields:
        fields["parameters"] = dict(fields["parameters"])
    if "answered_by" in fields:
        fields["answered_by"] = _enum(doc, "answered_by", AnsweredBy, where)
    if "timeout_s" in fields:
        fields["timeout_s"] = float(fields["timeout_s"])
    return ToolSpec(**fields)


def _tools(
    doc: Mapping[str, Any], where: str, actions: tuple[ActionSpec, ...]
) -> tuple[ToolSpec, ...]:
    tools = doc.get("tools", [])
    specs = tuple(parse_tool(t, f"{where} tools[{i}]") for i, t in enumerate(tools))
    # Actions and tools are both functions the model may call: one namespace.
    seen = {a.name for a in actions}
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise NpcConfigError(
                f"{where} tools[{i}]: {spec.name!r} is already an action or a tool of this NPC"
            )
        seen.add(spec.name)
    return specs


def _backend(doc: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    settings = dict(doc.get("backend", {}))
    kind = settings.pop("kind", "scripted")
    if kind not in BACKEND_KINDS:
        known = ", ".join(repr(k) for k in BACKEND_KINDS)
        raise NpcConfigError(f"{where}: [backend] 'kind' must be one of {known}, got {kind!r}")
    return kind, settings


def parse_npc(doc: Mapping[str, Any], where: str = "<npc>") -> NpcConfig:
    """Build an `NpcConfig` from a parsed TOML document, naming bad keys.

    The backend's own settings are checked when it is built
    (`npc_server.backends.build_backends`), before the server listens.
    """
    for key in ("id", "name"):
        if key not in doc:
            raise NpcConfigError(f"{where}: missing required key {key!r}")
    for key in ("actions", "tools"):
        if key in doc and not isinstance(doc[key], list):
            raise NpcConfigError(f"{where}: {key!r} must be an array of tables ([[{key}]])")
    _check_keys(doc, TOP_KEYS, where)
    fields = {k: v for k, v in doc.items() if k not in ("actions", "tools", "backend")}
    for key, enum in (("busy", BusyPolicy), ("room_interrupt", RoomInterrupt)):
        if key in doc:
            fields[key] = _enum(doc, key, enum, where)
    fields["actions"] = _actions(doc, where)
    fields["tools"] = _tools(doc, where, fields["actions"])
    fields["backend"], fields["backend_settings"] = _backend(doc, where)
    return NpcConfig(**fields, source=where)


def load_npc_file(path: Path) -> NpcConfig:
    """Load one NPC file; errors name the file (not TOML, not UTF-8, not readable)."""
    return parse_npc(parse_toml(path, NpcConfigError), str(path))


def load_npcs(directory: Path, where: str = "") -> dict[str, NpcConfig]:
    """Load every `*.toml` in a directory, keyed by NPC id (ids must be unique).

    Dotfiles are skipped: editors leave hidden copies and lock files there
    (Emacs's `.#guard.toml` is a link to nothing), which are no NPCs. `where`
    names the setting the directory came from, for the error when it is missing.
    """
    if not directory.is_dir():
        raise NpcConfigError(f"{where + ': ' if where else ''}{directory}: no such NPC directory")
    npcs: dict[str, NpcConfig] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("."):
            continue
        npc = load_npc_file(path)
        if npc.id in npcs:
            raise NpcConfigError(f"{path}: NPC id {npc.id!r} is defined twice")
        npcs[npc.id] = npc
    return npcs
