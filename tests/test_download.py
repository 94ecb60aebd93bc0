"""Downloading TinyStories, against a local HTTP server that serves the shared sample with Range
support (http.server has none), and can cut a transfer short or ignore ranges."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tinygpt.common import TinyGPTError
from tinygpt.download import download, download_tinystories, parse_files


class StoryServer(ThreadingHTTPServer):
    """Serves the files of `folder`; records each request's path and Range header."""

    daemon_threads = True

    def __init__(self, folder: Path):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.folder = folder
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # send only this many bytes of the next answer, then hang up
        self.ignore_ranges = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(BaseHTTPRequestHandler):
    server: StoryServer

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = self.server.folder / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        content = path.read_bytes()
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not self.server.ignore_ranges:
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(content):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(content)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            self.send_response(200)
        body = content[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body, self.server.cut_after = body[: self.server.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(train_txt):
    srv = StoryServer(train_txt.parent)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_download_gets_the_exact_file(server, train_txt, tmp_path):
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", train_txt.stat().st_size, progress=False)
    assert path.read_bytes() == train_txt.read_bytes()
    assert server.requests == [("/train.txt", None)]
    assert download(f"{server.url}/train.txt", path, train_txt.stat().st_size) == path  # cached: no request
    assert len(server.requests) == 1


def test_a_cut_connection_is_resumed_with_a_range_request(server, train_txt, tmp_path):
    server.cut_after = 500_000
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", train_txt.stat().st_size, progress=False)
    assert path.read_bytes() == train_txt.read_bytes()
    assert server.requests == [("/train.txt", None), ("/train.txt", "bytes=500000-")]
    assert not (tmp_path / "train.txt.part").exists()


def test_a_partial_file_from_an_earlier_run_is_continued(server, train_txt, tmp_path):
    (tmp_path / "train.txt.part").write_bytes(train_txt.read_bytes()[:123_456])
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", None, progress=False)  # size from the server
    assert path.read_bytes() == train_txt.read_bytes()
    assert server.requests == [("/train.txt", "bytes=123456-")]


def test_a_complete_part_file_is_recognised_by_the_416_answer(server, train_txt, tmp_path):
    (tmp_path / "train.txt.part").write_bytes(train_txt.read_bytes())
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", None, progress=False)
    assert path.read_bytes() == train_txt.read_bytes()


def test_a_part_file_longer_than_the_file_is_started_again(server, train_txt, tmp_path):
    size = train_txt.stat().st_size
    (tmp_path / "train.txt.part").write_bytes(b"x" * (size + 10))
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", None, progress=False)
    assert path.read_bytes() == train_txt.read_bytes()
    assert server.requests == [("/train.txt", f"bytes={size + 10}-"), ("/train.txt", None)]


def test_a_server_that_ignores_ranges_gets_the_file_rewritten(server, train_txt, tmp_path):
    server.ignore_ranges = True
    (tmp_path / "train.txt.part").write_bytes(b"x" * 1000)  # not even the right bytes
    path = download(f"{server.url}/train.txt", tmp_path / "train.txt", train_txt.stat().st_size, progress=False)
    assert path.read_bytes() == train_txt.read_bytes()
    assert server.requests == [("/train.txt", "bytes=1000-")]


def test_wrong_expected_size_is_an_error(server, train_txt, tmp_path):
    size = train_txt.stat().st_size
    with pytest.raises(TinyGPTError, match=f"has {size:,} bytes, expected {size + 1:,}"):
        download(f"{server.url}/train.txt", tmp_path / "train.txt", size + 1, progress=False)
    assert not (tmp_path / "train.txt").exists()


def test_missing_file_and_unreachable_server_are_errors(server, tmp_path):
    with pytest.raises(TinyGPTError, match="HTTP 404"):
        download(f"{server.url}/nope.txt", tmp_path / "nope.txt", progress=False)
    with pytest.raises(TinyGPTError, match=r"cannot download http://127\.0\.0\.1:9/x\.txt: .*refused"):
        download("http://127.0.0.1:9/x.txt", tmp_path / "x.txt", attempts=2, progress=False)


def test_files_setting_and_cache_folder(server, train_txt, valid_txt, tmp_path, monkeypatch):
    assert [(f.name, f.size) for f in parse_files("a.txt:10,b.txt")] == [("a.txt", 10), ("b.txt", None)]
    with pytest.raises(TinyGPTError, match="expected two files"):
        parse_files("a.txt")
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    paths = download_tinystories(base_url=server.url, files="train.txt,valid.txt")
    assert paths == (tmp_path / "cache" / "tinystories" / "train.txt", tmp_path / "cache" / "tinystories" / "valid.txt")
    assert paths[1].read_bytes() == valid_txt.read_bytes()


def test_prepare_tinystories_end_to_end(server, train_txt, valid_txt, tinygpt_command, tmp_path):
    sizes = f"train.txt:{train_txt.stat().st_size},valid.txt:{valid_txt.stat().st_size}"
    local = ["prepare", "tinystories", "--base-url", server.url, "--tokenizer", "char"]
    results = tinygpt_command.run_all(
        {
            "ok": [*local, "--files", sizes, "--cache", tmp_path / "cache", "--out", tmp_path / "out"],
            "wrong size": [*local, "--files", "train.txt:99,valid.txt", "--cache", tmp_path / "c2", "--out", tmp_path / "o2"],
            "unreachable": ["prepare", "tinystories", "--base-url", "http://127.0.0.1:9", "--cache", tmp_path / "c3",
                            "--out", tmp_path / "o3"],
        }
    )  # fmt: skip
    assert results["ok"].returncode == 0, results["ok"].stderr
    assert "train: 2,316 documents" in results["ok"].stdout and "val:   1,000 documents" in results["ok"].stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] == 2316 and manifest["splits"]["val"]["documents"] == 1000
    assert manifest["input"]["bytes"] == train_txt.stat().st_size + valid_txt.stat().st_size
    assert manifest["source"] == "tinystories"  # so an exported model card carries its licence
    assert (tmp_path / "cache" / "train.txt").read_bytes() == train_txt.read_bytes()
    for case, message in (("wrong size", "has 2,094,605 bytes, expected 99"), ("unreachable", "cannot download")):
        result = results[case]
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
