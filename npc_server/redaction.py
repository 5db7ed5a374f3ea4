"""URLs as messages show them: the host an operator needs, never the password.

A Redis URL carries its password (`redis://:pw@host`, `redis://user:pw@host`,
`?password=pw`), and a game URL may carry one too; the messages naming them
(start-up errors on stderr, log lines) are read and kept where the password
must not be. `redacted_url` replaces it with `***` and leaves the rest, so
"cannot reach Redis at redis://:***@10.0.0.5:6379/0" still says where.

It works on the text, not on a parse: a URL that does not parse (a password
with a raw `/`, `?` or `#`, an unclosed `[`) is the one most likely to be
shown in an error, and must not be shown whole for it.
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
    if "@" in authority and parts is not None:  # what redis-py and httpx read as userinfo
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


def config_secrets(config: Config) -> list[str]:
    """What the log scrubber takes out of every line: the token secret, the API key and
    the passwords of the Redis and game URLs (a library's own error text may print a URL
    its own way)."""
    passwords = (url_password(config.cluster.redis_url), url_password(config.game.url))
    long_enough = [p for p in passwords if len(p) >= MIN_SCRUBBED_PASSWORD]
    return [s for s in (config.secret, config.api_key, *long_enough) if s]
