"""Log set-up (text or JSON lines on stderr, levels per logger) and the event log.

`configure()` installs one handler on the root logger; calling it again
replaces it. `EventLog` turns a node's events (npc_server.events) into one
line each, with the event's fields: in JSON as keys (`session`, `player`,
`turn`, ...), in text as `key=value` after the message. Tokens never reach a
line: events carry none, and every line is scrubbed of anything shaped like
a JWT and of the secrets given to `configure()`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, unquote

from npc_server.events import NodeEvent, event_fields

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Hypercorn's own "Running on ..." repeats our listening line (printed once by serve).
_REPEATED_STARTUP = ("Running on ",)


class _Scrubber:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Each secret as a line may hold it: as given, JSON-escaped (a JSON line, a quoted
        # field: `"` and `\` escaped), and percent-decoded or -encoded (a URL's password
        # is written encoded, and libraries print it decoded). Longest first.
        forms = set()
        for secret in secrets:
            if secret:
                coded = {secret, unquote(secret), quote(secret, safe="")}
                forms |= coded | {json.dumps(f, ensure_ascii=False)[1:-1] for f in coded}
        self.secrets = sorted((f for f in forms if f), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = JWT.sub(REDACTED, text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (`extra={"fields": {...}}`)."""
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, Mapping) else {}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` (None values left out)."""

    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{k}={_text(v)}" for k, v in record_fields(record).items() if v is not None]
        if pairs:
            head, sep, tail = line.partition("\n")  # a traceback stays below the pairs
            line = f"{head} {' '.join(pairs)}{sep}{tail}"
        return self.scrub(line)


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' ="') else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        body: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            body.setdefault(key, value)
        if record.exc_info:
            body["traceback"] = self.formatException(record.exc_info)
        return self.scrub(json.dumps(body, default=str, ensure_ascii=False))


def sparse(count: int) -> bool:
    """Whether the `count`th occurrence of a kind is logged: the 1st, 2nd, 4th, 8th ...
    (webhook drops, failed tool calls, a model's skipped calls): what repeats at event
    or token rate is in the log, without a line each."""
    return count & (count - 1) == 0


class _DropRepeatedStartup(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_REPEATED_STARTUP)


_HANDLER_MARK = "_npc_server_handler"
_STARTUP_FILTER = _DropRepeatedStartup()


def configure(
    format: str = "text",
    level: str = "INFO",
    levels: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    hypercorn_startup: bool = False,
) -> logging.Handler:
    """Send every log line to `stream` (stderr) in `format`; returns the handler.
    `hypercorn_startup`: keep Hypercorn's "Running on" line (under plain Hypercorn it
    is the only line with the address; npc-server prints its own)."""
    scrub = _Scrubber(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(scrub) if format == "json" else TextFormatter(scrub)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value.upper())
    hypercorn = logging.getLogger("hypercorn.error")
    if hypercorn_startup:
        hypercorn.removeFilter(_STARTUP_FILTER)
    elif _STARTUP_FILTER not in hypercorn.filters:
        hypercorn.addFilter(_STARTUP_FILTER)
    return handler


@dataclass(frozen=True, slots=True)
class _Line:
    logger: str
    level: int
    message: str


CONNECTIONS = "npc_server.connections"
TURNS = "npc_server.turns"
BACKENDS = "npc_server.backends"
NODE = "npc_server.node"

# What each event kind becomes; docs/operations.md lists the same.
LINES: Mapping[str, _Line] = {
    "connected": _Line(CONNECTIONS, logging.INFO, "connected"),
    "auth_failed": _Line(CONNECTIONS, logging.INFO, "auth failed"),
    "session": _Line(CONNECTIONS, logging.INFO, "session attached"),
    "closed": _Line(CONNECTIONS, logging.INFO, "closed"),
    "limited": _Line(CONNECTIONS, logging.INFO, "limited"),
    "turn_started": _Line(TURNS, logging.DEBUG, "turn started"),
    "turn_ended": _Line(TURNS, logging.INFO, "turn ended"),
    "backend_error": _Line(BACKENDS, logging.WARNING, "backend error"),
    "draining": _Line(NODE, logging.INFO, "draining"),
}
# One dropped frame is one event: a flooder would fill the log at INFO.
_QUIET_LIMITS = frozenset({"frames"})


class EventLog:
    """A node.events listener writing one line per event."""

    def __init__(self) -> None:
        self._loggers = {line.logger: logging.getLogger(line.logger) for line in LINES.values()}

    def __call__(self, event: NodeEvent) -> None:
        line = LINES.get(event.KIND)
        if line is None:
            return
        level = line.level
        logger = self._loggers[line.logger]
        if not logger.isEnabledFor(level):
            return  # before the fields: a copy of every event per turn, for nothing
        fields = event_fields(event)
        if event.KIND == "limited" and fields.get("what") in _QUIET_LIMITS:
            level = logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(level, line.message, extra={"fields": _rounded(fields)})


def _rounded(fields: dict[str, Any]) -> dict[str, Any]:
    # Seconds to the microsecond: enough to read, short to store.
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()}
