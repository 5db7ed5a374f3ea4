"""What a live server shows that the docs do not name: the fields of /healthz
(docs/protocol.md; its cluster counts, docs/cluster.md), and a `welcome`'s `limits`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
CLUSTER = PROTOCOL.with_name("cluster.md")


def _row(start: str) -> str:
    """The line of the protocol reference's table that starts with `start`."""
    row = next(
        (
            line
            for line in PROTOCOL.read_text(encoding="utf-8").splitlines()
            if line.startswith(start)
        ),
        None,
    )
    assert row is not None, f"no {start!r} row in {PROTOCOL}"
    return row


def undocumented(health: dict[str, Any]) -> set[str]:
    """The fields of a /healthz answer (its own, `cluster`'s, `routing`'s, `broker`'s)
    that the `GET /healthz` row of the protocol reference does not name in backticks."""
    row = _row("| `GET /healthz` |")
    cluster = health.get("cluster") or {}
    fields = {*health, *cluster, *(cluster.get("routing") or {}), *(cluster.get("broker") or {})}
    assert fields, "an empty /healthz answer"
    return {field for field in fields if f"`{field}`" not in row}


def undocumented_cluster_counts(health: dict[str, Any]) -> set[str]:
    """The counts under /healthz `cluster.handover` and `cluster.sockets` that
    docs/cluster.md (where protocol.md sends them) does not name in backticks."""
    cluster = health["cluster"]
    fields = {*cluster["handover"], *cluster["sockets"]}
    assert fields, "no handover or socket counts"
    text = CLUSTER.read_text(encoding="utf-8")
    return {field for field in fields if f"`{field}`" not in text}


def undocumented_limits(welcome: dict[str, Any]) -> set[str]:
    """The keys of a `welcome`'s `limits` that the frame table's `welcome` row does not
    name in backticks."""
    row = _row("| `welcome` |")
    limits = welcome["limits"]
    assert limits, "a welcome without limits"
    return {key for key in limits if f"`{key}`" not in row}


def welcome_example() -> dict[str, Any]:
    """The `welcome` of the reference's examples ("taken from a real server"), parsed."""
    lines = PROTOCOL.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('{"t": "welcome"'))
    text = ""
    for line in lines[start:]:
        text += line
        if text.count("{") == text.count("}"):
            break
    example: dict[str, Any] = json.loads(text)
    return example
