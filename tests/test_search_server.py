"""structvl.search.server: the page answers queries, serves thumbnails and the indexed videos, refuses every
path outside the indexed root, and works in a real headless Chromium (type a query, see result tiles)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from structvl.cli import build_parser
from structvl.search.extract import extract_embeddings
from structvl.search.index import index_embeddings
from structvl.search.query import MAX_QUERY_CHARS, Searcher
from structvl.search.server import SearchServer


@contextmanager
def running(searcher: Searcher):
    server = SearchServer(searcher, port=0)  # the default host: 127.0.0.1
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def get(server: SearchServer, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A GET with the path sent exactly as given (no client-side normalisation of `..`)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def collection(search_run, tmp_path_factory):
    """An indexed video directory: two clips, and a symlink to a clip outside the directory (indexed too, since
    extract reads through it, but never served)."""
    corpus, run = search_run
    base = tmp_path_factory.mktemp("served")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(corpus / "videos" / "test_000000.mp4", root / "a.mp4")
    shutil.copy(corpus / "videos" / "test_000001.mp4", root / "b.mp4")
    shutil.copy(corpus / "videos" / "test_000002.mp4", outside / "secret.mp4")
    os.symlink(outside / "secret.mp4", root / "link.mp4")  # leads out of the root: never embedded (data.allow_outside_root)
    extract_embeddings(run, root, base / "emb", progress=False)
    index_embeddings(base / "emb", base / "idx")
    (root / "later.mp4").write_bytes((root / "a.mp4").read_bytes())  # inside the root, but not indexed
    return Searcher(base / "idx"), root, outside


def test_server_answers_queries_with_thumbnails_and_videos(collection):
    searcher, root, _ = collection
    with running(searcher) as server:
        assert server.server_address[0] == "127.0.0.1"
        status, headers, body = get(server, "/api/search?q=" + quote("a red circle is moving") + "&k=3")
        assert status == 200 and headers["Content-Type"] == "application/json"
        results = json.loads(body)["results"]
        assert sorted(r["video"] for r in results) == ["a.mp4", "b.mp4"]  # k=3, but the link was never indexed
        assert [r["rank"] for r in results] == [1, 2] and results[0]["score"] >= results[-1]["score"]
        urls = {r["video"]: r["video_url"] for r in results}
        assert urls == {"a.mp4": "/video/a.mp4", "b.mp4": "/video/b.mp4"}

        thumbs = {r["video"]: r["thumb"] for r in results}
        status, headers, gif = get(server, thumbs["a.mp4"])
        assert status == 200 and headers["Content-Type"] == "image/gif" and gif.startswith(b"GIF89a")
        assert get(server, "/thumb/2.gif")[0] == 404  # no such entry
        status, headers, video = get(server, "/video/a.mp4")
        assert status == 200 and video == (root / "a.mp4").read_bytes()
        status, headers, part = get(server, "/video/a.mp4", {"Range": "bytes=10-29"})
        assert status == 206 and part == video[10:30]
        assert headers["Content-Range"] == f"bytes 10-29/{len(video)}"

        status, _, page = get(server, "/")
        assert status == 200 and b'id="q"' in page
        info = json.loads(get(server, "/api/info")[2])
        assert info["entries"] == 3 and info["vectors"] == 2 and info["index_key"] == "Flat" and info["max_query_chars"] == MAX_QUERY_CHARS


@pytest.mark.parametrize("path", [
    "/video/link.mp4",  # a symlink inside the root to a file outside it
    "/video/../outside/secret.mp4",  # a parent step, sent as is
    "/video/%2e%2e/outside/secret.mp4",  # ... percent-encoded
    "/video/sub/..%2f..%2foutside/secret.mp4",
    "/video//etc/passwd",  # absolute
    "/video/%2Fetc%2Fpasswd",
    "/video/a.mp4%00.txt",
    "/video/later.mp4",  # inside the root but not indexed
])
def test_server_refuses_paths_outside_the_indexed_videos(collection, path):
    searcher, _, outside = collection
    with running(searcher) as server:
        status, _, body = get(server, path)
    assert status == 403, (path, status)
    assert (outside / "secret.mp4").read_bytes()[:64] not in body


def test_server_refuses_bad_queries_with_one_line(collection):
    searcher, _, _ = collection
    with running(searcher) as server:
        for query, expected in ((("x" * (MAX_QUERY_CHARS + 1)) + "&k=3", "characters"), ("ball&k=5000", "-k 5000"),
                                ("ball&k=two", "k:"), ("%20&k=3", "empty")):
            status, _, body = get(server, f"/api/search?q={query}")
            assert status == 400 and expected in json.loads(body)["error"], (query, body)


def test_serve_binds_to_loopback_by_default(tmp_path):
    assert build_parser().parse_args(["serve", str(tmp_path)]).host == "127.0.0.1"


def test_page_in_a_headless_browser_shows_result_tiles(search_run, tmp_path, headless_chromium):
    """Type a query into the page in Chromium and see one tile per result, each with a loaded thumbnail, its
    caption and score. STRUCTVL_SEARCH_SCREENSHOT=path saves a screenshot of the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    corpus, run = search_run
    extract_embeddings(run, corpus / "test.jsonl", tmp_path / "emb", progress=False)
    index_embeddings(tmp_path / "emb", tmp_path / "idx")
    query = "a small red circle is moving to the left"
    searcher = Searcher(tmp_path / "idx")
    expected = searcher.search([query], k=10)[0]
    with running(searcher) as server:
        driver = headless_chromium(1100, 820)  # quit by the fixture
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        box = driver.find_element(By.ID, "q")
        box.send_keys(query)
        box.send_keys(Keys.ENTER)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results figure.tile"))
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        tiles = driver.find_elements(By.CSS_SELECTOR, "#results figure.tile")
        assert len(tiles) == 10  # the page's default top 10 of the 12 clips
        for tile, hit in zip(tiles, expected):  # the search's hits, in its order, with caption and score
            assert tile.text.startswith(f"#{hit['rank']}  score {hit['score']:.3f}".replace("  ", " "))
            assert hit["captions"][0] in tile.text and hit["id"] in tile.text
        assert "10 results" in driver.find_element(By.ID, "status").text
        if os.environ.get("STRUCTVL_SEARCH_SCREENSHOT"):
            driver.save_screenshot(os.environ["STRUCTVL_SEARCH_SCREENSHOT"])
