"""Terminal plumbing for `npc-chat`: output, stdin, and the server's HTTP side."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
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


def terminal_width(out: TextIO) -> int | None:
    """Columns to wrap at: the terminal's, else `$COLUMNS`; None (no wrapping) for a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) >= 20:
        return int(columns)
    if out.isatty():
        return max(20, shutil.get_terminal_size().columns)
    return None


class Wrapper:
    """Word-wraps streamed text to `width` columns.

    A word is held back until the space after it arrives, so it is never split
    across lines (a word longer than a line is cut at the width).
    """

    def __init__(self, width: int | None) -> None:
        self.width = width
        self.column = 0
        self._word = ""
        self._space = False  # a space is due before the next word on this line

    def feed(self, text: str) -> str:
        """What to write for `text`, given everything fed so far."""
        if self.width is None:
            return text
        out: list[str] = []
        for char in text:
            if char == "\n":
                out += [self.flush(), "\n"]
                self.column, self._space = 0, False
            elif char.isspace():
                out.append(self.flush())
                self._space = self.column > 0
            else:
                self._word += char
        return "".join(out)

    def flush(self) -> str:
        """The held-back word, placed on this line or the next."""
        word, self._word = self._word, ""
        if not word or self.width is None:
            return word
        gap = 1 if self._space else 0
        out = ""
        if self.column > 0 and self.column + gap + len(word) > self.width:
            out, self.column = "\n", 0
        elif gap:
            out, self.column = " ", self.column + 1
        self._space = False
        while len(word) > self.width - self.column:
            cut = self.width - self.column
            out += word[:cut] + "\n"
            word, self.column = word[cut:], 0
        self.column += len(word)
        return out + word

    def start_line(self, column: int) -> None:
        """The cursor is at `column` of a fresh line (after a prefix such as a name)."""
        self._word = ""
        self._space = False
        self.column = column


class Screen:
    """Writes to the terminal: notices on lines of their own, replies word-wrapped.

    While the prompt is showing, a notice clears it, prints itself and draws
    the prompt again, so what the user sees stays readable.
    """

    def __init__(self, out: TextIO, width: int | None = None) -> None:
        self.out = out
        self.at_line_start = True
        self.wrapper = Wrapper(width)
        self.prompt: str | None = None  # the prompt on screen, if any
        self._tty = out.isatty()

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def show_prompt(self, prompt: str) -> None:
        self.end_line()
        self.write(prompt)
        self.prompt = prompt

    def prompt_answered(self) -> None:
        """The user pressed Enter: the prompt line is done."""
        self.prompt = None
        self.at_line_start = True

    def end_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")

    def line(self, text: str) -> None:
        """A notice on a line of its own, wrapped; the prompt is redrawn after it."""
        prompt = self.prompt
        if prompt is not None and self._tty:
            self.write("\r\x1b[K")  # the prompt line, cleared; typed text is in the line buffer
            self.at_line_start = True
        self.end_line()
        width = self.wrapper.width
        lines = textwrap.wrap(text, width, subsequent_indent="  ") if width and text else [text]
        self.write("\n".join(lines) + "\n")
        if prompt is not None:
            self.write(prompt)

    def begin_reply(self, prefix: str) -> None:
        """Start a streamed reply on a fresh line after `prefix` (the speaker's name)."""
        self.end_line()
        self.prompt = None
        self.write(prefix)
        self.wrapper.start_line(len(prefix))

    def stream(self, text: str) -> None:
        self.write(self.wrapper.feed(text))

    def end_reply(self, ending: str = "") -> None:
        self.write(self.wrapper.flush() + self.wrapper.feed(ending) + self.wrapper.flush() + "\n")


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
