"""Small pieces every stage shares: the user-facing error, device choice, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class TinyGPTError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


def autodetect_device(requested: str = "auto") -> str:
    """cuda -> mps -> cpu, so the same command works on a laptop and a GPU box."""
    import torch

    if requested != "auto":
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", requested):
            raise TinyGPTError(f"unknown device {requested!r} (use auto, cpu, cuda, cuda:N or mps)")
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise TinyGPTError(f"device {requested!r} requested but CUDA is not available")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise TinyGPTError("device 'mps' requested but MPS is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` all or nothing (atomic_file)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside `path` to fill; when the block ends normally, flush it to disk and
    rename it over `path`.

    For a writer that wants a path rather than bytes in memory (the GGUF writer streams its
    tensors). A crash leaves either the old file or the new one, never half of one; at worst a
    `.NAME.*.tmp` sibling (SIGKILL, SIGTERM), which the next writer of `path` removes. When the
    block raises, the temporary file is deleted and `path` is untouched.

    Raises OSError (a full disk, no permission) from the file system, after cleaning up.
    """
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        finally:
            os.close(fd)
        yield Path(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside `out`, then put it in place whole.

    Yields the temporary folder to fill. When the block
    ends normally every file in it is flushed to disk, the folder is renamed to `out` (an
    existing `out` is first moved aside, then deleted: a folder cannot be renamed over a
    non-empty one) and the parent folder is flushed, so the rename itself survives a power
    cut. When the block raises, the temporary folder is deleted and `out` is untouched.
    A crash leaves either the old `out` or the new one, never half of one; at worst a
    `.NAME.*.tmp` sibling, which the next writer of `out` removes.

    Raises OSError (a full disk, no permission) from the file system, after cleaning up.
    """
    out = Path(out).resolve()  # also gives "." a name for the sibling
    out.parent.mkdir(parents=True, exist_ok=True)
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # left by a writer that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # not tempfile.mkdtemp: its private mode would end up on the folder
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_path(path: str | Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only on POSIX, where they can be opened)."""
    if os.name != "posix" and Path(path).is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, what: str) -> dict:
    """Read a JSON file the project wrote, turning every way it can be broken into one error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyGPTError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyGPTError(f"{what} is not valid JSON: {path} ({e})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a JSON-lines file the project appends to; a line cut short (a killed writer) is skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows
