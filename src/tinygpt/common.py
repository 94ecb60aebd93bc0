"""Small pieces every stage shares: the user-facing errors, device choice, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

# When this process first imported tinygpt (time.perf_counter seconds): where the wall-clock
# budget of `tinygpt train` starts, so that importing torch and preparing data spend it too.
PROCESS_START = time.perf_counter()


class TinyGPTError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits non-zero."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised the way Ctrl-C raises KeyboardInterrupt (so the same clean-up runs); the CLI exits 143."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal that stops a command becomes: Terminated for SIGTERM, else KeyboardInterrupt."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(name: str) -> bool:
    """Whether `name` is one of DEVICES (whether this machine has it is autodetect_device's question)."""
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,6})?", name) is not None


def autodetect_device(requested: str = "auto") -> str:
    """cuda -> mps -> cpu, so the same command works on a laptop and a GPU box.

    Raises TinyGPTError for a name that is not a device, or a device this machine does not have.
    """
    import torch

    if not is_device_name(requested):
        raise TinyGPTError(f"unknown device {requested!r} (use {DEVICES})")
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise TinyGPTError(f"device {requested!r} requested but CUDA is not available")
        if ":" in requested and int(requested.split(":")[1]) >= torch.cuda.device_count():
            raise TinyGPTError(f"device {requested!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise TinyGPTError("device 'mps' requested but MPS is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse rather than hand it back to the system.

    A training step on the CPU allocates and frees the same tens of megabytes of activations
    every step. By default glibc serves a block over its mmap threshold (128 KiB,
    raised as such blocks are freed) with fresh pages and trims the heap's free top once it
    exceeds twice that threshold, so every step faults in and zero-fills new pages: on the seed
    preset about 7,000 minor page faults a step and a tenth of its time (BENCHMARKS.md, "A faster
    training step"). Fixing the threshold at glibc's largest (32 MiB), never trimming and growing
    the heap 64 MiB at a time keeps a step's memory mapped from one step to the next; the peak
    resident memory is the one a step reaches anyway. Process-wide, for the allocations that
    follow. Returns False where the C library has no mallopt (macOS, Windows).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, top_pad, mmap_threshold = -1, -2, -3  # glibc's M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    settings = ((mmap_threshold, 32 * 2**20), (trim_threshold, 2**31 - 1), (top_pad, 64 * 2**20))
    return all(mallopt(option, value) == 1 for option, value in settings)


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

    Raises OSError (a full disk, no permission) from the file system, naming `path`, after cleaning up.
    """
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with naming_errors(path):  # a write() on a full disk names no file: it is `path`'s
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            finally:
                os.close(fd)
            yield Path(tmp)
            fsync_path(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == tmp:
            e.filename = str(path)
        raise


@contextlib.contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """An OSError raised inside without a file name (a write() on a full disk has none) gets `path`'s,
    so the one-line error says which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def write_file(path: str | Path, data: bytes) -> None:
    """Write a whole file in place (inside an atomic_folder, which makes the whole folder atomic).

    Raises OSError naming `path` (a full disk, no permission)."""
    with naming_errors(path), open(path, "wb") as f:
        f.write(data)


def copy_folder(source: str | Path, target: str | Path) -> None:
    """Copy a folder of small files (a tokenizer) to `target`, which must not exist.

    Raises OSError naming the file being written (shutil.copytree would gather its errors into
    one shutil.Error holding a list, and name the source file of a failed write).
    """
    source, target = Path(source), Path(target)
    target.mkdir()
    for path in sorted(source.iterdir()):
        if path.is_dir():
            copy_folder(path, target / path.name)
        else:
            write_file(target / path.name, path.read_bytes())


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside `out`, then put it in place whole.

    Yields the temporary folder to fill. When the block
    ends normally every file in it is flushed to disk, the folder is renamed to `out` (an
    existing `out` is first moved aside, then deleted: a folder cannot be renamed over a
    non-empty one) and the parent folder is flushed, so the rename itself survives a power
    cut. When the block raises, the temporary folder is deleted and `out` is untouched.
    A crash leaves either the old `out` or the new one, never half of one; at worst a
    `.NAME.*.tmp` or `.NAME.*.old` sibling, which the next writer of `out` removes.

    Raises OSError (a full disk, no permission) from the file system, after cleaning up; one
    about a file in the temporary folder names the file as it would have been called in `out`.
    """
    out = Path(out).resolve()  # also gives "." a name for the sibling
    out.parent.mkdir(parents=True, exist_ok=True)
    leftovers = [out.parent.glob(f".{glob.escape(out.name)}.*.{end}") for end in ("tmp", "old")]
    for leftover in chain(*leftovers):  # left by a writer that was killed
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and isinstance(e.filename, str) and Path(e.filename).is_relative_to(tmp):
            e.filename = str(out / Path(e.filename).relative_to(tmp))
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


def read_jsonl(path: str | Path, keys: dict[str, type] | None = None) -> list[dict]:
    """The objects of a JSON-lines file the project appends to, each holding `keys` of their types.

    A last line cut short (a killed writer) is skipped quietly; any other line that is not such an
    object (not UTF-8, not JSON: a damaged or hand-edited file) is skipped with a warning on stderr,
    so that what reads the file (resuming, plotting) still works.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: empty, or a line a killed writer cut short
    rows, skipped = [], 0
    for line in filter(None, lines):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if isinstance(row, dict) and all(isinstance(row.get(key), typ) for key, typ in (keys or {}).items()):
            rows.append(row)
        else:
            skipped += 1
    if skipped:
        print(f"warning: skipped {skipped} damaged line(s) of {path}", file=sys.stderr)
    return rows
