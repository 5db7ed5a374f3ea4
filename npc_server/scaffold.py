"""`npc-server init DIR`: an editable copy of the demo's config and NPC files.

The demo travels in the package (`npc_server/demo/`), where a user should not
edit it; `init` copies it out as `DIR/server.toml` and `DIR/npcs/*.toml`.
The copy loads as it is: `npcs_dir = "npcs"` is relative to the file.
"""

from __future__ import annotations

from pathlib import Path

from npc_server.config import DEFAULT_CONFIG, ConfigError

DEMO_NPCS = DEFAULT_CONFIG.parent / "npcs"
HEADER = (
    "# Written by `npc-server init` from the demo's config; edit freely.\n"
    "# Serve it with: npc-server --config {path}\n"
)


def demo_files(directory: Path) -> dict[Path, str]:
    """What `init` writes: each target path under `directory` and its text."""
    config = directory / "server.toml"
    files = {config: HEADER.format(path=config) + DEFAULT_CONFIG.read_text(encoding="utf-8")}
    for npc in sorted(DEMO_NPCS.glob("*.toml")):
        files[directory / "npcs" / npc.name] = npc.read_text(encoding="utf-8")
    return files


def write_demo(directory: Path, *, force: bool = False) -> list[Path]:
    """Write the demo's config and NPC files into `directory`; the paths written.

    Nothing is written when one of the files exists (unless `force`), so a
    second `init` never clobbers edits.
    """
    files = demo_files(directory)
    existing = [path for path in files if path.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: already exists (pass --force to overwrite)")
    try:
        (directory / "npcs").mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{exc.filename or directory}: cannot write: {exc.strerror}") from None
    return list(files)
