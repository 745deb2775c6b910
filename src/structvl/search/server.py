"""`structvl serve`: a local web page to search an index by text and watch what it finds.

Served by the standard library's `http.server` (a threading server). That is enough here: one local user, five
read-only routes, and no dependency to add; it is not meant to face a network, so it binds to 127.0.0.1 unless
told otherwise. Routes:

    GET /                        the page (static/index.html, app.js, style.css: package data)
    GET /api/info                what is served: entries, index key, measured recall@10, checkpoint
    GET /api/search?q=...&k=10   {"query", "results": [{rank, score, id, video, start, end, captions,
                                 thumb, video_url}]}; a bad query or k is a 400 with {"error": one line}
    GET /thumb/<entry>.gif       an animated thumbnail of the entry's window (frames of the eval sampling)
    GET /video/<path>            a video file (byte ranges supported, so the browser can seek)

Video files are served only from the indexed video root: a path is refused (403) when it is absolute, has a
`..` part, a backslash or a NUL, resolves (through symlinks) outside the root, or is not the video of an
indexed entry. Queries are limited to `query.MAX_QUERY_CHARS` characters and k to `query.MAX_K`.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import logging
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from structvl.config import ConfigError
from structvl.data.sampling import sample_frame_indices
from structvl.data.video import VideoDecodeError, open_video
from structvl.search.query import MAX_QUERY_CHARS, Searcher

log = logging.getLogger("structvl.search")

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
RANGE_BYTES = 4 * 2**20  # the most one open-ended range answer (and one read) carries
THUMB_FRAMES = 8
THUMB_WIDTH = 160  # pixels: thumbnails are scaled (nearest neighbour) to about this width
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self'; media-src 'self'"}


def inside_root(root: Path, relative: str) -> Path | None:
    """`root / relative` when that is a safe name for a file inside `root` (symlinks resolved), else None."""
    if not relative or "\x00" in relative or "\\" in relative:
        return None
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        return None
    real_root = root.resolve()
    real = (root / pure).resolve()
    if real != real_root and real_root not in real.parents:
        return None
    return root / pure


def thumbnail_gif(path: Path, start: float | None, end: float | None, backend: str = "pyav") -> bytes:
    """An animated GIF of THUMB_FRAMES frames spread over [start, end] of the video at `path`."""
    from PIL import Image  # Pillow comes with matplotlib, a dependency; imported here to keep `import` light

    with open_video(path, backend) as reader:
        indices, _ = sample_frame_indices(reader.num_frames, reader.fps, THUMB_FRAMES, "uniform",
                                          start_sec=start, end_sec=end)
        frames = reader.get_frames(np.unique(indices))
    scale = max(1, THUMB_WIDTH // frames.shape[2])
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=150, loop=0)
    return buffer.getvalue()


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, searcher: Searcher, host: str = "127.0.0.1", port: int = 8765):
        self.searcher = searcher
        self.root = searcher.video_root
        # The indexed videos, by their path relative to the root: the only files /video/ serves.
        self.videos: dict[str, int] = {}
        for i, entry in enumerate(searcher.entries):
            relative = self.relative_video(entry["video"])
            if relative is not None:
                self.videos.setdefault(PurePosixPath(relative).as_posix(), i)
        self.thumbnail = functools.lru_cache(maxsize=1024)(self._thumbnail)
        super().__init__((host, port), SearchHandler)

    def relative_video(self, video: str) -> str | None:
        """The entry's video path relative to the root, when it lies inside it."""
        path = Path(video)
        if path.is_absolute():
            try:
                video = path.relative_to(self.root).as_posix()
            except ValueError:
                return None
        return video if inside_root(self.root, video) is not None else None

    def _thumbnail(self, entry: int) -> bytes | None:
        item = self.searcher.entries[entry]
        relative = self.relative_video(item["video"])
        if relative is None:
            return None
        try:
            return thumbnail_gif(self.root / relative, item["start"], item["end"], self.searcher.cfg.data.backend)
        except (VideoDecodeError, OSError) as e:
            log.warning("no thumbnail for entry %d (%s): %s", entry, item["video"], e)
            return None

    def results(self, query: str, k: int) -> list[dict]:
        hits = self.searcher.search([query], k)[0]
        for hit in hits:
            relative = self.relative_video(hit["video"])
            hit["thumb"] = f"/thumb/{hit['entry']}.gif"
            hit["video_url"] = None if relative is None else "/video/" + quote(relative)
        return hits


class SearchHandler(BaseHTTPRequestHandler):
    server: SearchServer
    server_version = "structvl-search"

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        url = urlsplit(self.path)
        path = unquote(url.path)
        if path in ("/", "/index.html") or path.removeprefix("/static/") in STATIC_FILES:
            name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
            body = resources.files("structvl.search").joinpath("static", name).read_bytes()
            return self._send(HTTPStatus.OK, body, STATIC_FILES[name])
        if path == "/api/info":
            return self._json(HTTPStatus.OK, self._info())
        if path == "/api/search":
            return self._search(parse_qs(url.query))
        match = re.fullmatch(r"/thumb/(\d+)\.gif", path)
        if match:
            entry = int(match.group(1))
            gif = self.server.thumbnail(entry) if entry < len(self.server.searcher.entries) else None
            if gif is None:
                return self._json(HTTPStatus.NOT_FOUND, {"error": "no thumbnail for this entry"})
            return self._send(HTTPStatus.OK, gif, "image/gif", {"Cache-Control": "max-age=3600"})
        if path.startswith("/video/"):
            return self._video(path.removeprefix("/video/"))
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    do_HEAD = do_GET

    def _info(self) -> dict:
        searcher = self.server.searcher
        info = searcher.info
        return {"entries": len(searcher.entries), "vectors": info["vectors"], "index_key": info["index_key"],
                "parameters": info["parameters"], "recall@10": info["recall@10"],
                "checkpoint": searcher.store.manifest()["checkpoint"], "max_query_chars": MAX_QUERY_CHARS}

    def _search(self, params: dict) -> None:
        query = params.get("q", [""])[0]
        try:
            k = int(params.get("k", ["10"])[0])
        except ValueError:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "k: not a whole number"})
        try:
            results = self.server.results(query, k)
        except ConfigError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        return self._json(HTTPStatus.OK, {"query": query, "results": results})

    def _video(self, relative: str) -> None:
        path = inside_root(self.server.root, relative)
        if path is None or PurePosixPath(relative).as_posix() not in self.server.videos:
            return self._json(HTTPStatus.FORBIDDEN, {"error": "only the indexed videos under the index's root"})
        try:
            size = path.stat().st_size
        except OSError:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "video file missing"})
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        start, stop, status, headers = 0, size, HTTPStatus.OK, {"Accept-Ranges": "bytes"}
        ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if ranged and any(ranged.groups()):  # one byte range, as browsers ask to seek in a video
            first, last = ranged.groups()
            start = int(first) if first else max(0, size - int(last))
            stop = min(int(last) + 1, size) if first and last else size
            if start >= stop:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", content_type,
                                  {"Content-Range": f"bytes */{size}"})
            if not last:  # an open range ("bytes=N-"): answer a part, the browser asks for the rest
                stop = min(stop, start + RANGE_BYTES)
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(stop - start), **SECURITY_HEADERS,
                           **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return None
        with open(path, "rb") as f:  # streamed in blocks: a long video is never held in memory
            f.seek(start)
            left = stop - start
            while left > 0:
                block = f.read(min(left, RANGE_BYTES))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)
        return None


def serve_from_cli(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be between 0 and 65535")
    searcher = Searcher(args.index)
    server = SearchServer(searcher, args.host, args.port)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        log.warning("serving on %s: anyone who can reach this address can search the index and fetch its videos",
                    args.host)
    host, port = server.server_address[:2]
    print(f"serving {len(searcher.entries)} entries of {args.index} at http://{host}:{port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
