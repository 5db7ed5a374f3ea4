"""POSTs to the game server: a URL that cannot be used is a failed request, never a crash;
the Host header is the host and port only."""

from __future__ import annotations

import pytest

from npc_server.game_http import GameHttpError, UnusableUrl, post_json, url_problem
from tests.support.game_server import running_game_server


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999/events",
        "http://127.0.0.1:port/events",
        "http://[invalid/events",
        "http://127.0.0.1:0/events",
        "http:///events",
        "ftp://127.0.0.1/events",
        "http://" + "a" * 70 + ".example/events",
        "http://ex\x00ample/events",
    ],
    ids=["port-range", "port-text", "bracket", "port-0", "no-host", "ftp", "long-label", "nul"],
)
async def test_an_unusable_url_fails_as_a_game_http_error(url: str) -> None:
    with pytest.raises(UnusableUrl, match="unusable URL") as failed:
        await post_json(url, b"{}", {}, 2.0)
    assert isinstance(failed.value, GameHttpError)
    assert url_problem(url) == str(failed.value)  # what a settings rule can refuse


def test_an_unusable_url_with_a_password_is_told_without_it() -> None:
    """It said `unusable URL: Port could not be cast to integer value as 's3cret'`: a raw
    `/` cut the password short, urlsplit read it as the port and quoted it."""
    problem = url_problem("http://game:s3cret/pa@h/x")
    assert problem == (
        "unusable URL: the port is not a number; a / ? # [ or ] in the user or password"
        " must be percent-encoded as %2F %3F %23 %5B %5D"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081",
        "https://game.example",
        "http://[::1]:8080/hooks",
        "http://bücher.example",
    ],
)
def test_a_usable_url_has_no_problem(url: str) -> None:
    assert url_problem(url) == ""


async def test_the_host_header_carries_no_credentials() -> None:
    """`user:pw@` in the URL stays out of `Host` (host and port only, as HTTP has it)."""
    async with running_game_server() as game:
        url = game.url.replace("http://", "http://game:s3cretpw@", 1)
        answer = await post_json(f"{url}/events", b"{}", {}, 5.0)
    assert answer.status == 200
    [received] = game.events
    assert received.headers["host"] == f"{game.host}:{game.port}"
