"""URLs shown in messages: the password masked wherever it is, the host left to read."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from npc_server.redaction import redacted_reason, redacted_url, url_password


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cretpw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://alice:s3cretpw@10.0.0.5:6379/0", "redis://alice:***@10.0.0.5:6379/0"),
        ("rediss://alice:s3cret%40pw@redis.example:6380", "rediss://alice:***@redis.example:6380"),
        ("redis://s3cretpw@127.0.0.1/0", "redis://***@127.0.0.1/0"),
        ("redis://:s3cret@pw@127.0.0.1/0", "redis://:***@127.0.0.1/0"),
        ("redis://:s3cret/pw@127.0.0.1/0", "redis://***@127.0.0.1/0"),
        ("redis://:s3cret?pw@127.0.0.1/0", "redis://***@127.0.0.1/0"),
        ("redis://127.0.0.1/0?password=s3cretpw&db=1", "redis://127.0.0.1/0?password=***&db=1"),
        ("unix://:s3cretpw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("unix:///run/redis.sock?PASSWORD=s3cretpw", "unix:///run/redis.sock?PASSWORD=***"),
        ("http://game:s3cretpw@[invalid", "http://game:***@[invalid"),
        # An `@` with no host after it, then another: a password cut short by a raw `/`
        # or `?`, once shown as the path (`http://game:***@/s3cret@h/x`).
        ("http://game:@/s3cret@h/x", "http://***@h/x"),
        ("redis://:@:?s3cret@h:6379/0", "redis://***@h:6379/0"),
        ("not a url ?password=s3cretpw", "not a url ?password=***"),
    ],
)
def test_the_password_is_masked(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
    assert "s3cret" not in redacted_url(url)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "unix:///run/redis.sock?db=0", "http://127.0.0.1:8081", ""],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert redacted_url(url) == url


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:s3cretpw@127.0.0.1:6379/0", "s3cretpw"),
        ("redis://alice:s3cret/pw@10.0.0.5/0", "s3cret/pw"),
        ("redis://127.0.0.1/0?db=1&password=s3cretpw", "s3cretpw"),
        ("redis://127.0.0.1/0", ""),
        ("", ""),
    ],
)
def test_a_urls_password_is_found_for_the_log_scrubber(url: str, password: str) -> None:
    assert url_password(url) == password


def test_the_commands_logs_scrub_the_redis_and_game_passwords(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's error text may print the URL its own way: the passwords of the
    configured URLs go from every line, short ones excepted (they would mangle it)."""
    import argparse
    import logging

    from npc_server.cli import configure_logging
    from npc_server.config import load_config, with_overrides

    config = with_overrides(
        load_config(None),
        cluster={"redis_url": "redis://:s3cretpw@127.0.0.1/0"},
        game={"url": "http://game:pw@127.0.0.1:9"},
    )
    from npc_server import logs

    args = argparse.Namespace(log_format="text", log_level="INFO")
    root = logging.getLogger()
    level = root.level
    configure_logging(args, config)
    try:
        logging.getLogger("redis").warning("AUTH s3cretpw failed; the game's pw is short")
        err = capsys.readouterr().err
    finally:
        for handler in [h for h in root.handlers if getattr(h, logs._HANDLER_MARK, False)]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert "s3cretpw" not in err and "AUTH " in err
    assert "short" in err and "pw is" in err  # a 2-character password is left alone


@pytest.mark.parametrize(
    "url",
    [
        "https://game.example/hooks?notify=ops@example.com",
        "http://game:8080/npc/@hooks",
        "http://[::1]:80/a@b",
    ],
)
def test_an_at_sign_in_the_path_or_query_of_a_plain_host_is_left_alone(url: str) -> None:
    """It showed `https://***@example.com`: the host hidden and a wrong one shown; and
    `8080/npc/` counted as a password, scrubbed from every log line."""
    assert redacted_url(url) == url
    assert url_password(url) == ""


def read_by_clients(url: str) -> dict[str, str]:
    """The password redis-py (for a Redis URL) and httpx read from `url`, decoded ("":
    none); a client that refuses the URL is left out."""
    import httpx
    from redis.asyncio import ConnectionPool

    read = {}
    if url.startswith(("redis://", "rediss://")):
        with contextlib.suppress(ValueError):
            read["redis"] = ConnectionPool.from_url(url).connection_kwargs.get("password") or ""
    with contextlib.suppress(httpx.InvalidURL):
        read["httpx"] = httpx.URL(url).password
    return read


@pytest.mark.parametrize(
    ("url", "shown", "read"),
    [
        # Both clients read `12` as the port of host `user`: no password, the host shown.
        (
            "redis://user:12/3@host:6379/0",
            "redis://user:12/3@host:6379/0",
            {"redis": "", "httpx": ""},
        ),
        ("redis://:p@ss@host", "redis://:***@host", {"redis": "p@ss", "httpx": "p@ss"}),
        ("rediss://u:pa%2Fss@h", "rediss://u:***@h", {"redis": "pa/ss", "httpx": "pa/ss"}),
        # A raw `?` or `#` ends the authority: both clients refuse the port `pa`.
        ("redis://:pa?ss@host:6379/0", "redis://***@host:6379/0", {}),
        ("redis://:pa#ss@host:6379/0", "redis://***@host:6379/0", {}),
        # An authority with an `@` that urlsplit (so redis-py, and the game's client)
        # refuses, which httpx reads its own way: it showed `[?s3cret`, `s3cret#`.
        ("rediss://u:@[?s3cret@host", "rediss://***@host", {"httpx": ""}),
        ("redis://:[@s3cret#@h:6379", "redis://***@h:6379", {"httpx": "["}),
        ("redis://:b@: 9?s3cret@h:6379/0", "redis://***@h:6379/0", {"httpx": "b"}),
        ("http://game:[@s3cret#@h/x", "http://***@h/x", {"httpx": "["}),
    ],
)
def test_what_a_client_reads_as_the_password_is_never_shown(
    url: str, shown: str, read: dict[str, str]
) -> None:
    """`redacted_url` shows none of what redis-py or httpx read as the password, and
    `url_password` (what the log scrubber takes out) finds redis-py's; where a client
    refuses the URL, nothing of the userinfo up to its last `@` is shown."""
    assert read_by_clients(url) == read
    assert redacted_url(url) == shown
    for password in filter(None, read.values()):
        assert password not in shown and quote(password, safe="") not in shown
    if read.get("redis"):
        assert unquote(url_password(url)) == read["redis"]
    assert "s3cret" not in shown


@pytest.mark.parametrize(
    ("key", "url", "shown"),
    [
        (
            "NPC_SERVER_CLUSTER_REDIS_URL",
            "redis://:pa?s3cret@host:6379/0",
            "redis://***@host:6379/0",
        ),
        (
            "NPC_SERVER_CLUSTER_REDIS_URL",
            "redis://:pa#s3cret@host:6379/0",
            "redis://***@host:6379/0",
        ),
        ("NPC_SERVER_CLUSTER_REDIS_URL", "redis://:[@s3cret#@h:6379", "redis://***@h:6379"),
        ("NPC_SERVER_CLUSTER_REDIS_URL", "rediss://u:@[?s3cret@host", "rediss://***@host"),
        ("NPC_SERVER_GAME_URL", "http://game:[@s3cret#@h/x", "http://***@h/x"),
    ],
)
def test_a_refused_url_is_named_without_its_password(key: str, url: str, shown: str) -> None:
    """The start-up error for a URL the client cannot use names it masked."""
    from npc_server.config import ConfigError, load_config

    with pytest.raises(ConfigError) as refused:
        load_config(env={key: url})
    assert f"got {shown!r}" in str(refused.value) and "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "reason", "said"),
    [
        (
            "http://game:s3cret/pa@h/x",
            "Port could not be cast to integer value as 's3cret'",
            "the port is not a number; a / ? # [ or ] in the user or password must be"
            " percent-encoded as %2F %3F %23 %5B %5D",
        ),
        (
            "redis://:s3cretpw@h:99999/0",
            "Port out of range 0-65535",
            "the port is out of range 0-65535",
        ),
        (
            "redis://:s3cretpw@h/0?db=x",
            "Invalid value for 'db' in connection URL.",
            "the option 'db' has a value redis-py cannot read",
        ),
        # What redis-py read as the query began in the password: its option is not named.
        (
            "redis://:s3?cret=x@h/0",
            "Invalid value for 's3' in connection URL.",
            "an option has a value redis-py cannot read; a / ? # [ or ] in the user or"
            " password must be percent-encoded as %2F %3F %23 %5B %5D",
        ),
        (
            "redis://:s3cretpw@h/0",
            "something new 's3cretpw'",
            "the client cannot read it (its own text is not shown: it may quote the password)",
        ),
    ],
)
def test_a_refusal_of_a_url_with_a_password_is_told_in_fixed_words(
    url: str, reason: str, said: str
) -> None:
    """A library's text quotes what it could not read, often a piece of the password:
    what it says is wrong is told without it, and a text not known shows nothing."""
    assert redacted_reason(url, reason) == said


def test_a_refusal_of_a_url_without_a_password_keeps_the_librarys_text() -> None:
    """Nothing is masked in such a URL, so its reason can show nothing that is not shown."""
    reason = "Port could not be cast to integer value as 'port'"
    assert redacted_reason("redis://h:port/0", reason) == reason


# Letters no message uses, so a piece of a password found in one came from the password.
_LETTERS = "QXZJqzj"
_SPECIALS = "/?#@[]\\:%'"
# user:pw@host, :pw@host, and pw@host (read as a user alone: all of it masked, so the
# password of that shape has no `:`, or what comes before one is a user, shown).
_SHAPES = ["Ww:{}@h", ":{}@h", "{}@h"]
_WRITTEN: dict[str, Callable[[str], str]] = {
    "raw": lambda pw: pw,
    "percent-encoded": lambda pw: quote(pw, safe=""),
    "half-encoded": lambda pw: quote(pw, safe="@:/"),
}
_KEYS = {"http://": ("game", "url"), "redis://": ("cluster", "redis_url")}


def _refusal(path: Path, scheme: str, url: str) -> str | None:
    """The start-up error for `url` under its key in a server.toml (None: accepted)."""
    from npc_server.config import ConfigError, load_config

    section, key = _KEYS[scheme]
    path.write_text(f"[{section}]\n{key} = {json.dumps(url)}\n", encoding="utf-8")
    try:
        load_config(path, env={})
    except ConfigError as refused:
        message = str(refused)
    else:
        return None
    assert message.startswith(f"{path}: [{section}] {key} must be ")
    return message


def _pieces(text: str, size: int = 4) -> set[str]:
    """Every run of `size` characters or more in `text`."""
    return {text[i : i + n] for n in range(size, len(text) + 1) for i in range(len(text) - n + 1)}


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    password=st.text(st.sampled_from(_LETTERS + _SPECIALS), min_size=1, max_size=12),
    scheme=st.sampled_from(sorted(_KEYS)),
    shape=st.sampled_from(_SHAPES),
    written=st.sampled_from(sorted(_WRITTEN)),
    tail=st.sampled_from(["", ":99999", ":port", ":0", "/0", ":6379/0", ":99999/0"]),
)
def test_no_piece_of_a_password_is_in_a_refused_url_message(
    tmp_path: Path, password: str, scheme: str, shape: str, written: str, tail: str
) -> None:
    """For `[game] url` and `[cluster] redis_url`, a refused URL's message (the URL shown
    and the client's reason) holds no 4 characters in a row of the password, as given
    or as written in the URL, nor a shorter one whole (one with a letter: `/` alone is
    in every URL); and it still names the file and the key."""
    if shape == "{}@h":
        password = password.replace(":", "")
        assume(password)
    in_url = _WRITTEN[written](password)
    url = scheme + shape.format(in_url) + tail
    message = _refusal(tmp_path / "server.toml", scheme, url)
    assume(message is not None)
    assert message is not None
    for piece in _pieces(password) | _pieces(in_url):
        assert piece not in message
    if len(password) < 4 and any(c in _LETTERS for c in password):
        assert password not in message.partition(" got ")[2]
    # The client's reason, after the URL shown: nothing of the userinfo, the user too
    # (but a %XX, which it may name as how to write a character).
    reason = message.partition(f"got {redacted_url(url)!r}")[2]
    userinfo = url.removeprefix(scheme).rpartition("@h")[0]
    for piece in _pieces(userinfo, 3) - set(re.findall("(?=(%[0-9A-F]{2}))", userinfo)):
        assert piece not in reason


def test_secrets_too_short_to_mean_anything_are_not_scrubbed() -> None:
    """An API key `a` was taken out of every `a` of every line (`npc_server.[redacted]pp`):
    a secret, key or webhook secret under 8 characters is left in the lines; from 8 on
    each is scrubbed, the webhook secret too."""
    from dataclasses import replace

    from npc_server.config import load_config
    from npc_server.redaction import MIN_SCRUBBED_SECRET, config_secrets

    config = load_config(None, env={})
    short = "k" * (MIN_SCRUBBED_SECRET - 1)
    long = "k" * MIN_SCRUBBED_SECRET
    assert config_secrets(replace(config, secret=short, api_key="a", webhook_secret=short)) == []
    scrubbed = replace(config, secret=long + "s", api_key=long + "a", webhook_secret=long + "w")
    assert config_secrets(scrubbed) == [long + "s", long + "a", long + "w"]


def test_a_one_character_api_key_leaves_the_start_up_lines_readable() -> None:
    """The real command in development with NPC_SERVER_API_KEY=a: its warning about the
    unsigned game URL reads as written, not `[g[redacted]me] url`."""
    from tests.support.server import start_server_process

    env = {"NPC_SERVER_API_KEY": "a", "NPC_SERVER_GAME_URL": "http://127.0.0.1:9"}
    server = start_server_process(env=env)
    try:
        server.terminate()
    finally:
        server.kill()
    out = "\n".join(server.output)
    assert "npc_server.app: [game] url is set without NPC_SERVER_WEBHOOK_SECRET" in out
    assert "[redacted]" not in out
