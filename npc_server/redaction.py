"""URLs as messages show them: the host an operator needs, never the password.

A Redis URL carries its password (`redis://:pw@host`, `redis://user:pw@host`,
`?password=pw`), and a game URL may carry one too; the messages naming them
(start-up errors on stderr, log lines) are read and kept where the password
must not be. `redacted_url` replaces it with `***` and leaves the rest, so
"cannot reach Redis at redis://:***@10.0.0.5:6379/0" still says where.

It works on the text, not on a parse: a URL that does not parse (a password
with a raw `/`, `?` or `#`, an unclosed `[`) is the one most likely to be
shown in an error, and must not be shown whole for it. A library's own text for
refusing such a URL quotes what it could not read, often a piece of the password:
`redacted_reason` says what is wrong in words of its own instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from npc_server.config import Config

MASK = "***"

_QUERY_PASSWORD = re.compile(r"([?&;]password=)[^&;#]*", re.IGNORECASE)
_MASKED_VALUE = rf"\g<1>{MASK}"


def redacted_url(url: str) -> str:
    """`url` with its password, wherever it is, replaced by `***`.

    `user:pw@` shows as `user:***@`; a user alone (`pw@`) as `***@`, since some
    clients read a lone user as the password. An `@` after the first `/`, `?` or `#`
    belongs to the path or query when what comes before is a plain host[:port]
    (`https://game/hooks?to=ops@example.com` keeps its host); otherwise the password
    may hold a raw `/`, `?` or `#`, and everything up to the last `@` is masked. So it
    is when the authority holds an `@` but does not parse (`redis://:[@pw@host`): no
    client reads such a URL, so where its password ends is not known.
    """
    scheme, found, rest = url.partition("://")
    if not found:
        return _QUERY_PASSWORD.sub(_MASKED_VALUE, url)
    userinfo, at, after = _userinfo(rest)
    if at:
        if any(c in userinfo for c in "/?#"):
            shown = MASK
        else:
            user, colon, _ = userinfo.partition(":")
            shown = f"{user}:{MASK}" if colon else MASK
        rest = f"{shown}@{after}"
    return f"{scheme}://{_QUERY_PASSWORD.sub(_MASKED_VALUE, rest)}"


def _userinfo(rest: str) -> tuple[str, str, str]:
    """(userinfo, "@", the rest) of what follows `scheme://`, or ("", "", rest)."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    parts = _split(authority)
    if "@" not in rest or ("@" not in authority and _plain_host(authority, parts)):
        return "", "", rest
    # What redis-py and httpx read as userinfo; but one followed by no host and then
    # another `@` is a password cut short by its raw `/`, `?` or `#` (`:pa/ss@h`).
    if "@" in authority and parts is not None and (parts.hostname or "@" not in rest[end:]):
        userinfo, _, host = authority.rpartition("@")
        return userinfo, "@", host + rest[end:]
    # Neither a plain host nor userinfo a client reads: the password may run to any `@`
    # (a raw `/`, `?`, `#` or `[` in it), so all up to the last one is masked.
    return rest.rpartition("@")


def _split(authority: str) -> SplitResult | None:
    """`authority` as urlsplit reads it, or None where it (and so redis-py) raises."""
    try:
        parts = urlsplit(f"//{authority}")
        _ = parts.port
    except ValueError:
        return None
    return parts


def _plain_host(authority: str, parts: SplitResult | None) -> bool:
    """Whether `authority` reads as host[:port] alone (no userinfo cut short by a `/`)."""
    if parts is None or not parts.hostname:
        return False
    return parts.port is not None or ":" not in authority.strip("[]")


def redacted_reason(url: str, reason: str) -> str:
    """`reason`, a client library's text for refusing `url`, as a message may show it.

    The text quotes what it could not read (a "port", a host, the whole netloc), and in
    a URL with a password that is often a piece of it, in a form no search for the
    password finds (a `\\` doubled by repr, a quote running past the `@`). So where
    `redacted_url` masks anything, no word of the text is shown: what it says is wrong
    (the port, the host, an option) is told in fixed words, with how to write a
    `/ ? # [ ]` in a password when the userinfo holds one. A URL with nothing to mask
    is shown whole, and so is its reason.
    """
    shown = redacted_url(url)
    if shown == url:
        return reason
    userinfo = _userinfo(url.partition("://")[2])[0]
    hint = _ENCODE_HINT if any(c in userinfo for c in "/?#[]") else ""
    return _described(reason, shown) + hint


def _described(reason: str, shown: str) -> str:
    """What `reason` says is wrong, in `_REFUSALS`' words."""
    for pattern, words in _REFUSALS:
        found = pattern.fullmatch(reason)
        if found is not None:
            return words.format(option=_option(found, shown)) if pattern.groups else words
    return _UNREAD


# What urllib, redis-py and the game's client say when they refuse a URL, matched on
# their fixed words only, and told in words that quote nothing; a text not listed gets
# `_UNREAD`, so a library's new message shows nothing of the URL.
_REFUSALS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.DOTALL), words)
    for pattern, words in (
        (r"Port could not be cast to integer value as .*", "the port is not a number"),
        (r"Port out of range 0-65535", "the port is out of range 0-65535"),
        (r"port 0", "the port is 0"),
        (r"Invalid IPv6 URL", "a [ or ] that does not enclose an IPv6 host"),
        (r".* does not appear to be an IPv4 or IPv6 address", "the host in [ ] is not an IP"),
        (
            r"netloc .* contains invalid characters under NFKC normalization",
            "a character in the user, password or host that NFKC turns into / ? # @ or :",
        ),
        (r"not http\(s\)://<host>", "no host"),
        (
            r"encoding with 'idna' codec failed .*",
            "the host is not a DNS name (an empty label, or one over 63 characters)",
        ),
        (r"a NUL in the host", "a NUL in the host"),
        (r"protocol must be .*", "the protocol option is not 2 or 3"),
        (
            r"Redis URL must specify one of the following schemes .*",
            "the scheme is not redis://, rediss:// or unix://",
        ),
        (
            r"Invalid SSL Certificate Requirements Flag: .*",
            "the ssl_cert_reqs option is not none, optional or required",
        ),
        (
            r"Invalid value for '(.*)' in connection URL\.",
            "{option} has a value redis-py cannot read",
        ),
        (r".* got an unexpected keyword argument '(.*)'", "{option} is not one redis-py knows"),
    )
)
_UNREAD = "the client cannot read it (its own text is not shown: it may quote the password)"
_ENCODE_HINT = (
    "; a / ? # [ or ] in the user or password must be percent-encoded as %2F %3F %23 %5B %5D"
)


def _option(found: re.Match[str], shown: str) -> str:
    """The option a refusal quotes, named only where the shown URL's query has it: what
    the library took for the query may have begun inside the password."""
    name = found.group(1)
    query = shown.partition("?")[2]
    shows = re.fullmatch(r"\w+", name) and re.search(rf"(?:^|[&;]){name}=", query)
    return f"the option {name!r}" if shows else "an option"


def url_password(url: str) -> str:
    """The password in `url` ("" if none): the log scrubber removes it from every line,
    also from error texts of libraries that print the URL their own way."""
    _, found, rest = url.partition("://")
    userinfo, at, _ = _userinfo(rest) if found else ("", "", "")
    password = userinfo.partition(":")[2] if at else ""
    query = _QUERY_PASSWORD.search(url)
    if not password and query is not None:
        password = url[query.end(1) : query.end()]
    return password


# A URL's password shorter than this is not scrubbed from every line (a password "ab"
# would take every "ab" out of the logs); messages naming a URL mask it whatever its size.
MIN_SCRUBBED_PASSWORD = 6
# Nor a secret or key shorter than this: an API key "a" took every "a" out of every line
# (`npc_server.[redacted]pp`), and a key that short hides nothing worth the mangling
# (production refuses it: config.check_production).
MIN_SCRUBBED_SECRET = 8


def config_secrets(config: Config) -> list[str]:
    """What the log scrubber takes out of every line: the token secret, the API key, the
    webhook secret (each of MIN_SCRUBBED_SECRET characters or more) and the passwords of
    the Redis and game URLs (a library's own error text may print a URL its own way)."""
    passwords = (url_password(config.cluster.redis_url), url_password(config.game.url))
    long_passwords = [p for p in passwords if len(p) >= MIN_SCRUBBED_PASSWORD]
    secrets = (config.secret, config.api_key, config.webhook_secret)
    long_secrets = [s for s in secrets if s is not None and len(s) >= MIN_SCRUBBED_SECRET]
    return [*long_secrets, *long_passwords]
