"""Text in, token shards out: streaming document readers, parallel encoding, shard files and their manifest.

A prepared folder holds `manifest.json`, `tokenizer/` and `.bin` shards (raw little-endian
uint16 or uint32 token ids, end-of-text after every document). Everything is written under
temporary names and renamed when complete, so an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

from pathlib import Path

from .common import TinyGPTError, read_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared folder, checked for the format version this code writes.

    Layout: {"format_version", "dtype", "vocab_size", "eot_id", "tokenizer_kind", "tokenizer_hash",
    "source_bytes", "splits": {"train"|"val": {"shards": [{"file", "tokens"}], "tokens", "documents",
    "text_bytes", "unknown"}}}
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TinyGPTError(f"prepared data folder not found: {folder}")
    manifest = read_json(folder / MANIFEST, "prepared-data manifest (run 'tinygpt prepare' first)")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise TinyGPTError(
            f"{folder / MANIFEST} has format version {manifest.get('format_version')!r}; "
            f"this tinygpt reads version {MANIFEST_VERSION}: prepare the data again"
        )
    return manifest
