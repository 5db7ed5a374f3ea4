"""What a live server shows that docs/protocol.md's reference does not name:
the fields of /healthz, and the `limits` of a `welcome`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


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


def undocumented_limits(welcome: dict[str, Any]) -> set[str]:
    """The keys of a `welcome`'s `limits` that the frame table's `welcome` row does not
    name in backticks."""
    row = _row("| `welcome` |")
    limits = welcome["limits"]
    assert limits, "a welcome without limits"
    return {key for key in limits if f"`{key}`" not in row}
