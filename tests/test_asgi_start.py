"""`npc_server.asgi:app` under a plain ASGI server: every failure to build the app fails
the lifespan start-up with one message (docs/deploy.md), never "continuing without
Lifespan support" with every request answered empty."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from npc_server import asgi
from tests.support.server import DEMO_NPCS

Message = dict[str, Any]


async def start_up(app: asgi.LazyApp) -> list[Message]:
    """What the app sends for one lifespan start-up, as Hypercorn drives it."""
    sent: list[Message] = []
    # An app that does start is then told to shut down, so the call returns.
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Message:
        return next(events)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NPC_SERVER_"):
            monkeypatch.delenv(name)


@pytest.mark.server_errors("the traceback of the failed start-up is logged")
async def test_an_unforeseen_error_fails_the_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception no check names (a bug) fails start-up with its type and text, instead
    of escaping to Hypercorn, which would then serve without the app's lifespan."""

    def broken(config: object = None) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(asgi, "create_app", broken)
    assert await start_up(asgi.LazyApp()) == [
        {
            "type": "lifespan.startup.failed",
            "message": "npc-server: start-up failed: RuntimeError: boom",
        }
    ]


async def test_a_bad_log_level_fails_the_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """NPC_SERVER_LOG_LEVEL is refused as `npc-server` refuses it, naming the variable."""
    monkeypatch.setenv("NPC_SERVER_LOG_LEVEL", "loud")
    [failed] = await start_up(asgi.LazyApp())
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith(
        "npc-server: environment variable NPC_SERVER_LOG_LEVEL must be one of DEBUG"
    )


async def test_start_up_names_where_the_npc_directory_was_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app is built by the checks `npc-server` runs (serve.prepare)."""
    monkeypatch.setenv("NPC_SERVER_NPCS_DIR", "/nonexist")
    [failed] = await start_up(asgi.LazyApp())
    assert failed["message"] == (
        "npc-server: environment variable NPC_SERVER_NPCS_DIR ([server] npcs_dir): "
        "/nonexist: no such NPC directory"
    )


async def test_start_up_names_a_bad_override_in_server_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        f'[server]\nnpcs_dir = "{DEMO_NPCS}"\n[overrides.scripted]\nfirst_token_ms = "fast"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("NPC_SERVER_CONFIG", str(path))
    [failed] = await start_up(asgi.LazyApp())
    assert failed["message"].startswith(
        f"npc-server: {path}: [overrides.scripted] first_token_ms: "
    )


def test_under_an_asgi_server_our_lines_are_scrubbed_and_in_the_configured_format() -> None:
    """Without a logging set-up of the ASGI server's user, the app logs as npc-server does:
    `[logging] format`, the secret and tokens scrubbed. It was a bare basicConfig that
    printed a token or the secret as given."""
    import subprocess
    import sys

    from npc_server.tokens import issue_token
    from tests.support.server import REPO, SECRET

    token = issue_token(SECRET, "alice", 60)
    script = (
        "import logging; from npc_server import asgi; asgi.create_app();"
        f" logging.getLogger('npc_server.test').warning('hello with %s by %s', {token!r}, {SECRET!r})"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NPC_SERVER_")}
    env = {**clean, "NPC_SERVER_SECRET": SECRET, "NPC_SERVER_LOGGING_FORMAT": "json"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "hello with" in line]
    assert line.startswith("{") and '"logger": "npc_server.test"' in line.replace("'", '"')
    assert token not in result.stderr and SECRET not in result.stderr
