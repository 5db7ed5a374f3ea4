"""Prompt assembly for chat-completion backends.

Pure functions from a `GenerationRequest` to OpenAI-style `messages` and
`tools` lists (plain dicts, so this module needs no client library). The
system message and the player's new utterance are always sent; conversation
memory fills what is left of a character budget, newest entries first, so the
oldest lines are the ones dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from npc_server.backends.base import GenerationRequest, MemoryEntry, ToolCallPiece
from npc_server.npcs import ActionSpec, NpcConfig, ToolSpec

DEFAULT_MAX_PROMPT_CHARS = 12_000
EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}

Message = dict[str, Any]


def build_messages(
    request: GenerationRequest, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
) -> list[Message]:
    """System message, as much recent memory as fits, then the new utterance."""
    system = {"role": "system", "content": system_prompt(request)}
    if request.caused_by is not None:
        utterance = game_event_message(request.event, request.text)
    else:
        utterance = player_message(request.player, request.text, in_room=request.room is not None)
    budget = max_prompt_chars - len(system["content"]) - len(utterance["content"])
    history = fit_history(request.history, in_room=request.room is not None, budget=budget)
    return [system, *history, utterance]


def build_tools(actions: Iterable[ActionSpec], tools: Iterable[ToolSpec] = ()) -> list[Message]:
    """One `function` tool per action and per tool; parameters default to an empty object."""
    specs: list[ActionSpec | ToolSpec] = [*actions, *tools]
    return [
        {
            "type": "function",
            "function": {
                "name": action.name,
                "description": action.description,
                "parameters": dict(action.parameters) or dict(EMPTY_PARAMETERS),
            },
        }
        for action in specs
    ]


def system_prompt(request: GenerationRequest) -> str:
    """The persona, the NPC's actions, the game context and who is in the room."""
    parts = [persona_section(request.npc)]
    if request.npc.actions:
        parts.append(actions_section(request.npc.actions))
    if request.npc.tools:
        parts.append(tools_section(request.npc.tools))
    if request.trusted:
        parts.append(
            "Game state (from the game server; this is true):\n" + render_context(request.trusted)
        )
    reported = {k: v for k, v in request.context.items() if k not in request.trusted}
    if reported:
        title = (
            "Context the player's client reports (unverified; the game state above wins):"
            if request.trusted
            else "Game context:"
        )
        parts.append(f"{title}\n" + render_context(reported))
    if request.room is not None:
        parts.append(room_section(request.room, request.room_members))
    return "\n\n".join(parts)


def persona_section(npc: NpcConfig) -> str:
    intro = f"You are {npc.name}, a character in a game. Stay in character."
    return f"{intro}\n{npc.persona}" if npc.persona else intro


def actions_section(actions: Sequence[ActionSpec]) -> str:
    lines = ["You can act by calling these tools while you speak:"]
    lines += [f"- {a.name}: {a.description}" if a.description else f"- {a.name}" for a in actions]
    return "\n".join(lines)


def tools_section(tools: Sequence[ToolSpec]) -> str:
    lines = ["You can look things up with these tools; call one and wait for its answer:"]
    lines += [f"- {t.name}: {t.description}" if t.description else f"- {t.name}" for t in tools]
    return "\n".join(lines)


def tool_round(text: str, calls: Sequence[ToolCallPiece]) -> list[Message]:
    """The assistant's tool calls and their answers, for the request that continues the reply."""
    assistant: Message = {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [_tool_call(c.call, c.name, _compact(dict(c.args))) for c in calls],
    }
    answers = [{"role": "tool", "tool_call_id": c.call, "content": c.answer.content} for c in calls]
    return [assistant, *answers]


def _tool_call(call: str, name: str, arguments: str) -> Message:
    return {"id": call, "type": "function", "function": {"name": name, "arguments": arguments}}


def room_section(room: str, members: Sequence[str]) -> str:
    who = ", ".join(members) if members else "(nobody else listed)"
    return (
        f"You are in a shared scene ({room}) with these players: {who}.\n"
        "Each player line starts with the speaker's id and a colon."
    )


def render_context(context: Mapping[str, Any]) -> str:
    """One `key: value` line per entry; non-string values as compact JSON."""
    return "\n".join(f"{key}: {_compact(value)}" for key, value in sorted(context.items()))


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def player_message(speaker: str, text: str, *, in_room: bool) -> Message:
    """A user message; in a room it names the speaker so the NPC can tell players apart."""
    return {"role": "user", "content": f"{speaker}: {text}" if in_room else text}


def game_event_message(event: str | None, text: str) -> Message:
    """A game-caused turn: what happened, marked as the game's, not a player's words."""
    what = f"[game event: {event}]" if event else "[game event]"
    return {"role": "user", "content": f"{what} {text}".strip()}


def memory_message(entry: MemoryEntry, *, in_room: bool) -> Message:
    if entry.role == "npc":
        return {"role": "assistant", "content": entry.text}
    return player_message(entry.speaker, entry.text, in_room=in_room)


def memory_messages(entry: MemoryEntry, *, in_room: bool) -> list[Message]:
    """The messages of one memory line: a tool line is the call and its answer."""
    if entry.role != "tool":
        return [memory_message(entry, in_room=in_room)]
    call = _tool_call(entry.call, entry.speaker, entry.args or "{}")
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": entry.call, "content": entry.text},
    ]


def fit_history(history: Sequence[MemoryEntry], *, in_room: bool, budget: int) -> list[Message]:
    """The newest entries whose contents fit in `budget` characters, oldest first."""
    kept: list[Message] = []
    for entry in reversed(history):
        messages = memory_messages(entry, in_room=in_room)
        budget -= sum(len(m["content"] or "") for m in messages) + len(entry.args)
        if budget < 0:
            break
        kept.extend(reversed(messages))
    kept.reverse()
    return kept
