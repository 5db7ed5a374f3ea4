"""The `/play` files served from memory (npc_server/pages.py): what a browser gets,
conditional requests, nothing outside the directory, and no file left open."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx

from npc_server.app import WEB_DIR
from npc_server.pages import Pages
from tests.support.server import running_server


def test_a_file_is_read_once_and_again_when_it_changes(tmp_path: Path) -> None:
    page = tmp_path / "app.js"
    page.write_text("one")
    pages = Pages(tmp_path)
    first = pages.read("app.js")
    assert first is not None and first.data == b"one" and first.mimetype == "text/javascript"
    assert pages.read("app.js") is first  # kept, not read again
    page.write_text("two, longer")
    second = pages.read("app.js")
    assert second is not None and second.data == b"two, longer" and second.etag != first.etag


def test_names_for_one_file_share_its_one_copy(tmp_path: Path) -> None:
    """`k1/../app.js`, `./app.js`: the same file, kept once (a client inventing such
    names kept a copy per name, without bound)."""
    (tmp_path / "app.js").write_text("one")
    pages = Pages(tmp_path)
    first = pages.read("app.js")
    names = [f"k{i}/../app.js" for i in range(50)] + ["./app.js", "a/./../app.js"]
    assert all(pages.read(name) is first for name in names)
    assert len(pages._files) == 1
    assert pages.read("app.js\x00.png") is None  # a NUL in the name: not found


def test_nothing_outside_the_directory_is_served(tmp_path: Path) -> None:
    root = tmp_path / "web"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.css").write_text("a{}")
    (tmp_path / "secret.toml").write_text("secret = 1")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "lib.js").write_text("export {}")
    pages = Pages(root)
    found = pages.read("sub/ok.css")
    assert found is not None and found.mimetype == "text/css"
    for name in ("../secret.toml", "sub/../../secret.toml", str(tmp_path / "secret.toml")):
        assert pages.read(name) is None, name
    linked = pages.read("linked/lib.js")  # the package's own links, as vendor/npc-client
    assert linked is not None and linked.data == b"export {}"
    assert pages.read("sub") is None and pages.read("missing.js") is None


async def test_the_server_answers_conditional_requests_and_404s() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.http_url) as http:
        page = await http.get("/play/app.js")
        assert page.status_code == 200
        assert page.content == (WEB_DIR / "app.js").read_bytes()
        assert page.headers["Content-Type"].startswith("text/javascript")
        assert page.headers["Content-Length"] == str(len(page.content))
        etag = page.headers["ETag"]
        again = await http.get("/play/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        index = await http.get("/play")
        assert index.status_code == 200 and b"<html" in index.content.lower()
        vendored = await http.get("/play/vendor/npc-client/index.js")  # through the link
        assert vendored.status_code == 200 and b"export" in vendored.content
        for path in ("/play/missing.js", "/play/%2e%2e/config.py", "/play/vendor"):
            missing = await http.get(path)
            assert missing.status_code == 404, path
            assert missing.headers["Referrer-Policy"] == "no-referrer"


def _open_web_files() -> list[str]:
    """The files under npc_server/web this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(WEB_DIR.resolve())):
            held.append(target)
    return held


async def test_a_client_that_leaves_mid_asset_leaves_no_file_open() -> None:
    """Browsers drop connections right after an asset; with a streamed file body each
    such request left a file open until the garbage collector found it."""
    async with running_server() as server:
        for _ in range(10):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"GET /play/style.css HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.read(1)  # the answer has begun
            writer.transport.abort()
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/healthz")).status_code == 200  # the server has moved on
        assert _open_web_files() == []
