"""Generation backends, chosen per NPC by `[backend] kind`.

`build_backends` makes every NPC's backend before the server listens, so a
missing package or a wrong setting stops the start, naming the file and the
key, and no backend (nor its imports) is ever made inside the event loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from npc_server.backends.base import (
    ActionPiece,
    Backend,
    GenerationError,
    GenerationRequest,
    MemoryEntry,
    Piece,
    TextPiece,
    ToolAnswer,
    ToolCallPiece,
    UsagePiece,
)
from npc_server.config import Config, unknown_key
from npc_server.npcs import BACKEND_KINDS, NpcConfig, NpcConfigError

__all__ = [
    "BACKEND_KINDS",
    "ActionPiece",
    "Backend",
    "BackendConfigError",
    "GenerationError",
    "GenerationRequest",
    "MemoryEntry",
    "Piece",
    "TextPiece",
    "ToolAnswer",
    "ToolCallPiece",
    "UsagePiece",
    "build_backends",
    "create_backend",
]


class BackendConfigError(NpcConfigError):
    """An NPC's backend cannot be built: a package is missing or a setting is wrong."""


@dataclass(frozen=True, slots=True)
class BackendKind:
    """Where a kind's class lives, which settings it reads, and the extra it needs."""

    module: str
    factory: str
    setting_keys: Callable[[ModuleType], Collection[str]]
    extra: str | None = None


KINDS: Mapping[str, BackendKind] = {
    "scripted": BackendKind(
        "npc_server.backends.scripted", "ScriptedBackend", lambda m: m.SETTING_KEYS
    ),
    "openai": BackendKind(
        "npc_server.backends.openai",
        "OpenAIBackend",
        lambda m: m.OpenAISettings.__dataclass_fields__.keys(),
        extra="llm",
    ),
}
assert set(KINDS) == set(BACKEND_KINDS), "npcs.BACKEND_KINDS and KINDS must list the same kinds"


def backend_module(kind: str, where: str = "<npc>") -> ModuleType:
    """Import the module of a backend kind; a missing package says how to install it."""
    spec = KINDS[kind]
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        fix = f"; install it with: pip install 'npc-server[{spec.extra}]'" if spec.extra else ""
        raise BackendConfigError(
            f"{where}: [backend] kind = {kind!r} needs the {exc.name or 'missing'!r} package, "
            f"which is not installed{fix}"
        ) from None


def layered_settings(
    npc: NpcConfig,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Server-wide defaults for the kind, then the NPC's `[backend]`, then overrides."""
    kind = npc.backend
    settings: dict[str, Any] = {}
    settings.update((defaults or {}).get(kind, {}))
    settings.update(npc.backend_settings)
    settings.update((overrides or {}).get(kind, {}))
    return settings


def create_backend(
    npc: NpcConfig,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Backend:
    """Build the backend for one NPC (overrides win, e.g. zero pacing for benchmarks)."""
    if npc.backend not in KINDS:
        raise ValueError(
            f"NPC {npc.id!r}: unknown backend kind {npc.backend!r}; expected one of {BACKEND_KINDS}"
        )
    factory = getattr(backend_module(npc.backend, npc.source), KINDS[npc.backend].factory)
    backend: Backend = factory(npc, layered_settings(npc, defaults, overrides))
    return backend


def build_backends(npcs: Mapping[str, NpcConfig], config: Config) -> dict[str, Backend]:
    """Every NPC's backend, keyed by NPC id; errors name the file and the key."""
    server_file = str(config.path or "the server configuration")
    for section, tables in (
        ("backends", config.backend_defaults),
        ("overrides", config.backend_overrides),
    ):
        for kind in tables:
            if kind not in KINDS:
                raise BackendConfigError(
                    str(unknown_key(f"{server_file}: [{section}]", kind, KINDS))
                )
    return {npc_id: _build(npc, config, server_file) for npc_id, npc in npcs.items()}


def _build(npc: NpcConfig, config: Config, server_file: str) -> Backend:
    kind = npc.backend
    valid = KINDS[kind].setting_keys(backend_module(kind, npc.source))
    layers = (
        (f"{server_file}: [backends.{kind}]", config.backend_defaults.get(kind, {})),
        (f"{npc.source}: [backend]", npc.backend_settings),
        (f"{server_file}: [overrides.{kind}]", config.backend_overrides.get(kind, {})),
    )
    for where, table in layers:
        for key in table:
            if key not in valid:
                raise BackendConfigError(str(unknown_key(where, key, valid)))
    try:
        return create_backend(npc, config.backend_defaults, config.backend_overrides)
    except ValueError as exc:
        if isinstance(exc, NpcConfigError):
            raise
        where = _server_key_at_fault(npc, config, server_file) or npc.source
        raise BackendConfigError(f"{where}: {exc}") from None


def _server_key_at_fault(npc: NpcConfig, config: Config, server_file: str) -> str | None:
    """Where in server.toml the value `npc`'s backend refused is ("<file>: [<section>.<kind>]
    <key>"), or None when the NPC's own file is at fault.

    A backend checks its settings merged, and would name the NPC file; a bad
    server-wide value would then be blamed on whichever NPC is built first. The
    key at fault is the one without which the NPC builds. Only run once a build
    failed, so start-up never pays for it.
    """
    defaults, overrides = config.backend_defaults, config.backend_overrides
    kind = npc.backend
    for section, tables in (("overrides", overrides), ("backends", defaults)):
        table = tables.get(kind, {})
        for key in table:
            less = {**tables, kind: {k: v for k, v in table.items() if k != key}}
            trial = (defaults, less) if section == "overrides" else (less, overrides)
            if _builds(npc, *trial):
                return f"{server_file}: [{section}.{kind}] {key}"
    return None


def _builds(
    npc: NpcConfig,
    defaults: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]],
) -> bool:
    """Whether `npc`'s backend builds under these server-wide tables."""
    try:
        create_backend(npc, defaults, overrides)
    except ValueError:
        return False
    return True
