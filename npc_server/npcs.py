"""NPC definitions, one TOML file per NPC in `config/npcs/`.

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

    [backend]
    kind = "scripted"         # or "openai"
    # ... settings read by that backend
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class NpcConfigError(ValueError):
    """An NPC file is missing a key or has a value of the wrong kind."""


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
    backend: str = "scripted"
    backend_settings: Mapping[str, Any] = field(default_factory=dict)

    def action(self, name: str) -> ActionSpec | None:
        """The spec of the named action, or None if this NPC has no such action."""
        return next((a for a in self.actions if a.name == name), None)


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise NpcConfigError(f"{where}: {key!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _optional(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    return _get(doc, key, kind, where) if key in doc else None


def _enum(doc: Mapping[str, Any], key: str, enum: type[StrEnum], where: str) -> Any:
    if key not in doc:
        return None
    value = _get(doc, key, str, where)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise NpcConfigError(f"{where}: {key!r} must be one of {allowed}, got {value!r}") from None


def parse_action(doc: Mapping[str, Any], where: str) -> ActionSpec:
    if "name" not in doc:
        raise NpcConfigError(f"{where}: every [[actions]] entry needs a 'name'")
    fields: dict[str, Any] = {"name": _get(doc, "name", str, where)}
    for key, kind in (("description", str), ("approval", bool), ("timeout_s", (int, float))):
        value = _optional(doc, key, kind, where)
        if value is not None:
            fields[key] = value
    if "parameters" in doc:
        fields["parameters"] = dict(_get(doc, "parameters", dict, where))
    return ActionSpec(**fields)


def parse_npc(doc: Mapping[str, Any], where: str = "<npc>") -> NpcConfig:
    """Build an `NpcConfig` from a parsed TOML document, naming bad keys."""
    for key in ("id", "name"):
        if key not in doc:
            raise NpcConfigError(f"{where}: missing required key {key!r}")
    fields: dict[str, Any] = {
        "id": _get(doc, "id", str, where),
        "name": _get(doc, "name", str, where),
    }
    simple: tuple[tuple[str, type | tuple[type, ...]], ...] = (
        ("persona", str),
        ("greeting", str),
        ("interruptible", bool),
        ("max_queue", int),
        ("memory_chars", int),
    )
    for key, kind in simple:
        value = _optional(doc, key, kind, where)
        if value is not None:
            fields[key] = value
    for key, enum in (("busy", BusyPolicy), ("room_interrupt", RoomInterrupt)):
        value = _enum(doc, key, enum, where)
        if value is not None:
            fields[key] = value
    actions = doc.get("actions", [])
    if not isinstance(actions, list):
        raise NpcConfigError(f"{where}: 'actions' must be an array of tables ([[actions]])")
    fields["actions"] = tuple(
        parse_action(a, f"{where} actions[{i}]") for i, a in enumerate(actions)
    )
    backend = dict(doc.get("backend", {}))
    fields["backend"] = backend.pop("kind", "scripted")
    fields["backend_settings"] = backend
    return NpcConfig(**fields)


def load_npc_file(path: Path) -> NpcConfig:
    """Load one NPC file; errors name the file."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise NpcConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_npc(doc, str(path))


def load_npcs(directory: Path) -> dict[str, NpcConfig]:
    """Load every `*.toml` in a directory, keyed by NPC id (ids must be unique)."""
    npcs: dict[str, NpcConfig] = {}
    for path in sorted(directory.glob("*.toml")):
        npc = load_npc_file(path)
        if npc.id in npcs:
            raise NpcConfigError(f"{path}: NPC id {npc.id!r} is defined twice")
        npcs[npc.id] = npc
    return npcs
