"""Fetch the TinyStories text files: cached, resumable and size-checked, with the standard library only.

A file is downloaded into `NAME.part` and renamed when it has its expected size, so a file
under its final name is always complete. An interrupted download continues where it stopped
with an HTTP Range request; a server that ignores the range (200 instead of 206) gets the file
written again from the start.
"""

from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .common import TinyGPTError, naming_errors

BASE_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
BLOCK_BYTES = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None = None  # expected bytes; None: trust the server's Content-Length


# Sizes of the files at revision f54c09fd23315a6f9c86f9dc80f725de7d8f9c64 of the dataset. V2's are not
# published in the sources we checked, so they are checked against the server's Content-Length.
VERSIONS = {
    "v1": (RemoteFile("TinyStories-train.txt", 1_924_281_556), RemoteFile("TinyStories-valid.txt", 19_447_282)),
    "v2": (RemoteFile("TinyStoriesV2-GPT4-train.txt"), RemoteFile("TinyStoriesV2-GPT4-valid.txt")),
}


def parse_files(text: str) -> tuple[RemoteFile, RemoteFile]:
    """'train.txt:2094605,valid.txt:803232' (sizes optional) -> the train and validation files."""
    files = []
    for item in text.split(","):
        name, _, size = item.strip().partition(":")
        if not name or (size and not size.isdigit()):
            raise TinyGPTError(f"--files {text!r}: expected TRAIN[:SIZE],VALID[:SIZE] with sizes in bytes")
        files.append(RemoteFile(name, int(size) if size else None))
    if len(files) != 2:
        raise TinyGPTError(f"--files {text!r}: expected two files, the training and the validation one")
    return files[0], files[1]


def cache_folder(cache: str | None = None) -> Path:
    """--cache, else $TINYGPT_CACHE/tinystories, else ~/.cache/tinygpt/tinystories."""
    if cache:
        return Path(cache).expanduser()
    root = os.environ.get("TINYGPT_CACHE") or Path.home() / ".cache" / "tinygpt"
    return Path(root).expanduser() / "tinystories"


def download_tinystories(
    version: str = "v1", cache: str | None = None, base_url: str | None = None, files: str | None = None
) -> tuple[Path, Path]:
    """Download (or find in the cache) the TinyStories training and validation files."""
    if version not in VERSIONS:
        raise TinyGPTError(f"unknown TinyStories version {version!r} (known: {', '.join(VERSIONS)})")
    remote = parse_files(files) if files else VERSIONS[version]
    folder = cache_folder(cache)
    base = (base_url or BASE_URL).rstrip("/")
    return tuple(download(f"{base}/{f.name}", folder / f.name, f.size) for f in remote)


def download(url: str, dest: Path, size: int | None = None, *, attempts: int = 3, progress: bool = True) -> Path:
    """Fetch `url` into `dest` through `dest.part`, continuing a partial download.

    `size` is checked against the server's answer before the transfer and against the file
    after it. Network failures are retried, continuing from what arrived; the download gives
    up after `attempts` failures in a row that brought no new bytes.
    """
    dest = Path(dest)
    if dest.is_file():
        if size is None or dest.stat().st_size == size:
            print(f"using {dest}", flush=True)
            return dest
        raise TinyGPTError(f"{dest} has {dest.stat().st_size:,} bytes, expected {size:,}: delete it to download it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url} -> {dest}", flush=True)
    failures = 0
    while True:
        before = _size(part)
        try:
            _fetch(url, part, size, progress)
            break
        except _Interrupted as e:
            failures = 0 if _size(part) > before else failures + 1
            if failures >= attempts:
                raise TinyGPTError(f"cannot download {url}: {e}") from None
            time.sleep(0.5 * failures)
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    """A network failure worth retrying: what arrived so far is kept in the .part file."""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch(url: str, part: Path, size: int | None, progress: bool) -> None:
    """One attempt: request the bytes `part` lacks and append them; raise _Interrupted if it stops short."""
    from tqdm import tqdm

    have = _size(part)
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    headers = {"User-Agent": f"tinygpt/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing from byte `have` on: done, or the .part file is not this file
            if _content_range(e.headers.get("Content-Range"))[1] == have:
                return
            part.unlink()
            raise _Interrupted("the partial download does not match the file on the server") from None
        if e.code >= 500:
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
        raise TinyGPTError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Interrupted(getattr(e, "reason", None) or e) from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != have:
                raise TinyGPTError(f"cannot download {url}: asked for the bytes from {have}, got them from {start}")
        else:  # 200: the whole file, whether or not we asked for a range
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise TinyGPTError(f"{url} has {total:,} bytes, expected {size:,}")
        expected = size if size is not None else total
        bar = tqdm(total=expected, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], disable=None if progress else True)
        with naming_errors(part), open(part, "ab" if have else "wb") as f, bar:
            while True:
                try:
                    block = response.read(BLOCK_BYTES)
                except (OSError, http.client.HTTPException) as e:
                    raise _Interrupted(e) from None
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    got = _size(part)
    if expected is not None and got < expected:
        raise _Interrupted(f"the connection closed after {got:,} of {expected:,} bytes")
    if expected is not None and got > expected:
        part.unlink()
        raise TinyGPTError(f"{url} sent {got:,} bytes, expected {expected:,}")


_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from 'bytes 100-199/1000', or from 'bytes */1000' in a 416 answer."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)
