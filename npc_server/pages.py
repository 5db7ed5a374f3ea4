"""The `/play` pages: the files of `npc_server/web`, served from memory.

Quart's `send_from_directory` streams a file through an open file object that is
closed only when the body has been sent; a browser that closes its connection right
after an asset leaves that file for the garbage collector (a `ResourceWarning` per
request, an open descriptor until then). The pages are a few small files: each is
read whole, kept, and read again only when its size or modification time changes,
so a developer editing `app.js` sees the change on reload.

The HTML pages are `Cache-Control: private, no-cache`: their URLs may carry a
token (`/play?token=`), which no shared cache may keep; the browser still
revalidates its own copy by ETag. The other files are public.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from zlib import adler32

from quart import Response, request
from werkzeug.security import safe_join

DEFAULT_MIMETYPE = "application/octet-stream"
MAX_AGE = 0  # the pages change with the server: browsers revalidate (ETag) each load


@dataclass(frozen=True, slots=True)
class _File:
    stamp: tuple[int, int]  # (st_mtime_ns, st_size) when read
    data: bytes
    mimetype: str
    etag: str
    modified: float


class Pages:
    """The files under one directory, by their relative path; nothing outside it."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._files: dict[Path, _File] = {}

    def read(self, name: str) -> _File | None:
        """The file `name` (a path below the root), or None: missing, a directory,
        or a name that leaves the root (`..`, an absolute path). Links inside the
        directory are followed: `vendor/npc-client` links to the JavaScript client."""
        joined = safe_join(str(self._root), name)
        if joined is None:
            return None
        # Kept by the file it names: `a/../app.js` and `./app.js` are app.js, not
        # another copy of it (a client inventing such names would fill the memory).
        try:
            path = Path(joined).resolve()
            if not path.is_file():
                return None
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            kept = self._files.get(path)
            if kept is not None and kept.stamp == stamp:
                return kept
            data = path.read_bytes()
        except (OSError, ValueError):  # gone meanwhile (an edit), or a NUL in the name
            return None
        mimetype = mimetypes.guess_type(path.name)[0] or DEFAULT_MIMETYPE
        etag = f"{stat.st_mtime_ns:x}-{len(data):x}-{adler32(data):08x}"
        kept = _File(stamp, data, mimetype, etag, stat.st_mtime)
        self._files[path] = kept
        return kept

    async def respond(self, name: str) -> Response:
        """The response to a GET of `name`: the file (or 304 Not Modified when the
        request's validators match), or 404."""
        page = self.read(name)
        if page is None:
            return Response("not found", status=404, mimetype="text/plain")
        response = Response(page.data, mimetype=page.mimetype)
        response.last_modified = page.modified  # type: ignore[assignment]
        response.set_etag(page.etag)
        if page.mimetype == "text/html":
            response.cache_control.private = True
            response.cache_control.no_cache = True
        else:
            response.cache_control.public = True
            response.cache_control.max_age = MAX_AGE
        await response.make_conditional(request)
        return response
