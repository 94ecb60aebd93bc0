"""Small pieces every stage shares: the user-facing error, device choice, atomic writes."""

from __future__ import annotations

import json
import os
import re
import tempfile
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
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
