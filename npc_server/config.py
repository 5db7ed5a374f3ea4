"""Server configuration: a TOML file (`npc_server/demo/server.toml`), then `NPC_SERVER_*` variables.

Every key of a section can be set from the environment as
`NPC_SERVER_<SECTION>_<KEY>` (e.g. `NPC_SERVER_LIMITS_HEARTBEAT=5`);
`NPC_SERVER_HOST` and `NPC_SERVER_PORT` are short for the server section.
Anything wrong is a `ConfigError` naming the file (or variable), the key and
what was expected: an unknown key or variable, a value of the wrong type or
outside its range (`RULES`), a file that does not exist, cannot be read or is
not UTF-8 text. In production (`[server] production`, `--production`) the API
key and the webhook secret must be at least `MIN_PRODUCTION_KEY_CHARS` long,
and a `[game] url` needs the webhook secret (`check_production`).
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from npc_server.settings import (
    RULES,
    AuthSection,
    ClusterSection,
    GameSection,
    LimitsSection,
    LoggingSection,
    MetricsSection,
    ServerSection,
    WatchSection,
)

PACKAGE_ROOT = Path(__file__).resolve().parent
# The demo travels in the package, so an installed wheel serves it from any directory.
DEFAULT_CONFIG = PACKAGE_ROOT / "demo" / "server.toml"


class ConfigError(ValueError):
    """A configuration key is unknown or has a value of the wrong kind or range."""


def unknown_key(where: str, key: str, valid: Collection[str], kind: str = "key") -> ConfigError:
    """The error for a key (or, with `kind`, a section) that is not one of `valid`: the
    close matches, then all of them."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return ConfigError(
        f"{where}: unknown {kind} {key!r}{hint}; valid {kind}s: {', '.join(sorted(valid))}"
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    auth: AuthSection = field(default_factory=AuthSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    game: GameSection = field(default_factory=GameSection)
    watch: WatchSection = field(default_factory=WatchSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    backend_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    backend_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    npcs_path: Path = PACKAGE_ROOT / "demo" / "npcs"
    # Where npcs_path was set ("<file>: [server] npcs_dir", the variable), for the error
    # when the directory does not exist.
    npcs_origin: str = "[server] npcs_dir"
    secret: str | None = None
    logging: LoggingSection = field(default_factory=LoggingSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    # The file the settings came from (None: defaults only), for error messages.
    path: Path | None = None
    # NPC_SERVER_API_KEY (None: /api/ is off) and NPC_SERVER_WEBHOOK_SECRET.
    api_key: str | None = None
    webhook_secret: str | None = None


_SECTIONS: dict[str, type] = {
    "server": ServerSection,
    "auth": AuthSection,
    "limits": LimitsSection,
    "logging": LoggingSection,
    "metrics": MetricsSection,
    "game": GameSection,
    "watch": WatchSection,
    "cluster": ClusterSection,
}


ENV_PREFIX = "NPC_SERVER_"
# Every variable that is not NPC_SERVER_<SECTION>_<KEY>: a feature that reads
# one adds it here, so that a misspelt name stays an error.
OTHER_VARIABLES: Mapping[str, str] = {
    "NPC_SERVER_CONFIG": "the server TOML file",
    "NPC_SERVER_WORKER_FD": "set by --workers for its workers: the shared listening socket",
    "NPC_SERVER_WORKER_ADMIN_FD": "set by --workers for its workers: the metrics socket",
    "NPC_SERVER_WORKER_INDEX": "set by --workers for its workers: which one",
    "NPC_SERVER_NPCS_DIR": "the NPC directory ([server] npcs_dir)",
    "NPC_SERVER_HOST": "[server] host",
    "NPC_SERVER_PORT": "[server] port",
    "NPC_SERVER_SECRET": "the token secret",
    "NPC_SERVER_LOG_LEVEL": "the log level",
    "NPC_SERVER_API_KEY": "the API key",
    "NPC_SERVER_WEBHOOK_SECRET": "the webhook secret",
}
_SHORT_NAMES = {("server", "host"): "NPC_SERVER_HOST", ("server", "port"): "NPC_SERVER_PORT"}
# Read, but set by npc-server itself, never by a user: not suggested in a hint.
INTERNAL_VARIABLES = frozenset(n for n, what in OTHER_VARIABLES.items() if "set by --" in what)


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def environment_names() -> frozenset[str]:
    """Every NPC_SERVER_* variable the server reads."""
    keyed = {env_name(name, f.name) for name, cls in _SECTIONS.items() for f in fields(cls)}
    return frozenset(keyed | set(OTHER_VARIABLES))


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse an NPC_SERVER_* variable that nothing reads (a typo would be ignored)."""
    valid = environment_names()
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in valid:
            continue
        raise ConfigError(f"environment variable {name} is not a setting; {_env_hint(name, valid)}")


def _env_hint(name: str, valid: Collection[str]) -> str:
    # Compared without the shared prefix, which would make every name look close.
    bare = {v.removeprefix(ENV_PREFIX): v for v in valid if v not in INTERNAL_VARIABLES}
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), bare, n=3, cutoff=0.75)
    if close:
        return "did you mean " + " or ".join(bare[c] for c in close) + "?"
    return "valid names: " + ", ".join(sorted(bare.values()))


def _table(where: str, value: Any) -> dict[str, Any]:
    """A table from TOML, or from the environment as "name=value,name=value"."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"{where} must be a table or name=value pairs, got {value!r}")
        return {k.strip(): v.strip() for k, _, v in pairs}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return dict(value)


def _strings(where: str, value: Any) -> tuple[str, ...]:
    # A list in TOML; comma-separated in the environment.
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return tuple(value)


def _coerce(where: str, value: Any, kind: type) -> Any:
    if kind is dict:
        return _table(where, value)
    if kind is tuple:
        return _strings(where, value)
    if isinstance(value, str) and kind is not str:
        try:
            if kind is bool:
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            value = kind(value)
        except ValueError:
            raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return value


def _checked(section: str, key: str, value: Any, where: str) -> Any:
    """`value` coerced to the field's type and checked against its rule."""
    kind = type(getattr(_SECTIONS[section](), key))
    value = _coerce(where, value, kind)
    rule = RULES[section][key]
    if not rule.ok(value):
        why = rule.why(value)
        raise ConfigError(
            f"{where} must be {rule.expected}, got {rule.shown(value)}"
            + (f" ({why})" if why else "")
        )
    return value


def _section(name: str, raw: Any, env: Mapping[str, str], source: str) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table, got {raw!r}")
    keys = [f.name for f in fields(cls)]
    for key in raw:
        if key not in keys:
            raise unknown_key(f"{source}: [{name}]", key, keys)
    values = {k: _checked(name, k, v, f"{source}: [{name}] {k}") for k, v in raw.items()}
    for key in keys:
        for variable in (env_name(name, key), _SHORT_NAMES.get((name, key))):
            if variable is not None and variable in env:
                where = f"environment variable {variable} ([{name}] {key})"
                values[key] = _checked(name, key, env[variable], where)
    return cls(**values)


def _config_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: `path`, else NPC_SERVER_CONFIG, else the shipped one if present."""
    if path is None and "NPC_SERVER_CONFIG" in env:
        path, origin = Path(env["NPC_SERVER_CONFIG"]), "NPC_SERVER_CONFIG"
    else:
        origin = "the configuration file"
    if path is None:
        return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    if not path.is_file():
        raise ConfigError(f"{path}: no such file ({origin})")
    return path


def read_text(path: Path, error: type[ConfigError]) -> str:
    """A TOML file's text, or `error` naming the file: TOML is UTF-8, and a file that
    cannot be read (a directory, a dangling link, no permission) is no configuration."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (TOML files are UTF-8): byte {exc.start}") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read: {_unreadable(path, exc)}") from None
    return text


def _unreadable(path: Path, exc: OSError) -> str:
    if path.is_dir():
        return "it is a directory"
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    return exc.strerror or str(exc)


def parse_toml(path: Path, error: type[ConfigError]) -> dict[str, Any]:
    """A TOML file's document, or `error` naming the file."""
    try:
        return tomllib.loads(read_text(path, error))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def _read(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    doc = parse_toml(path, ConfigError)
    known = [*_SECTIONS, "backends", "overrides"]
    for name in doc:
        if name not in known:
            raise unknown_key(str(path), name, known, kind="section")
    for name in ("backends", "overrides"):
        tables = doc.get(name, {})
        if not isinstance(tables, Mapping) or not all(
            isinstance(t, Mapping) for t in tables.values()
        ):
            raise ConfigError(f"{path}: [{name}] must hold one table per backend kind")
    return doc


# A bearer key or an HMAC key shorter than this is guessed: production refuses it (the
# token secret has its own, longer minimum: app.MIN_SECRET_BYTES).
MIN_PRODUCTION_KEY_CHARS = 16
_KEY_HINT = "(e.g. openssl rand -hex 16)"


def check_production(config: Config) -> None:
    """In production, refuse an API key or a webhook secret shorter than
    MIN_PRODUCTION_KEY_CHARS, and a `[game] url` without a webhook secret (its webhooks
    and tool calls would go unsigned); outside production nothing is checked here."""
    if not config.server.production:
        return
    least = MIN_PRODUCTION_KEY_CHARS
    for variable, value in (
        ("NPC_SERVER_API_KEY", config.api_key),
        ("NPC_SERVER_WEBHOOK_SECRET", config.webhook_secret),
    ):
        if value is not None and len(value) < least:
            raise ConfigError(
                f"{variable} is {_characters(len(value))}; production ([server] production, "
                f"--production) needs at least {least} random characters {_KEY_HINT}"
            )
    if config.game.url and config.webhook_secret is None:
        raise ConfigError(
            "[game] url (NPC_SERVER_GAME_URL) is set without NPC_SERVER_WEBHOOK_SECRET; "
            "production ([server] production, --production) needs one of at least "
            f"{least} random characters to sign webhooks and tool calls {_KEY_HINT}"
        )


def _characters(count: int) -> str:
    return f"{count} character" + ("" if count == 1 else "s")


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then apply environment overrides."""
    env = os.environ if env is None else env
    check_environment(env)
    path = _config_path(path, env)
    doc = _read(path)
    source = str(path or "defaults")
    sections = {name: _section(name, doc.get(name, {}), env, source) for name in _SECTIONS}
    npcs_dir, npcs_origin = _npcs_dir(sections["server"].npcs_dir, path, env)
    config = Config(
        server=sections["server"],
        auth=sections["auth"],
        limits=sections["limits"],
        game=sections["game"],
        watch=sections["watch"],
        cluster=sections["cluster"],
        backend_defaults=doc.get("backends", {}),
        backend_overrides=doc.get("overrides", {}),
        npcs_path=npcs_dir,
        npcs_origin=npcs_origin,
        secret=env.get("NPC_SERVER_SECRET") or None,
        logging=sections["logging"],
        metrics=sections["metrics"],
        path=path,
        api_key=env.get("NPC_SERVER_API_KEY") or None,
        webhook_secret=env.get("NPC_SERVER_WEBHOOK_SECRET") or None,
    )
    check_production(config)
    return config


def _npcs_dir(from_file: str, path: Path | None, env: Mapping[str, str]) -> tuple[Path, str]:
    """The NPC directory (relative to the file) and where it was set, for the error
    when it does not exist: the file's key, or the variable."""
    if "NPC_SERVER_NPCS_DIR" in env:
        where = "environment variable NPC_SERVER_NPCS_DIR ([server] npcs_dir)"
        value = _checked("server", "npcs_dir", env["NPC_SERVER_NPCS_DIR"], where)
    else:
        where = f"{path}: [server] npcs_dir" if path else "[server] npcs_dir (default)"
        value = from_file
    npcs_dir = Path(value)
    if not npcs_dir.is_absolute():
        npcs_dir = (path.parent if path else DEFAULT_CONFIG.parent) / npcs_dir
    return npcs_dir, where


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy of `config` with some section keys replaced (used by tests and CLI flags).

    Section values go through the same rules as the file's, and the copy through
    `check_production` (`--production` comes this way).
    """
    changes: dict[str, Any] = {}
    for name, values in sections.items():
        if name in _SECTIONS:
            checked = _checked_overrides(name, values)
            changes[name] = replace(getattr(config, name), **checked)
        else:
            changes[name] = values
    changed = replace(config, **changes)
    check_production(changed)
    return changed


def _checked_overrides(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    keys = [f.name for f in fields(_SECTIONS[name])]
    for key in values:
        if key not in keys:
            raise unknown_key(f"override [{name}]", key, keys)
    return {k: _checked(name, k, v, f"override [{name}] {k}") for k, v in values.items()}
