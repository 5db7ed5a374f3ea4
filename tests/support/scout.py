"""`scout`, the test NPC whose tools the client answers (and one the game does)."""

from __future__ import annotations

from npc_server.npcs import NpcConfig, parse_npc


def scout(inventory_s: float = 5.0, glance_s: float = 0.05) -> NpcConfig:
    """`inventory` (client, `inventory_s`), `glance` (client, `glance_s`: meant to time
    out) and `weather` (the game server); "carry", "look" and "weather" ask them."""
    return parse_npc(
        {
            "id": "scout",
            "name": "Scout",
            "tools": [
                {"name": "inventory", "answered_by": "client", "timeout_s": inventory_s},
                {"name": "glance", "answered_by": "client", "timeout_s": glance_s},
                {"name": "weather", "answered_by": "game", "timeout_s": 5},
            ],
            "backend": {
                "kind": "scripted",
                "defaults": {"item": "nothing", "sky": "grey"},
                "topics": [
                    {"keywords": ["carry"], "replies": ["Hm. [[inventory]] You carry {item}."]},
                    {"keywords": ["look"], "replies": ["Hm. [[glance]] I see {item}."]},
                    {
                        "keywords": ["weather"],
                        "replies": ["Let me ask. [[weather]] The sky is {sky}."],
                    },
                ],
            },
        },
        "scout.toml",
    )
