"""URLs shown in messages: the password masked wherever it is, the host left to read."""

from __future__ import annotations

import contextlib
from urllib.parse import quote, unquote

import pytest

from npc_server.redaction import redacted_url, url_password


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
