"""Production refuses a guessable API key or webhook secret, as it refuses a short token
secret: `--production` started with `NPC_SERVER_API_KEY=a` (a bearer key found in a few
guesses) and with a `[game] url` but no webhook secret (unsigned webhooks and tool calls),
with a warning at most. Development stays lenient."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import replace

import pytest

from npc_server.config import (
    MIN_PRODUCTION_KEY_CHARS,
    ConfigError,
    check_production,
    load_config,
    with_overrides,
)
from tests.test_cli import assert_refused
from tests.test_cli import run_command as run_cli

SHORT = "k" * (MIN_PRODUCTION_KEY_CHARS - 1)
GOOD = "k" * MIN_PRODUCTION_KEY_CHARS
GAME = {"NPC_SERVER_GAME_URL": "http://127.0.0.1:9"}
REFUSED_WITHIN_S = 20  # a refusal comes before the NPCs load; a start would listen on


def run_command(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The command (tests/test_cli.py's `run_command`), expected to exit: one that starts
    instead fails the test at once."""
    try:
        return run_cli(args, env, timeout=REFUSED_WITHIN_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"it started instead of refusing: {exc.stdout!r}")


@pytest.mark.parametrize("variable", ["NPC_SERVER_API_KEY", "NPC_SERVER_WEBHOOK_SECRET"])
@pytest.mark.parametrize(
    ("args", "env"),
    [(["--production"], {}), ([], {"NPC_SERVER_SERVER_PRODUCTION": "true"})],
    ids=["flag", "variable"],
)
def test_a_short_key_stops_a_production_start(
    variable: str, args: list[str], env: dict[str, str]
) -> None:
    """Exit 2, one line naming the variable, its length and the minimum; not the key."""
    result = run_command(args, {variable: "a", **env})
    assert_refused(result, f"{variable} is 1 character;", "at least 16 random characters")
    assert "[server] production" in result.stderr


def test_a_game_url_without_a_webhook_secret_stops_a_production_start() -> None:
    result = run_command(["--production"], GAME)
    assert_refused(
        result, "[game] url (NPC_SERVER_GAME_URL) is set without NPC_SERVER_WEBHOOK_SECRET"
    )


def test_the_key_is_not_shown_in_the_refusal() -> None:
    key = "sEcReT-" + "x" * 3
    result = run_command(["--production"], {"NPC_SERVER_API_KEY": key})
    assert_refused(result, f"NPC_SERVER_API_KEY is {len(key)} characters")
    assert key not in result.stderr + result.stdout


def test_16_characters_pass_15_do_not_and_only_in_production() -> None:
    """Every way a config is made checks it: the file and the environment (plain Hypercorn
    reads only those), and `with_overrides` (`--production` comes that way)."""
    env = {"NPC_SERVER_API_KEY": GOOD, "NPC_SERVER_WEBHOOK_SECRET": GOOD, **GAME}
    production = load_config(env={**env, "NPC_SERVER_SERVER_PRODUCTION": "1"})
    assert production.server.production and production.api_key == GOOD
    for variable in ("NPC_SERVER_API_KEY", "NPC_SERVER_WEBHOOK_SECRET"):
        weak = load_config(env={**env, variable: SHORT})  # development: it loads
        refused = f"{variable} is {len(SHORT)} characters; production"
        with pytest.raises(ConfigError, match=refused):
            check_production(replace(weak, server=replace(weak.server, production=True)))
        with pytest.raises(ConfigError, match=refused):
            with_overrides(weak, server={"production": True})
        with pytest.raises(ConfigError, match=refused):
            load_config(env={**env, variable: SHORT, "NPC_SERVER_SERVER_PRODUCTION": "1"})
    unsigned = replace(production, webhook_secret=None)
    with pytest.raises(ConfigError, match="without NPC_SERVER_WEBHOOK_SECRET"):
        check_production(unsigned)
    check_production(replace(unsigned, game=replace(unsigned.game, url="")))  # no webhooks
    check_production(replace(production, api_key=None))  # no key: /api/ is off
    # Development: a one-character key and an unsigned game URL still start (with a warning).
    development = load_config(env={"NPC_SERVER_API_KEY": "a", **GAME})
    assert not development.server.production and development.api_key == "a"
    check_production(development)
