"""The JavaScript client's README for a page without a bundler, followed as written: its
import map and the two folders it names, served by a plain static web server, let a
page in a real headless Chromium import the client and talk to a real npc-server."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.server import REPO, running_server
from tests.web.test_play_page import CHROMIUM, WAIT_MS, PageProblems

try:
    from playwright.async_api import Browser
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

JS = REPO / "clients" / "js"
README = JS / "README.md"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    ),
    pytest.mark.skipif(
        not (JS / "node_modules" / "@msgpack" / "msgpack").exists(),
        reason="clients/js has no node_modules (npm ci in clients/js)",
    ),
]


def readme_import_map() -> str:
    """The README's import map snippet, exactly as a user would paste it."""
    text = README.read_text()
    [block] = re.findall(r"```html\n(.*?)```", text, re.S)
    assert "importmap" in block
    return str(block).replace('<script type="module" src="game.js"></script>', "")


class StaticFiles(SimpleHTTPRequestHandler):
    def guess_type(self, path: str | os.PathLike[str]) -> str:
        return "text/javascript" if str(path).endswith(".mjs") else super().guess_type(path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def static_server(root: Path) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(StaticFiles, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_page_without_a_bundler_imports_the_client_as_the_readme_says(
    browser: Browser, tmp_path: Path
) -> None:
    # The two folders the README names, as copied out of node_modules after an install.
    shutil.copytree(JS / "src", tmp_path / "vendor" / "npc-client")
    msgpack = JS / "node_modules" / "@msgpack" / "msgpack" / "dist.esm"
    shutil.copytree(msgpack, tmp_path / "vendor" / "msgpack")
    async with running_server() as server:
        (tmp_path / "game.js").write_text(
            'import { connect } from "@npc-server/client";\n'
            f'const npc = await connect({{ url: "{server.url}", token: "{server.token("ada")}" }});\n'
            'const turn = await npc.say("merchant", "hello");\n'
            'let text = ""; for await (const piece of turn) text += piece;\n'
            'document.title = "said: " + (await turn.done).reason + ": " + text.length;\n'
        )
        (tmp_path / "index.html").write_text(
            f'<!doctype html><html><head><link rel="icon" href="data:,">{readme_import_map()}'
            '<script type="module" src="game.js"></script></head><body></body></html>'
        )
        with static_server(tmp_path) as origin:
            page = await browser.new_page()
            problems = PageProblems(page)
            await page.goto(f"{origin}/index.html")
            await page.wait_for_function("document.title.startsWith('said: ')", timeout=WAIT_MS)
            title = await page.title()
            await page.close()  # its socket closes before the server stops
    reason, chars = title.removeprefix("said: ").split(": ")
    assert reason == "done" and int(chars) > 0, title
    assert problems.errors == []
