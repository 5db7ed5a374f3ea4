"""The ids a node makes: what a game may keep to apply each event once."""

from __future__ import annotations

import re

from npc_server.config import Config
from npc_server.node import Node


def test_ids_carry_48_random_bits_of_their_process() -> None:
    """`<prefix>-<node>-<n>` with a node part of 12 hex digits: with 6 (24 bits) a repeat
    of a node part, and so of every id it makes, came once in ~4,800 process starts,
    and a game that stores applied webhook ids would drop real events as repeats."""
    nodes = [Node(Config(), {}) for _ in range(3)]
    ids = [node.new_id("a") for node in nodes]
    for made, node in zip(ids, nodes, strict=True):
        assert re.fullmatch(r"a-[0-9a-f]{12}-1", made), made
        assert made == f"a-{node.node_id}-1"
    assert len(set(ids)) == 3
