"""Backends built at start-up: every NPC's backend, or an error naming the file and key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from npc_server.backends import BackendConfigError, build_backends
from npc_server.backends.openai import OpenAIBackend
from npc_server.backends.scripted import ScriptedBackend
from npc_server.config import Config, load_config
from npc_server.npcs import load_npcs
from tests.support.server import DEMO_NPCS

NPC = """\
id = "mira"
name = "Mira"
greeting = "Hello."

[[actions]]
name = "open_shop"

[backend]
"""
SCRIPTED = 'kind = "scripted"\nfallback = ["Eh?"]\n'
OPENAI = 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'


def setup(tmp_path: Path, backend: str, server: str = "") -> tuple[Path, Config]:
    """An NPC directory with mira.toml, and a server config read from its own file."""
    (tmp_path / "npcs").mkdir()
    npc_file = tmp_path / "npcs" / "mira.toml"
    npc_file.write_text(NPC + backend, encoding="utf-8")
    server_file = tmp_path / "server.toml"
    server_file.write_text('[server]\nnpcs_dir = "npcs"\n' + server, encoding="utf-8")
    return npc_file, load_config(server_file, env={})


def build(config: Config) -> None:
    build_backends(load_npcs(config.npcs_path), config)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        (
            SCRIPTED + "tokens_per_sec = 10\n",
            r"\[backend\]: unknown key 'tokens_per_sec' \(did you mean 'tokens_per_second'\?\)",
        ),
        (
            SCRIPTED + '[[backend.topics]]\nname = "t"\nkeywrods = ["x"]\nreplies = ["r"]\n',
            r"topic.*unknown key 'keywrods' \(did you mean 'keywords'\?\)",
        ),
        (
            SCRIPTED + '[[backend.topics]]\nname = "t"\nkeywords = ["x"]\nreplies = ["[[fly]]"]\n',
            r"topic 't': action 'fly' is not one of the NPC's \[\[actions\]\] \['open_shop'\]",
        ),
        (SCRIPTED + "jitter = 2\n", r"'jitter' must be between 0 and 1, got 2"),
        ('kind = "openai"\nmodel = "m"\n', r"\[backend\] 'base_url' is required"),
        (OPENAI + "temprature = 1\n", r"unknown key 'temprature' \(did you mean 'temperature'\?\)"),
        (OPENAI + 'api_key_env = "NPC_TEST_UNSET_KEY"\n', r"'api_key_env'.*which is unset"),
        (
            OPENAI + "max_connections = 0\n",
            r"'max_connections' must be an integer in 1\.\.100000, got 0",
        ),
    ],
)
def test_bad_backend_settings_name_the_npc_file_and_key(
    tmp_path: Path, backend: str, message: str
) -> None:
    """Misspelt or invalid settings, topic keys and undeclared actions stop the build."""
    npc_file, config = setup(tmp_path, backend)
    with pytest.raises(BackendConfigError, match=rf"^{npc_file}: .*{message}"):
        build(config)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            "[overrides.scripted]\ntokens_per_sec = 0\n",
            r"\[overrides.scripted\]: unknown key 'tokens_per_sec'",
        ),
        (
            "[backends.scriptd]\njitter = 0\n",
            r"\[backends\]: unknown key 'scriptd' \(did you mean 'scripted'\?\)",
        ),
    ],
)
def test_bad_server_backend_tables_name_the_server_file(
    tmp_path: Path, server: str, message: str
) -> None:
    """A typo in server.toml's [backends.*] or [overrides.*] is blamed on server.toml."""
    _, config = setup(tmp_path, SCRIPTED, server)
    with pytest.raises(BackendConfigError, match=rf"^{tmp_path / 'server.toml'}: {message}"):
        build(config)


def test_openai_without_the_llm_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kind = "openai" with the openai package missing names the file and the pip command."""
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    monkeypatch.delitem(sys.modules, "npc_server.backends.openai")
    npc_file, config = setup(tmp_path, OPENAI)
    expected = (
        rf"^{npc_file}: \[backend\] kind = 'openai' needs the 'openai' package, which is not "
        r"installed; install it with: pip install 'npc-server\[llm\]'$"
    )
    with pytest.raises(BackendConfigError, match=expected):
        build(config)


async def test_every_npc_gets_its_backend_before_any_connection(tmp_path: Path) -> None:
    """A good config builds one backend per NPC, openai's client included, ready to serve."""
    _, config = setup(tmp_path, OPENAI)
    (tmp_path / "npcs" / "bob.toml").write_text('id = "bob"\nname = "Bob"\n', encoding="utf-8")
    backends = build_backends(load_npcs(config.npcs_path), config)
    try:
        assert isinstance(backends["mira"], OpenAIBackend)
        assert isinstance(backends["bob"], ScriptedBackend)
        assert "openai" in sys.modules
    finally:
        for backend in backends.values():
            await backend.aclose()


def test_demo_npcs_build() -> None:
    """The shipped config and demo NPCs pass every start-up check."""
    config = load_config(env={})
    assert set(build_backends(load_npcs(DEMO_NPCS), config)) == {"guard", "merchant", "questgiver"}
