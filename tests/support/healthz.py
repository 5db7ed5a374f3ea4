"""What /healthz shows that docs/protocol.md's reference does not name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def undocumented(health: dict[str, Any]) -> set[str]:
    """The fields of a /healthz answer (its own, `cluster`'s, `routing`'s, `broker`'s)
    that the `GET /healthz` row of the protocol reference does not name in backticks."""
    row = next(
        (
            line
            for line in PROTOCOL.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `GET /healthz` |")
        ),
        None,
    )
    assert row is not None, f"no `GET /healthz` row in {PROTOCOL}"
    cluster = health.get("cluster") or {}
    fields = {*health, *cluster, *(cluster.get("routing") or {}), *(cluster.get("broker") or {})}
    assert fields, "an empty /healthz answer"
    return {field for field in fields if f"`{field}`" not in row}
