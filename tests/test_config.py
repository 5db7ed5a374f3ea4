"""Configuration: TOML file, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from npc_server.config import ConfigError, load_config
from npc_server.tokens import TokenError, issue_token, verify_token

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_shipped_config_loads_with_demo_npcs() -> None:
    """config/server.toml loads and points at the demo NPC folder."""
    config = load_config(env={})
    assert config.server.port == 8700
    assert config.npcs_path.name == "npcs" and (config.npcs_path / "merchant.toml").exists()
    assert config.secret is None


def test_environment_overrides_any_key() -> None:
    """NPC_SERVER_<SECTION>_<KEY> and NPC_SERVER_PORT override the file, typed."""
    env = {
        "NPC_SERVER_LIMITS_HEARTBEAT": "3.5",
        "NPC_SERVER_PORT": "9000",
        "NPC_SERVER_SECRET": "s",
    }
    config = load_config(env=env)
    assert config.limits.heartbeat == 3.5
    assert config.server.port == 9000
    assert config.secret == "s"


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    """Wrong types and unknown keys or sections are refused with their names."""
    with pytest.raises(ConfigError, match="heartbeat"):
        load_config(env={"NPC_SERVER_LIMITS_HEARTBEAT": "soon"})
    path = tmp_path / "c.toml"
    path.write_text("[limit]\nx = 1\n")
    with pytest.raises(ConfigError, match="limit"):
        load_config(path, env={})
    path.write_text("[server]\nport = 'high'\n")
    with pytest.raises(ConfigError, match="port"):
        load_config(path, env={})


def test_tokens_round_trip_and_expire() -> None:
    """A token names its player; an expired one says so; a forged one is refused."""
    assert verify_token(SECRET, issue_token(SECRET, "alice", 60)).player == "alice"
    with pytest.raises(TokenError) as expired:
        verify_token(SECRET, issue_token(SECRET, "alice", -5))
    assert expired.value.expired
    with pytest.raises(TokenError) as forged:
        verify_token(SECRET, issue_token(SECRET + "x", "alice", 60))
    assert not forged.value.expired
