"""URLs shown in messages: the password masked wherever it is, the host left to read."""

from __future__ import annotations

import pytest

from npc_server.redaction import redacted_url


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
