"""docs/protocol.md covers every frame type, close code and error code; doc links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from npc_server.protocol import codec, frames
from npc_server.protocol.codes import CloseCode, ErrorCode

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "docs" / "protocol.md"
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "clients").glob("*/README.md")),
    REPO / "npc_server" / "web" / "README.md",
]
# [text](target) and [text]: target, skipping images' alt text rules (same syntax).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def frame_types() -> set[str]:
    """Every wire type string: the `T` of each frame class and each client parser."""
    types = {getattr(cls, "T", "") for cls in vars(frames).values() if isinstance(cls, type)}
    return {t for t in types if isinstance(t, str) and t} | set(codec._PARSERS)


def protocol_text() -> str:
    return PROTOCOL.read_text(encoding="utf-8")


def test_frame_types_are_found() -> None:
    """The collector sees both directions (guards the tests below against finding nothing)."""
    assert {"hello", "say", "welcome", "turn.end", "action.end", "draining"} <= frame_types()


@pytest.mark.parametrize("t", sorted(frame_types()))
def test_every_frame_type_is_documented(t: str) -> None:
    """Each frame type appears in docs/protocol.md as `t` in a table row."""
    assert re.search(rf"^\| `{re.escape(t)}` \|", protocol_text(), re.MULTILINE), (
        f"frame type {t!r} is missing from the frame tables of docs/protocol.md"
    )


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_every_close_code_is_documented(code: CloseCode) -> None:
    """Each close code has a row in the close-code table."""
    assert re.search(rf"^\| {int(code)} \|", protocol_text(), re.MULTILINE), (
        f"close code {int(code)} ({code.name}) is missing from docs/protocol.md"
    )


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    """Each error code has a row in the error-code table."""
    assert re.search(rf"^\| `{code.value}` \|", protocol_text(), re.MULTILINE), (
        f"error code {code.value!r} is missing from docs/protocol.md"
    )


def relative_links(path: Path) -> list[str]:
    """Link targets in a Markdown file that are not URLs or in-page anchors."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    targets = [a or b for a, b in LINK.findall(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    """Every relative link of the READMEs and docs/*.md names a file of this repository."""
    for target in relative_links(doc):
        resolved = (doc.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
        assert resolved.exists(), f"{doc.name} links to a missing file: {target}"


def test_link_check_sees_links() -> None:
    """The link collector finds the README's links (so the check above checks something)."""
    assert "docs/protocol.md" in relative_links(REPO / "README.md")
