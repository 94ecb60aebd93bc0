"""The on-disk format of a prepared folder: its layout, its manifest, writing shards and reading them back.

A prepared folder, written by `tinygpt prepare` and read by the loader, `train`, `eval` and `export`:

    manifest.json       format version, dtype, vocabulary, tokenizer hash, what was read and, per
                        split, the shards and their figures (with S, the source bytes that bits per
                        byte divides by); written last, so its presence marks the folder complete
    config.toml         the config the data was prepared with (with the vocabulary size it got)
    tokenizer/          the tokenizer (tokenizers.load_tokenizer reads it)
    train_000000.bin    raw little-endian uint16 or uint32 token ids: each split one stream that
    train_000001.bin    starts with the end-of-text token and has one for every separator line
    val_000000.bin      (see prepare.py), data.shard_tokens tokens per shard (the last shorter)

This module alone spells those names. Shards are read with numpy.memmap, so memory use does not
depend on the corpus size. What is read is checked where it enters: the manifest's whole schema
when it is read, each shard's size against the manifest when a split is opened, and the token ids
of every window read (ShardSet.read) against the vocabulary: a cheap max over a batch, where
scanning every shard at open would cost a pass over the corpus each time a run starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .common import TinyGPTError, naming_errors, read_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: split streams start with end-of-text; source_bytes per split
CONFIG = "config.toml"
TOKENIZER = "tokenizer"
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")  # unsigned token ids: uint16 while the vocabulary fits in it


def shard_name(split: str, index: int) -> str:
    """The file name of shard `index` (from 0) of `split`: `{split}_{index:06d}.bin`."""
    return f"{split}_{index:06d}.bin"


def is_prepared(folder: str | Path) -> bool:
    """Whether `folder` holds a complete prepared folder (its manifest; read_manifest checks the version)."""
    return (Path(folder) / MANIFEST).is_file()


def tokenizer_dir(folder: str | Path) -> Path:
    """The tokenizer folder of a prepared folder."""
    return Path(folder) / TOKENIZER


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared folder, checked for the format version this code writes.

    Layout: {"format_version", "dtype", "vocab_size", "eot_id", "tokenizer_kind", "tokenizer_hash",
    "input": {"files", "bytes", "line_endings", "cr_line_endings", "boms", "char_cuts", "notes"},
    optional "source", "splits": {"train"|"val": {"shards": [{"file", "tokens"}], "tokens", "documents",
    "empty_documents", "source_bytes", "unknown"}}}

    Raises TinyGPTError: no such folder, no manifest, or one of another format version (one line
    asking to prepare the data again).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TinyGPTError(f"prepared data folder not found: {folder}")
    manifest = read_json(folder / MANIFEST, "prepared-data manifest (run 'tinygpt prepare' first)")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_VERSION:
        raise TinyGPTError(
            f"{folder / MANIFEST} has format version {version!r}; "
            f"this tinygpt reads version {MANIFEST_VERSION}: prepare the data again"
        )
    _check_manifest(manifest, folder / MANIFEST)
    return manifest


def _check_manifest(manifest: dict, path: Path) -> None:
    """Raise TinyGPTError, naming the first key that is wrong, unless `manifest` has read_manifest's layout."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise TinyGPTError(f"{path} is damaged: {what}; prepare the data again")

    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    dtype, vocab_size = manifest.get("dtype"), manifest.get("vocab_size")
    need(dtype in DTYPES, f"dtype {dtype!r} is not an unsigned token dtype ({' or '.join(DTYPES)})")
    need(count(vocab_size) and 0 < vocab_size <= np.iinfo(dtype).max + 1, f"vocab_size {vocab_size!r} does not fit {dtype}")
    need(count(manifest.get("eot_id")) and manifest["eot_id"] < vocab_size, f"eot_id {manifest.get('eot_id')!r} is not a token id")
    for key in ("tokenizer_kind", "tokenizer_hash"):
        need(isinstance(manifest.get(key), str), f"{key} is not a string")
    read = manifest.get("input")
    need(isinstance(read, dict) and count(read.get("bytes")), "input.bytes is not a count")
    splits = manifest.get("splits")
    need(isinstance(splits, dict) and all(isinstance(splits.get(split), dict) for split in SPLITS), "splits lacks train or val")
    for split in SPLITS:
        info = splits[split]
        for key in ("tokens", "documents", "empty_documents", "source_bytes", "unknown"):
            need(count(info.get(key)), f"splits.{split}.{key} is not a count")
        shards = info.get("shards")
        need(isinstance(shards, list) and all(isinstance(shard, dict) for shard in shards), f"splits.{split}.shards is not a list")
        for shard in shards:
            name = shard.get("file")
            plain = isinstance(name, str) and re.fullmatch(r"[\w-][\w.-]*\.bin", name) is not None
            need(plain, f"shard file {name!r} is not a .bin file's name in the folder")
            need(count(shard.get("tokens")), f"shard {name} has no token count")
        need(sum(shard["tokens"] for shard in shards) == info["tokens"], f"splits.{split}.tokens is not the sum of its shards'")


class ShardWriter:
    """Tokens of one split into `{split}_000000.bin`, `{split}_000001.bin`, ..., `shard_tokens` tokens each
    (the last one shorter). A shard is flushed to disk when it is complete."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder = folder
        self.split = split
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []  # the manifest's [{"file", "tokens"}]
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None:
                self.shards.append({"file": shard_name(self.split, len(self.shards)), "tokens": 0})
                self._file = open(self.folder / self.shards[-1]["file"], "wb")  # noqa: SIM115 (closed in _finish)
            room = self.shard_tokens - self.shards[-1]["tokens"]
            with naming_errors(self._file.name):
                self._file.write(tokens[:room])
            self.shards[-1]["tokens"] += min(room, tokens.size)
            tokens = tokens[room:]
            if self.shards[-1]["tokens"] == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish()
        return self.shards

    def _finish(self) -> None:
        with naming_errors(self._file.name):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._file = None


class ShardSet:
    """The shards of one split, addressed as one stream of tokens.

    `tokens`: the stream's length; `source_bytes`: S, the bytes of input it was read from.
    """

    def __init__(self, folder: str | Path, split: str):
        folder = Path(folder)
        self.manifest = read_manifest(folder)
        info = self.manifest["splits"].get(split)
        if not info or not info["tokens"]:
            raise TinyGPTError(f"{folder} has no {split!r} tokens")
        dtype = np.dtype(self.manifest["dtype"])
        self.shards = []
        for shard in info["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                raise TinyGPTError(f"shard {path} is missing: prepare the data again")
            size, expected = path.stat().st_size, shard["tokens"] * dtype.itemsize
            if size != expected:
                raise TinyGPTError(
                    f"shard {path} has {size:,} bytes where its manifest says {expected:,} "
                    f"({shard['tokens']:,} {dtype} tokens): prepare the data again"
                )
            self.shards.append(np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype))
        self.folder = folder
        self.vocab_size = self.manifest["vocab_size"]
        self.split = split
        self.tokens = int(info["tokens"])
        self.source_bytes = int(info["source_bytes"])
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])  # stream position of each shard's first token

    def windows_starts(self, length: int) -> np.ndarray:
        """Cumulative count of window start positions of `length` tokens, shard by shard."""
        return np.cumsum([max(0, len(s) - length + 1) for s in self.shards])

    def read(self, shard: int, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of shard number `shard`, as int64 (length,); raises
        TinyGPTError for an id past the vocabulary (check_ids)."""
        ids = np.asarray(self.shards[shard][start : start + length], dtype=np.int64)
        self.check_ids(ids, shard, start)
        return ids

    def check_ids(self, ids: np.ndarray, shard: int, start: int) -> None:
        """Raise TinyGPTError when `ids`, read from shard number `shard` at `start`, hold an id past the
        vocabulary: a damaged or hand-edited shard, which the model's embedding would index out of range."""
        if ids.size and ids.max() >= self.vocab_size:
            first = int(np.argmax(ids >= self.vocab_size))
            raise TinyGPTError(
                f"shard {self.folder / self.manifest['splits'][self.split]['shards'][shard]['file']} holds token id "
                f"{ids[first]} at position {start + first:,}, past the vocabulary of {self.vocab_size}: prepare the data again"
            )

    def span(self, start: int, length: int) -> np.ndarray:
        """Tokens start .. start + length - 1 of the stream, across shard boundaries, as int64."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        pieces = []
        while length > 0 and first < len(self.shards):
            piece = self.read(first, start - int(self._starts[first]), length)
            pieces.append(piece)
            start, length, first = start + piece.size, length - piece.size, first + 1
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]
