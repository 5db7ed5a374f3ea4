"""Tokens: validly signed tokens with claims of the wrong type or range are refused cleanly."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from npc_server.protocol.codes import CloseCode, ErrorCode
from npc_server.tokens import (
    CLOCK_LEEWAY_S,
    MAX_SECONDS,
    TokenError,
    issue_token,
    verify_token,
)
from tests.support.client import connect
from tests.support.server import SECRET, running_server

NOW = 1_700_000_000.0


def signed(**claims: Any) -> str:
    """A token signed with the test secret, carrying exactly `claims`."""
    return jwt.encode(claims, SECRET, algorithm="HS256")


def refused(token: str) -> TokenError:
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, token, now=NOW)
    return info.value


def test_a_good_token_gives_its_player_and_expiry() -> None:
    """sub and exp come back as the player and a float expiry."""
    claims = verify_token(SECRET, issue_token(SECRET, "alice", 60, now=NOW), now=NOW)
    assert (claims.player, claims.expires_at) == ("alice", NOW + 60)
    float_exp = verify_token(SECRET, signed(sub="bob", exp=NOW + 0.5), now=NOW)
    assert float_exp.expires_at == NOW + 0.5


@pytest.mark.parametrize(
    "exp",
    [10**400, 2**64, MAX_SECONDS + 1, 1e300, -1, "9999999999", "soon", True, None, [1], {"a": 1}],
)
def test_an_exp_of_the_wrong_type_or_range_is_invalid(exp: Any) -> None:
    """A huge integer, a string, a bool or a negative exp is an invalid token, not an expiry."""
    error = refused(signed(sub="alice", exp=exp))
    assert not error.expired
    assert error.message.startswith("invalid token")


def test_nan_and_infinite_exp_are_invalid() -> None:
    """JSON's NaN and Infinity (which Python's json accepts) are not times."""
    for raw in ("NaN", "Infinity", "1e400"):
        header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
        body = jwt.utils.base64url_encode(f'{{"sub":"alice","exp":{raw}}}'.encode())
        signing_input = header + b"." + body
        signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
            signing_input, SECRET.encode()
        )
        token = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
        error = refused(token)
        assert not error.expired, raw


@pytest.mark.parametrize("sub", ["", "x" * 129, "al\nice", "\x00", 7, ["alice"], None])
def test_a_bad_sub_is_invalid(sub: Any) -> None:
    """sub must be 1-128 printable characters."""
    error = refused(signed(sub=sub, exp=NOW + 60))
    assert not error.expired and error.message.startswith("invalid token")


@pytest.mark.parametrize("claim", ["iat", "nbf"])
@pytest.mark.parametrize("value", [10**400, "1", -5, True])
def test_bad_iat_and_nbf_are_invalid(claim: str, value: Any) -> None:
    """iat and nbf, when present, must be numbers of seconds in range too."""
    error = refused(signed(sub="alice", exp=NOW + 60, **{claim: value}))
    assert not error.expired


def test_times_are_checked_against_now() -> None:
    """An exp at or before now is expired; nbf or iat more than the leeway after now is
    invalid; up to the leeway ahead (the signer's clock runs a little fast) they pass."""
    assert refused(signed(sub="alice", exp=NOW)).expired
    late = NOW + CLOCK_LEEWAY_S + 1
    assert not refused(signed(sub="alice", exp=NOW + 60, nbf=late)).expired
    assert not refused(signed(sub="alice", exp=NOW + 60, iat=late)).expired
    verify_token(SECRET, signed(sub="alice", exp=NOW + 60, nbf=NOW, iat=NOW - 5), now=NOW)
    ahead = NOW + CLOCK_LEEWAY_S
    claims = verify_token(SECRET, signed(sub="alice", exp=NOW + 60, iat=ahead, nbf=ahead), now=NOW)
    assert claims.player == "alice"


def test_a_string_exp_in_the_past_is_invalid_not_expired() -> None:
    """The type is checked before the time: a bad exp never asks the client to refresh."""
    error = refused(signed(sub="alice", exp=str(int(NOW) - 100)))
    assert not error.expired


@pytest.mark.e2e
async def test_a_huge_exp_closes_hello_4500_over_a_socket() -> None:
    """hello with a signed token whose exp is beyond float range closes 4500, not 1011."""
    async with running_server() as server, connect(server.url) as client:
        await client.send({"t": "hello", "token": signed(sub="alice", exp=10**400)})
        assert await client.close_code() == CloseCode.AUTH_FAILED


@pytest.mark.e2e
async def test_a_bad_exp_in_refresh_is_bad_token_over_a_socket() -> None:
    """refresh with a string or huge exp is answered bad_token and the socket stays open."""
    async with running_server() as server, connect(server.url) as client:
        await client.hello(server.token("alice"))
        for request_id, exp in ((1, 10**400), (2, "99999999999")):
            await client.send(
                {"t": "refresh", "id": request_id, "token": signed(sub="alice", exp=exp)}
            )
            error = await client.expect("error")
            assert (error["code"], error["id"]) == (ErrorCode.BAD_TOKEN, request_id)
        await client.send({"t": "ping", "id": "alive"})
        assert (await client.expect("pong"))["id"] == "alive"
