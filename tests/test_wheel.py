"""The wheel runs the demo: built, installed in a fresh virtualenv outside the checkout, run anywhere.

Slow (a build and an install, ~60 s with pip's cache warm): one module-scoped
install serves every test here; deselect with `-m "not wheel"`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from importlib.metadata import packages_distributions
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from npc_server.config import load_config
from npc_server.npcs import load_npcs
from tests.support.client import connect
from tests.support.server import DEMO_NPCS, REPO, ServerProcess, start_server_process

pytestmark = [pytest.mark.e2e, pytest.mark.wheel, pytest.mark.timeout(600)]

DEMO_IDS = {"merchant", "guard", "questgiver"}
# What the Dockerfile copies: the package, and the JS client its web/vendor/npc-client links to.
SOURCES = ("pyproject.toml", "README.md", "npc_server", "clients/js/src")
# Modules imported only by an optional part, and the extra that declares them.
EXTRAS = {
    "npc_server/backends/openai.py": "llm",
    "npc_server/backends/stream_reader.py": "llm",
    "npc_server/brokers/redis.py": "redis",
    "npc_server/brokers/redis_link.py": "redis",
    "npc_server/brokers/redis_publisher.py": "redis",
    "npc_server/memories/redis.py": "redis",
}
IMPORTS = re.compile(r"""(?:\bfrom\s*|\bimport\s*)["']([^"']+)["']""")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    empty: Path  # a directory with nothing in it, far from the checkout

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "npc-server"

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The installed command, run in the empty directory; returns once it exits."""
        return subprocess.run(
            [str(self.command), *args],
            env={**clean_env(), **env},
            cwd=self.empty,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def clean_env() -> dict[str, str]:
    """The environment without our settings or anything pointing into the checkout."""
    dropped = ("NPC_SERVER_", "PYTHON", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def pip(python: Path | str, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "-q", *args], check=True, timeout=400)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built from a copy of the sources and installed alone in a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    pip(sys.executable, "wheel", "--no-deps", "-w", str(root / "dist"), str(source))
    (wheel,) = (root / "dist").glob("npc_server-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    pip(root / "venv" / "bin" / "python", "install", str(wheel))  # pip's cache: no rebuilds
    empty = root / "empty"
    empty.mkdir()
    return Installed(wheel, root / "venv", empty)


@pytest.fixture(scope="module")
def served(installed: Installed) -> Iterator[ServerProcess]:
    """The installed `npc-server`, no arguments, no secret, from the empty directory."""
    server = start_server_process(
        env={**clean_env(), "NPC_SERVER_SECRET": ""},
        command=[str(installed.command)],
        cwd=installed.empty,
    )
    yield server
    assert server.terminate() == 0
    assert not any("Traceback" in line for line in server.output)


def get(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), reply.read()


class PageAssets(HTMLParser):
    """The import map, module scripts and stylesheets of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.imports: dict[str, str] = {}
        self.modules: list[str] = []
        self.styles: list[str] = []
        self._in_map = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        at = dict(attrs)
        if tag == "script" and at.get("type") == "importmap":
            self._in_map = True
        elif tag == "script" and at.get("type") == "module" and at.get("src"):
            self.modules.append(str(at["src"]))
        elif tag == "link" and at.get("rel") == "stylesheet" and at.get("href"):
            self.styles.append(str(at["href"]))

    def handle_data(self, data: str) -> None:
        if self._in_map and data.strip():
            self.imports.update(json.loads(data)["imports"])
            self._in_map = False


def module_graph(base: str, page: PageAssets) -> dict[str, int]:
    """Every ES module the page loads, followed through its imports: URL -> status."""
    pending = [urljoin(base, src) for src in page.modules]
    seen: dict[str, int] = {}
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        status, kind, body = get(url)
        seen[url] = status
        assert "javascript" in kind, f"{url} served as {kind!r}"
        for spec in IMPORTS.findall(body.decode()):
            pending.append(
                urljoin(base, page.imports[spec]) if spec in page.imports else urljoin(url, spec)
            )
    return seen


def test_wheel_holds_the_demo_and_the_play_page(installed: Installed) -> None:
    """The wheel has the default config, the three NPCs and every /play file, the JS client too."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    npcs = {Path(n).stem for n in names if n.startswith("npc_server/demo/npcs/")}
    assert "npc_server/demo/server.toml" in names and npcs == DEMO_IDS
    for page in ("index.html", "app.js", "style.css", "vendor/msgpack/index.mjs"):
        assert f"npc_server/web/{page}" in names
    client = {Path(n).name for n in names if n.startswith("npc_server/web/vendor/npc-client/")}
    assert client == {p.name for p in (REPO / "clients/js/src").iterdir()}
    where = subprocess.run(
        [str(installed.venv / "bin/python"), "-c", "import npc_server; print(npc_server.__file__)"],
        cwd=installed.empty,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)


async def test_installed_server_serves_the_demo_from_an_empty_directory(
    installed: Installed, served: ServerProcess
) -> None:
    """/npcs lists the three demo NPCs, /play loads every module it imports, and a say streams."""
    status, _, body = await asyncio.to_thread(get, f"{served.http_url}/npcs")
    assert status == 200 and {npc["id"] for npc in json.loads(body)} == DEMO_IDS
    base = f"{served.http_url}/play"
    status, kind, html = await asyncio.to_thread(get, base)
    assert status == 200 and kind.startswith("text/html")
    page = PageAssets()
    page.feed(html.decode())
    assert "@msgpack/msgpack" in page.imports and page.modules and page.styles
    graph = await asyncio.to_thread(module_graph, base, page)
    paths = {urlsplit(url).path for url in graph}
    assert {"/play/vendor/npc-client/index.js", "/play/vendor/msgpack/index.mjs"} <= paths
    assert set(graph.values()) == {200}
    for style in page.styles:
        assert (await asyncio.to_thread(get, urljoin(base, style)))[0] == 200
    token = installed.run("token", "alice")
    assert token.returncode == 0, token.stderr
    async with connect(served.url) as client:
        await client.hello(token.stdout.strip())
        await client.send({"t": "say", "id": 1, "npc": "merchant", "text": "what wares?"})
        frames = await client.recv_until(lambda f: f["t"] == "turn.end")
    assert "".join(f["text"] for f in frames if f["t"] == "delta")
    assert not [line for line in served.output if "no NPC files" in line]


def test_installed_init_output_loads(installed: Installed) -> None:
    """The installed `init DIR` writes the demo's config and NPCs; they load as they are."""
    target = installed.empty.parent / "game"
    result = installed.run("init", str(target))
    assert result.returncode == 0, result.stderr
    config = load_config(target / "server.toml", env={})
    npcs = load_npcs(config.npcs_path)
    assert config.npcs_path == target / "npcs" and set(npcs) == DEMO_IDS
    for demo in DEMO_NPCS.glob("*.toml"):
        assert (target / "npcs" / demo.name).read_text() == demo.read_text()


def test_installed_help_and_secret_check(installed: Installed) -> None:
    """--help lists every subcommand; a short production secret is refused in one line, exit 2."""
    usage = installed.run("--help")
    assert usage.returncode == 0
    assert all(f"\n  {name} " in usage.stdout for name in ("serve", "token", "init"))
    refused = installed.run("--production", NPC_SERVER_SECRET="too-short")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "npc-server: NPC_SERVER_SECRET is 9 bytes; production needs at least 32 random bytes "
        "(e.g. openssl rand -hex 32)"
    ]


def imported_distributions(files: list[Path]) -> set[str]:
    """The distributions (normalised names) providing the third-party modules `files` import."""
    providers = packages_distributions()
    modules: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"npc_server"}
    return {normalised(providers[module][0]) for module in third_party}


def normalised(requirement: str) -> str:
    """The distribution name of a requirement string, PEP 503 normalised."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def test_dependencies_are_declared_exactly_as_imported() -> None:
    """[project.dependencies] and the llm/redis extras name what npc_server imports, no more."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    files = sorted((REPO / "npc_server").rglob("*.py"))
    optional = {path: extra for path, extra in EXTRAS.items()}
    core = [f for f in files if str(f.relative_to(REPO)) not in optional]
    assert {normalised(r) for r in project["dependencies"]} == imported_distributions(core)
    for extra in set(optional.values()):
        mine = [REPO / path for path, e in optional.items() if e == extra]
        declared = {normalised(r) for r in project["optional-dependencies"][extra]}
        assert declared == imported_distributions(mine) - imported_distributions(core), extra
