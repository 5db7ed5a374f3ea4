"""The log set-up: JSON and text lines, fields, levels per logger, no token in any line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from npc_server.config import ConfigError, load_config
from npc_server.events import AuthFailed, Limited, TurnEnded
from npc_server.logs import LINES, EventLog, configure
from npc_server.tokens import issue_token


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A StringIO the real set-up writes to; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    out = io.StringIO()
    yield out
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])
    for name in ("npc_server.turns", "npc_server.connections"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def ended(**changes: object) -> TurnEnded:
    fields: dict[str, object] = {
        "turn": "t-ab12-7",
        "npc": "merchant",
        "player": "alice",
        "room": None,
        "reason": "interrupted",
        "chars": 40,
        "kept": 12,
        "first_delta_s": 0.0123456789,
        "duration_s": 0.5,
        "interrupt_s": 0.0004,
        "tokens": 9,
    }
    fields.update(changes)
    return TurnEnded(**fields)  # type: ignore[arg-type]


def test_json_lines_carry_the_event_fields(stream: io.StringIO) -> None:
    """--log-format json: one object per line, with turn, player and timings as keys."""
    configure(format="json", stream=stream)
    EventLog()(ended())
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "turn ended" and record["logger"] == "npc_server.turns"
    assert record["level"] == "INFO" and record["event"] == "turn_ended"
    assert (record["turn"], record["player"], record["npc"]) == ("t-ab12-7", "alice", "merchant")
    assert (record["reason"], record["chars"], record["kept"]) == ("interrupted", 40, 12)
    assert record["first_delta_s"] == 0.012346 and record["interrupt_s"] == 0.0004


def test_text_lines_end_with_key_value_pairs(stream: io.StringIO) -> None:
    """Text format: the message, then key=value for every field that has a value."""
    configure(format="text", stream=stream)
    EventLog()(AuthFailed("websocket", "10.0.0.9", 4500, "bad token: Signature failed"))
    line = stream.getvalue().strip()
    assert " INFO npc_server.connections: auth failed event=auth_failed " in line
    assert line.endswith('code=4500 reason="bad token: Signature failed"')


def test_levels_per_logger_silence_one_kind(stream: io.StringIO) -> None:
    """[logging] levels: turns at WARNING hide turn ends, connection lines still show."""
    configure(format="json", levels={"npc_server.turns": "warning"}, stream=stream)
    log = EventLog()
    log(ended())
    log(Limited("turns", "alice"))
    [line] = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "limited"


def test_dropped_frames_are_debug_lines(stream: io.StringIO) -> None:
    """A flood is one Limited(frames) per frame: those lines are DEBUG, not INFO."""
    configure(format="json", stream=stream)
    EventLog()(Limited("frames", "alice"))
    assert stream.getvalue() == ""
    configure(format="json", level="DEBUG", stream=stream)
    EventLog()(Limited("frames", "alice"))
    assert json.loads(stream.getvalue())["level"] == "DEBUG"


def test_tokens_and_secrets_never_reach_a_line(stream: io.StringIO) -> None:
    """Anything shaped like a JWT and the configured secrets are redacted in every format."""
    token = issue_token("the-secret-value-of-this-test-1234", "alice", 60)
    for fmt in ("json", "text"):
        configure(format=fmt, secrets=["the-secret-value-of-this-test-1234"], stream=stream)
        logging.getLogger("npc_server.test").warning(
            "hello with %s signed by %s", token, "the-secret-value-of-this-test-1234"
        )
    out = stream.getvalue()
    assert token not in out and "the-secret-value" not in out
    assert out.count("[redacted]") == 4


def test_configure_twice_keeps_one_handler(stream: io.StringIO) -> None:
    """Calling the set-up again replaces its handler: no line is written twice."""
    configure(format="text", stream=stream)
    configure(format="json", stream=stream)
    logging.getLogger("npc_server.test").warning("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_hypercorn_running_on_line_is_dropped(stream: io.StringIO) -> None:
    """Hypercorn's "Running on" repeats our listening line, so it is filtered out."""
    configure(format="text", stream=stream)
    logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
    logging.getLogger("hypercorn.error").warning("something else")
    assert stream.getvalue().count("\n") == 1 and "something else" in stream.getvalue()


def test_every_event_line_is_documented() -> None:
    """docs/operations.md has a row for each event line, with its logger."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for line in LINES.values():
        assert f"| `{line.message}` | {line.logger} |" in doc, line.message


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NPC_SERVER_LOGGING_FORMAT": "xml"},
            r"\[logging\] format\) must be one of 'text', 'json'",
        ),
        ({"NPC_SERVER_LOGGING_LEVEL": "loud"}, r"\[logging\] level\) must be one of DEBUG"),
        ({"NPC_SERVER_LOGGING_LEVELS": "npc_server"}, r"must be a table or name=value pairs"),
        ({"NPC_SERVER_LOGGING_LEVELS": "a=LOUD"}, r"a table of logger names to levels"),
    ],
)
def test_bad_logging_settings_are_refused(env: dict[str, str], message: str) -> None:
    """[logging] values go through the config rules, naming the variable and key."""
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_logging_levels_come_from_the_file(tmp_path: Path) -> None:
    """[logging] levels is a TOML table of logger names to levels."""
    path = tmp_path / "server.toml"
    path.write_text('[logging]\nformat = "json"\nlevels = { "npc_server.turns" = "debug" }\n')
    config = load_config(path, env={})
    assert config.logging.format == "json"
    assert config.logging.levels == {"npc_server.turns": "debug"}


def test_a_secret_is_scrubbed_json_escaped_and_percent_coded(stream: io.StringIO) -> None:
    """A JSON line escapes `"` and `\\` (the secret went out whole, escaped), and a URL's
    password is written percent-encoded while libraries print it decoded."""
    secret = 'ab"cd\\ef-p%40ss'
    for fmt in ("json", "text"):
        configure(format=fmt, secrets=[secret], stream=stream)
        logging.getLogger("npc_server.test").warning(
            "as given %s; decoded %s", secret, 'ab"cd\\ef-p@ss', extra={"fields": {"k": secret}}
        )
    out = stream.getvalue()
    assert "cd\\\\ef" not in out and "cd\\ef" not in out and "p@ss" not in out, out
    assert "as given" in out and "decoded" in out
