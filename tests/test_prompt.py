"""Prompt assembly: messages and tools built from a generation request."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from npc_server.backends.base import GenerationRequest, MemoryEntry
from npc_server.npcs import ActionSpec, NpcConfig
from npc_server.prompt import build_messages, build_tools, render_context, system_prompt

NPC = NpcConfig(
    id="mira",
    name="Mira the Merchant",
    persona="A shrewd but warm merchant.",
    actions=(
        ActionSpec("open_shop", "Open the shop window"),
        ActionSpec("give_item", parameters={"type": "object", "required": ["item"]}),
    ),
)


BASE = GenerationRequest(npc=NPC, player="p1", text="Hello?")


def request(**changes: Any) -> GenerationRequest:
    return replace(BASE, **changes)


def lines(n: int, size: int = 10) -> tuple[MemoryEntry, ...]:
    """n alternating memory lines of `size` characters, numbered oldest first."""
    return tuple(
        MemoryEntry("player", "p1", f"{i:0{size}d}")
        if i % 2 == 0
        else MemoryEntry("npc", "mira", f"{i:0{size}d}")
        for i in range(n)
    )


def test_persona_system_first_and_utterance_last() -> None:
    """The system message holds name and persona; the new text is the last user message."""
    messages = build_messages(request())
    assert messages[0]["role"] == "system"
    assert "Mira the Merchant" in messages[0]["content"]
    assert "A shrewd but warm merchant." in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Hello?"}


def test_history_maps_roles_in_order() -> None:
    """Player lines become user messages and NPC lines assistant messages, oldest first."""
    history = (MemoryEntry("player", "p1", "Hi"), MemoryEntry("npc", "mira", "Welcome!"))
    messages = build_messages(request(history=history))
    assert messages[1:] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Welcome!"},
        {"role": "user", "content": "Hello?"},
    ]


def test_memory_is_bounded_dropping_oldest_first() -> None:
    """When history exceeds the budget, the oldest entries go and the newest stay."""
    req = request(history=lines(10))
    fixed = len(system_prompt(req)) + len("Hello?")
    messages = build_messages(req, max_prompt_chars=fixed + 35)
    kept = [m["content"] for m in messages[1:-1]]
    assert kept == ["0000000007", "0000000008", "0000000009"]
    assert sum(len(m["content"]) for m in messages) <= fixed + 35


def test_persona_and_utterance_survive_a_tiny_budget() -> None:
    """Even a budget smaller than the system message keeps system and new text."""
    messages = build_messages(request(history=lines(5), text="x" * 50), max_prompt_chars=10)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "x" * 50


def test_room_members_listed_and_speakers_prefixed() -> None:
    """In a room, the system message lists members and player lines name their speaker."""
    history = (MemoryEntry("player", "p2", "Anyone here?"), MemoryEntry("npc", "mira", "Yes."))
    req = request(room="tavern", room_members=("p1", "p2"), history=history)
    messages = build_messages(req)
    assert "tavern" in messages[0]["content"]
    assert "p1, p2" in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "p2: Anyone here?"}
    assert messages[2] == {"role": "assistant", "content": "Yes."}
    assert messages[-1] == {"role": "user", "content": "p1: Hello?"}


def test_no_room_means_no_prefix_and_no_member_list() -> None:
    """Outside a room, player text is sent as is and no scene is described."""
    messages = build_messages(request())
    assert "shared scene" not in messages[0]["content"]
    assert messages[-1]["content"] == "Hello?"


def test_context_rendered_compactly_in_system_message() -> None:
    """Game context becomes sorted `key: value` lines with compact JSON for structures."""
    context = {"location": "market", "quest": {"stage": 2, "done": False}, "gold": 40}
    assert render_context(context) == (
        'gold: 40\nlocation: market\nquest: {"done":false,"stage":2}'
    )
    assert render_context(context) in build_messages(request(context=context))[0]["content"]


def test_actions_described_in_system_message() -> None:
    """Each action is listed by name, with its description when it has one."""
    prompt = system_prompt(request())
    assert "- open_shop: Open the shop window" in prompt
    assert "- give_item" in prompt


def test_tools_schema_from_actions() -> None:
    """Actions become function tools; missing parameters default to an empty object schema."""
    assert build_tools(NPC.actions) == [
        {
            "type": "function",
            "function": {
                "name": "open_shop",
                "description": "Open the shop window",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "give_item",
                "description": "",
                "parameters": {"type": "object", "required": ["item"]},
            },
        },
    ]


def test_npc_without_actions_has_no_tools_or_action_text() -> None:
    """An NPC with no actions gets no tools and no action list."""
    npc = NpcConfig(id="bob", name="Bob")
    assert build_tools(npc.actions) == []
    assert "tools" not in system_prompt(request(npc=npc))
