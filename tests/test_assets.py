"""llama_tf.assets: files found in the shared folder, else downloaded once, checked by sha256.

Downloads are served from this machine (a loopback HTTP server), never from the network."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from llama_tf import assets
from conftest import require, shared_path


@pytest.fixture
def server(tmp_path):
    "An HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL, list of requested paths)."
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    "No shared folder, an empty cache, downloads allowed."
    monkeypatch.setenv(assets.SHARED_ENV, str(tmp_path / "no-shared"))
    monkeypatch.setattr(assets, "cache_folder", lambda: tmp_path / "cache")
    monkeypatch.delenv(assets.OFFLINE_ENV, raising=False)
    return tmp_path / "cache"


def _serve(monkeypatch, server, content: bytes, sha256: str | None = None):
    served, url, _ = server
    (served / "corpus.txt").write_bytes(content)
    asset = assets.Asset("data/corpus.txt", f"{url}/corpus.txt", sha256 or hashlib.sha256(content).hexdigest(), "test")
    monkeypatch.setitem(assets.ASSETS, "corpus", asset)


def test_the_shared_files_are_the_published_ones():
    "The sha256 each download is checked against is that of the file the tests read (shared, or a package's)."
    for name, asset in assets.ASSETS.items():
        path = assets.find(name) if asset.package_path else shared_path(asset.path)
        assert path is not None, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == asset.sha256, name
        assert assets.find(name) == path


def test_a_package_that_ships_the_file_is_found(monkeypatch, tmp_path):
    require("llama_models")
    monkeypatch.setenv(assets.SHARED_ENV, str(tmp_path / "no-shared"))
    monkeypatch.setattr(assets, "cache_folder", lambda: tmp_path / "cache")
    found = assets.find("llama3-tokenizer")
    assert found is not None and found.parts[-3:] == ("llama_models", "llama3", "tokenizer.model")


def test_download_once_into_the_cache(isolated, server, monkeypatch):
    _serve(monkeypatch, server, b"To be, or not to be\n")
    assert assets.find("corpus") is None
    path = assets.fetch("corpus")
    assert path == isolated / "data" / "corpus.txt" and path.read_bytes() == b"To be, or not to be\n"
    assert assets.fetch("corpus") == path and assets.find("corpus") == path
    assert server[2] == ["/corpus.txt"]          # the second fetch read the cache


def test_a_download_with_another_digest_is_refused_and_not_kept(isolated, server, monkeypatch):
    _serve(monkeypatch, server, b"tampered\n", sha256="0" * 64)
    with pytest.raises(assets.AssetError, match="refused"):
        assets.fetch("corpus")
    assert not any(isolated.rglob("*corpus*"))
    assert assets.find("corpus") is None


def test_a_failed_download_names_the_file_and_its_origin(isolated, server, monkeypatch):
    _serve(monkeypatch, server, b"x")
    (server[0] / "corpus.txt").unlink()          # the server answers 404
    with pytest.raises(assets.AssetError, match=r"corpus.txt not found, and downloading it from http://127.0.0.1:\d+/corpus.txt failed"):
        assets.fetch("corpus")


def test_offline_never_downloads(isolated, server, monkeypatch):
    _serve(monkeypatch, server, b"x")
    monkeypatch.setenv(assets.OFFLINE_ENV, "1")
    with pytest.raises(assets.AssetError, match="downloads are off"):
        assets.fetch("corpus")
    assert server[2] == []


def test_the_shared_folder_comes_first(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyshakespeare.txt").write_text("local")
    monkeypatch.setenv(assets.SHARED_ENV, str(tmp_path))
    assert assets.fetch("tinyshakespeare") == tmp_path / "data" / "tinyshakespeare.txt"


def test_unknown_asset():
    with pytest.raises(assets.AssetError, match="unknown asset 'nope'; known: tinyshakespeare, llama-tokenizer, llama3-tokenizer"):
        assets.find("nope")
