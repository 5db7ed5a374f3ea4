"""Terminal plumbing for `npc-chat`: output, stdin, and the server's HTTP side."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit


def http_base(url: str) -> str:
    """http(s)://host:port for a ws(s):// URL."""
    parts = urlsplit(url)
    return urlunsplit(("https" if parts.scheme == "wss" else "http", parts.netloc, "", "", ""))


def fetch_npcs(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """GET /npcs: [{id, name, greeting}], or [] if the server does not answer it."""
    try:
        with urllib.request.urlopen(f"{http_base(url)}/npcs", timeout=timeout) as response:
            value = json.load(response)
    except (OSError, ValueError):
        return []
    return (
        [n for n in value if isinstance(n, dict) and "id" in n] if isinstance(value, list) else []
    )


def dev_token(url: str, player: str) -> tuple[str | None, str]:
    """A development token for `player`, and how it was (not) obtained."""
    if importlib.util.find_spec("npc_server") is not None:
        command = [sys.executable, "-m", "npc_server", "token", player]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[-1], "npc-server token"
        return None, f"`npc-server token {player}` failed: {done.stderr.strip()[-200:]}"
    body = json.dumps({"player": player}).encode()
    request = urllib.request.Request(
        f"{http_base(url)}/dev/token", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return str(json.load(response)["token"]), "/dev/token"
    except (OSError, ValueError, KeyError):
        return None, "npc-server is not installed here and the server gives no /dev/token"


def parse_context(words: Sequence[str]) -> dict[str, Any]:
    """`key=value` words as a map; numbers and true/false are typed."""
    data: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lstrip("-").isdigit():
            value = int(raw)
        data[key] = value
    return data


class Screen:
    """Writes to the terminal, keeping notices on lines of their own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.at_line_start = True

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")

    def line(self, text: str) -> None:
        self.end_line()
        self.write(text + "\n")


def start_stdin_reader(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Read stdin lines in a daemon thread (a blocked read must not delay exit)."""

    def read() -> None:
        while True:
            line = sys.stdin.readline()
            try:
                loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n") if line else None)
            except RuntimeError:
                return  # the loop is closed: we are exiting
            if not line:
                return

    threading.Thread(target=read, name="stdin", daemon=True).start()
