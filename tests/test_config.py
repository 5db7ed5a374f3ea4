"""Configuration: TOML file, environment overrides, clear errors."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from npc_server.config import (
    _SECTIONS,
    DEFAULT_CONFIG,
    OTHER_VARIABLES,
    Config,
    ConfigError,
    environment_names,
    load_config,
    with_overrides,
)
from npc_server.settings import MAX_C_INT, RULES
from npc_server.tokens import TokenError, issue_token, verify_token

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_shipped_config_loads_with_demo_npcs() -> None:
    """The packaged demo config (npc_server/demo/server.toml) loads, pointing at the demo NPCs."""
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
    with pytest.raises(ConfigError) as section:
        load_config(path, env={})
    message = str(section.value)
    assert message.startswith(f"{path}: unknown section 'limit' (did you mean 'limits'")
    assert "; valid sections: auth, " in message
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


# Mistakes stop the start: each names the file or variable, the key and what was expected.


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("NPC_SERVER_LIMITS_HEARTBEET", "did you mean NPC_SERVER_LIMITS_HEARTBEAT?"),
        ("NPC_SERVER_SECRT", "did you mean NPC_SERVER_SECRET?"),
        ("NPC_SERVER_NPC_DIR", "did you mean NPC_SERVER_NPCS_DIR"),
        ("NPC_SERVER_XYZZY", "valid names: NPC_SERVER_API_KEY, NPC_SERVER_AUTH_AUTH_TIMEOUT"),
    ],
)
def test_misspelt_environment_variables_are_refused(variable: str, suggestion: str) -> None:
    """An NPC_SERVER_* name nothing reads is an error with the close matches (or all names)."""
    with pytest.raises(ConfigError) as info:
        load_config(env={variable: "1"})
    assert str(info.value).startswith(f"environment variable {variable} is not a setting; ")
    assert suggestion in str(info.value)


def test_the_workers_own_variables_are_never_suggested() -> None:
    """`--workers` sets NPC_SERVER_WORKER_* for its workers: accepted, but no user sets
    them, so a refused name's hint does not offer them."""
    with pytest.raises(ConfigError) as info:
        load_config(env={"NPC_SERVER_XYZZY": "1"})
    assert "NPC_SERVER_WORKER" not in str(info.value)
    assert "NPC_SERVER_SECRET" in str(info.value)
    with pytest.raises(ConfigError) as close:
        load_config(env={"NPC_SERVER_WORKER_FDS": "1"})
    hint = str(close.value).partition("; ")[2]
    assert hint and "NPC_SERVER_WORKER" not in hint


def test_every_documented_variable_is_accepted() -> None:
    """The non-section variables and every section key load without error."""
    env = {name: "x" for name in OTHER_VARIABLES if name not in ("NPC_SERVER_CONFIG",)}
    env.update(NPC_SERVER_HOST="127.0.0.1", NPC_SERVER_PORT="0")
    env.update(NPC_SERVER_CLUSTER_REDIS_URL="redis://127.0.0.1:6379/0")
    assert load_config(env=env).secret == "x"
    assert "NPC_SERVER_LIMITS_SOCKETS_POLICY" in environment_names()


def test_every_setting_has_a_range_rule() -> None:
    """RULES covers every field of every section, so no new setting goes unchecked."""
    config = Config()
    for section, rules in RULES.items():
        names = {f.name for f in fields(getattr(config, section))}
        assert set(rules) == names, section


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        (
            "limits",
            "heartbeat = -1",
            r"\[limits\] heartbeat must be greater than 0 and at most 1000000000 seconds .*, got -1.0",
        ),
        ("limits", "write_timeout = 0", r"\[limits\] write_timeout must be greater than 0"),
        ("limits", "queue_bytes = 0", r"\[limits\] queue_bytes must be greater than 0"),
        ("limits", "rate_per_s = -2.5", r"\[limits\] rate_per_s must be greater than 0"),
        ("limits", "turn_timeout = inf", r"\[limits\] turn_timeout must be a finite number"),
        ("limits", "resume_window = -1", r"\[limits\] resume_window must be 0 or more"),
        (
            "limits",
            'sockets_policy = "kick"',
            r"\[limits\] sockets_policy must be one of 'refuse', 'replace'",
        ),
        ("server", "port = 70000", r"\[server\] port must be a port from 0 .* to 65535"),
        ("server", 'host = ""', r"\[server\] host must be a non-empty string"),
        ("auth", "auth_timeout = 0", r"\[auth\] auth_timeout must be greater than 0"),
        (
            "limits",
            "heartbaet = 5",
            r"\[limits\]: unknown key 'heartbaet' \(did you mean 'heartbeat'",
        ),
    ],
)
def test_values_out_of_range_in_the_file_name_file_and_key(
    tmp_path: Path, section: str, line: str, message: str
) -> None:
    """Out-of-range values and misspelt keys in server.toml are refused with the file's name."""
    path = tmp_path / "server.toml"
    path.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: {message}"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NPC_SERVER_LIMITS_HEARTBEAT", "-1", "must be greater than 0 and at most .*, got -1.0"),
        ("NPC_SERVER_LIMITS_MAX_GENERATIONS", "0", "must be greater than 0 and at most .*, got 0"),
        ("NPC_SERVER_LIMITS_SOCKETS_POLICY", "kick", "must be one of 'refuse', 'replace'"),
        ("NPC_SERVER_PORT", "65536", "must be a port from 0"),
        ("NPC_SERVER_LIMITS_HEARTBEAT", "nan", "must be a finite number"),
    ],
)
def test_values_out_of_range_in_the_environment_name_the_variable(
    variable: str, value: str, message: str
) -> None:
    """The environment goes through the same rules as the file."""
    with pytest.raises(
        ConfigError, match=rf"^environment variable {variable} \(\[\w+\] \w+\) {message}"
    ):
        load_config(env={variable: value})


def test_overrides_go_through_the_same_rules() -> None:
    """with_overrides (tests, CLI flags) refuses what the file would."""
    config = load_config(env={})
    with pytest.raises(ConfigError, match=r"override \[limits\] heartbeat must be greater than 0"):
        with_overrides(config, limits={"heartbeat": 0})
    with pytest.raises(ConfigError, match=r"unknown key 'hartbeat'"):
        with_overrides(config, limits={"hartbeat": 1})


def test_missing_config_files_are_refused(tmp_path: Path) -> None:
    """A config path or NPC_SERVER_CONFIG naming no file is an error, not silent defaults."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{missing}: no such file"):
        load_config(missing, env={})
    with pytest.raises(ConfigError, match=rf"^{missing}: no such file \(NPC_SERVER_CONFIG\)"):
        load_config(env={"NPC_SERVER_CONFIG": str(missing)})


def test_backend_tables_must_be_tables(tmp_path: Path) -> None:
    """[backends] and [overrides] hold one table per backend kind."""
    path = tmp_path / "server.toml"
    path.write_text("[overrides]\nscripted = 1\n")
    with pytest.raises(ConfigError, match=r"\[overrides\] must hold one table per backend kind"):
        load_config(path, env={})


def test_the_shipped_server_toml_lists_every_setting_with_a_comment() -> None:
    """Every key of every section appears in the shipped server.toml, explained on its line."""
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    missing, bare = [], []
    for section, cls in _SECTIONS.items():
        for field in fields(cls):
            if field.name not in doc.get(section, {}):
                missing.append(f"[{section}] {field.name}")
                continue
            line = next(x for x in text.splitlines() if re.match(rf"{field.name}\s*=", x))
            if "#" not in line:
                bare.append(f"[{section}] {field.name}")
    assert missing == [] and bare == [], (missing, bare)


# Upper bounds: a value the rules let through is one the server can use.


def _numeric_settings() -> list[tuple[str, str]]:
    defaults = Config()
    return [
        (section, f.name)
        for section in RULES
        for f in fields(getattr(defaults, section))
        if type(getattr(getattr(defaults, section), f.name)) in (int, float)
    ]


@pytest.mark.parametrize(("section", "key"), _numeric_settings())
def test_every_numeric_setting_has_an_upper_bound(tmp_path: Path, section: str, key: str) -> None:
    """No number passes the rules only to fail later: 2**64 does not fit msgpack's
    integers (welcome.limits), a C int or a timer; every rule says its bound."""
    path = tmp_path / "server.toml"
    path.write_text(f"[{section}]\n{key} = 99999999999999999999\n")
    with pytest.raises(
        ConfigError, match=rf"^{path}: \[{section}\] {key} must be .*(at most|to) \d+"
    ):
        load_config(path, env={})


@pytest.mark.parametrize(
    "key", ["backlog", "tcp_user_timeout_ms", "send_buffer_bytes", "gc_threshold"]
)
def test_socket_options_and_the_collector_take_a_c_int(tmp_path: Path, key: str) -> None:
    """listen(), setsockopt() and gc.set_threshold() take a C int: 2**31 - 1 is the
    largest value accepted, and the error says so."""
    path = tmp_path / "server.toml"
    path.write_text(f"[server]\n{key} = {MAX_C_INT}\n")
    assert getattr(load_config(path, env={}).server, key) == 2**31 - 1
    path.write_text(f"[server]\n{key} = {MAX_C_INT + 1}\n")
    with pytest.raises(ConfigError, match=rf"\[server\] {key} must be .* at most 2147483647"):
        load_config(path, env={})


def test_a_rate_past_2_to_the_53_is_refused_from_the_environment() -> None:
    """rate_per_s is sent as an integer in welcome.limits: 1e20 is refused, not welcomed with 1011."""
    with pytest.raises(
        ConfigError, match=r"NPC_SERVER_LIMITS_RATE_PER_S .* at most 9007199254740992"
    ):
        load_config(env={"NPC_SERVER_LIMITS_RATE_PER_S": "1e20"})


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    """TOML is UTF-8: another encoding is a ConfigError naming the file, not a UnicodeDecodeError."""
    path = tmp_path / "bad8.toml"
    path.write_bytes(b'[server]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://:hunter2@127.0.0.1:notaport/0", "(the port is not a number)"),
        (
            "redis://:hunter2@127.0.0.1:6379/0?socket_timeout=abc",
            "(the option 'socket_timeout' has a value redis-py cannot read)",
        ),
        (
            "redis://:hunter2@127.0.0.1:6379/0?no_such_option=1",
            "(the option 'no_such_option' is not one redis-py knows)",
        ),
        ("redis://:hunter2@127.0.0.1:99999/0", "(the port is out of range 0-65535)"),
        (
            "redis://:hunt/er2@127.0.0.1:6379/0",
            "(the port is not a number; a / ? # [ or ] in the user or password must be",
        ),
        (
            "redis://127.0.0.1:6379/0?password=hunter2&protocol=9",
            "(the protocol option is not 2 or 3)",
        ),
        # redis-py's own AttributeError on this option was a traceback at start.
        ("redis://:hunter2@127.0.0.1:6379/0?retry=1", "(the client cannot read it"),
    ],
)
def test_a_redis_url_redis_py_refuses_is_refused_without_its_password(
    tmp_path: Path, url: str, why: str
) -> None:
    """What redis-py would raise at start (ValueError, TypeError) is found with the
    settings, names the file and key, and never shows the password."""
    path = tmp_path / "server.toml"
    path.write_text(f'[cluster]\nredis_url = "{url}"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: \[cluster\] redis_url must be ") as info:
        load_config(path, env={})
    assert why in str(info.value)
    assert "hunter2" not in str(info.value) and "hunt" not in str(info.value)
    with pytest.raises(ConfigError, match=r"NPC_SERVER_CLUSTER_REDIS_URL") as env_info:
        load_config(env={"NPC_SERVER_CLUSTER_REDIS_URL": url})
    assert "hunt" not in str(env_info.value)


def test_a_redis_url_option_redis_py_fails_on_is_refused_naming_the_key(tmp_path: Path) -> None:
    """`?retry=1` makes redis-py raise AttributeError: a refusal, not a traceback."""
    path = tmp_path / "server.toml"
    path.write_text('[cluster]\nredis_url = "redis://127.0.0.1:6379/0?retry=1"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: \[cluster\] redis_url must be ") as info:
        load_config(path, env={})
    assert "(redis-py cannot read it (AttributeError))" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://:pw@127.0.0.1:6379/0",
        "rediss://cache.example:6380/1",
        "unix:///run/r.sock?db=2",
    ],
)
def test_redis_urls_redis_py_accepts_load(url: str) -> None:
    """The check builds a connection without connecting: nothing needs to listen."""
    assert load_config(env={"NPC_SERVER_CLUSTER_REDIS_URL": url}).cluster.redis_url == url


def test_a_refused_game_url_is_shown_without_its_password() -> None:
    """The game URL may carry credentials too."""
    with pytest.raises(ConfigError, match=r"\[game\] url") as info:
        load_config(env={"NPC_SERVER_GAME_URL": "https://bot:hunter2@game.example/"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "url", "why"),
    [
        ("[game] url", "http://game:s3cret/pa@h/x", "(unusable URL: the port is not a number; "),
        ("[cluster] redis_url", "redis://:s3\\cret/pw@h:6379/0", "(the port is not a number; "),
        ("[cluster] redis_url", "redis://:a]b[@1Zq\\@h:99999", "(the host in [ ] is not an IP; "),
    ],
    ids=["game-port", "redis-backslash", "redis-past-the-at"],
)
def test_a_refused_urls_reason_quotes_nothing_of_its_password(
    tmp_path: Path, key: str, url: str, why: str
) -> None:
    """The client's own text quoted the password: `as 's3cret'` (game), `as 's3\\\\cret'`
    and `'@1Zq\\\\@h:99999' does not appear to be an IPv4 or IPv6 address` (Redis)."""
    section, _, name = key.removeprefix("[").partition("] ")
    path = tmp_path / "server.toml"
    path.write_text(f"[{section}]\n{name} = {json.dumps(url)}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: {key} must be ") and why in message
    for piece in ("s3", "cret", "/pa", "1Zq", "@1Z"):
        assert piece not in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://[invalid", "Invalid IPv6 URL"),
        ("http://127.0.0.1:0", "port 0"),
        ("http://:8080", "not http(s)://<host>"),
    ],
)
def test_a_game_url_the_game_client_cannot_use_is_refused_at_start(url: str, why: str) -> None:
    """They passed the rule and failed every webhook and tool call at run time."""
    with pytest.raises(ConfigError, match=r"\[game\] url") as info:
        load_config(env={"NPC_SERVER_GAME_URL": url})
    assert why in str(info.value)


def test_the_npc_directory_remembers_where_it_was_set(tmp_path: Path) -> None:
    """npcs_origin names the file's key or the variable, for the missing-directory error."""
    path = tmp_path / "server.toml"
    path.write_text('[server]\nnpcs_dir = "/nonexist"\n')
    assert load_config(path, env={}).npcs_origin == f"{path}: [server] npcs_dir"
    from_env = load_config(path, env={"NPC_SERVER_NPCS_DIR": "elsewhere"})
    assert from_env.npcs_path == tmp_path / "elsewhere"
    assert from_env.npcs_origin == "environment variable NPC_SERVER_NPCS_DIR ([server] npcs_dir)"
    with pytest.raises(ConfigError, match=r"NPC_SERVER_NPCS_DIR .* must be a non-empty string"):
        load_config(path, env={"NPC_SERVER_NPCS_DIR": " "})
