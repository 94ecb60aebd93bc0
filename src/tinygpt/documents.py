"""Text in, documents out: finding the input files and reading .txt, .jsonl and .json files as a stream.

A reader yields the documents of a file a piece at a time: about CHUNK_BYTES of input, cut where
documents end, so memory grows only with the largest document, not with the file. Bytes that are
not UTF-8 are reported with their file and offset (or read as U+FFFD with errors="replace").
"""

from __future__ import annotations

import codecs
import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .common import TinyGPTError
from .tokenizers import EOT_SEPARATOR, EOT_TEXT

CHUNK_BYTES = 1 << 20  # input read, split and encoded as one unit of work
INPUT_SUFFIXES = (".txt", ".jsonl", ".json")
_SEPARATOR_LINE = ("\n" + EOT_SEPARATOR).encode()  # a separator line, with the newline that ends the line before


# ---------------------------------------------------------------- finding the input files


def resolve_inputs(specs: Iterable[str], exclude: Path | None = None) -> list[Path]:
    """Files, folders (their .txt/.jsonl/.json files, recursively) and glob patterns, in the order given.

    Files under `exclude` (the output folder) are skipped, so preparing a folder into a
    subfolder of itself does not read the previous run's manifest as input.
    """
    paths: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
        elif path.is_file():
            found = [path]
        elif any(c in spec for c in "*?["):
            found = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file())
        else:
            raise TinyGPTError(f"input not found: {spec}")
        if excluded is not None:
            found = [p for p in found if not p.resolve().is_relative_to(excluded)]
        if not found:
            raise TinyGPTError(f"no .txt, .jsonl or .json files in {spec}")
        paths.extend(found)
    return paths


# ---------------------------------------------------------------- reading documents


def read_documents(path: Path, text_field: str = "text", errors: str = "strict") -> Iterator[tuple[list[str], int]]:
    """The documents of one file, a chunk at a time: (documents, bytes of the file they came from).

    Empty and whitespace-only documents are dropped. `.jsonl` files hold one JSON object per
    line and `.json` files an array of objects, the text in `text_field`; anything else is text
    with documents separated by `<|endoftext|>` lines.
    """
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text_field, errors)
    if path.suffix == ".json":
        return _read_json(path, text_field, errors)
    return _read_txt(path, errors)


def split_documents(text: str) -> list[str]:
    """Split text at lines that are exactly `<|endoftext|>`; drop empty and whitespace-only documents.

    A document keeps the newline that ends its last line and the end-of-text token stands for
    the separator line, so documents and end-of-text tokens add up to the file byte for byte.
    A `<|endoftext|>` inside a line is ordinary text. Text after the last separator is a document.
    """
    docs = text.split(EOT_SEPARATOR)
    # Usually every separator starts a line, which counting shows at C speed. Otherwise (or when
    # separators follow each other, which the count misses) glue those inside a line back.
    if text.count("\n" + EOT_SEPARATOR) + text.startswith(EOT_SEPARATOR) != len(docs) - 1:
        parts, docs = docs, docs[:1]
        for part in parts[1:]:
            if docs[-1] and not docs[-1].endswith("\n"):  # the separator was inside a line: it is text
                docs[-1] += EOT_SEPARATOR + part
            else:
                docs.append(part)
    if docs[-1] == EOT_TEXT or docs[-1].endswith("\n" + EOT_TEXT):  # a last separator line without its newline
        docs[-1] = docs[-1][: -len(EOT_TEXT)]
    return [doc for doc in docs if _has_text(doc)]


def _has_text(doc: str) -> bool:
    return bool(doc) and not doc.isspace()


def _read_txt(path: Path, errors: str) -> Iterator[tuple[list[str], int]]:
    with open(path, "rb") as f:
        for offset, data in _pieces(f, _SEPARATOR_LINE):
            yield split_documents(_decode(data, path, offset, errors)), len(data)


def _read_jsonl(path: Path, text_field: str, errors: str) -> Iterator[tuple[list[str], int]]:
    line_number = 1
    with open(path, "rb") as f:
        for offset, data in _pieces(f, b"\n"):
            docs = []
            for i, line in enumerate(_decode(data, path, offset, errors).split("\n")):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise TinyGPTError(f"{path} line {line_number + i}: not valid JSON ({e.msg})") from None
                    docs.append(_text_of(record, text_field, f"{path} line {line_number + i}"))
            line_number += data.count(b"\n")
            yield [doc for doc in docs if _has_text(doc)], len(data)


def _read_json(path: Path, text_field: str, errors: str) -> Iterator[tuple[list[str], int]]:
    import ijson

    with open(path, "rb") as f:
        if not f.read(4096).lstrip().startswith(b"["):
            raise TinyGPTError(f"{path} is not a JSON array of objects (a .jsonl file needs that suffix)")
        f.seek(0)
        reader = _CheckedReader(f, path, errors)
        docs: list[str] = []
        chars = reported = 0
        try:
            for i, record in enumerate(ijson.items(reader, "item")):
                text = _text_of(record, text_field, f"{path} item {i}")
                if _has_text(text):
                    docs.append(text)
                    chars += len(text)
                if chars >= CHUNK_BYTES:
                    yield docs, reader.offset - reported
                    docs, chars, reported = [], 0, reader.offset
        except ijson.JSONError as e:
            message = e.args[0].decode(errors="replace") if isinstance(e.args[0], bytes) else str(e.args[0])
            raise TinyGPTError(f"{path} is not valid JSON ({message.splitlines()[0]})") from None
        yield docs, reader.offset - reported


def _pieces(f, boundary: bytes) -> Iterator[tuple[int, bytes]]:
    """Read `f` in CHUNK_BYTES blocks; yield (offset, bytes) pieces that end just after `boundary`, or at the end.

    Pieces end where documents end, so each one decodes and splits on its own; a document
    longer than a block makes its piece grow until the document is complete.
    """
    buffer = bytearray()
    offset = 0
    while block := f.read(CHUNK_BYTES):
        search_from = max(0, len(buffer) - len(boundary) + 1)
        buffer += block
        end = buffer.rfind(boundary, search_from)
        if end >= 0:
            end += len(boundary)
            with memoryview(buffer) as view:
                piece = bytes(view[:end])
            del buffer[:end]
            yield offset, piece
            offset += end
    if buffer:
        yield offset, bytes(buffer)


def _decode(data: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise _not_utf8(path, offset + e.start, data[e.start]) from None


def _not_utf8(path: Path, offset: int, byte: int) -> TinyGPTError:
    return TinyGPTError(
        f"{path} is not UTF-8: byte 0x{byte:02x} at offset {offset} (use --errors replace to read it as U+FFFD)"
    )


class _CheckedReader:
    """A binary file checked as UTF-8 while it is read, so that a bad byte is reported with its offset
    (or, with errors="replace", becomes U+FFFD) before the JSON parser sees it."""

    def __init__(self, f, path: Path, errors: str):
        self._f = f
        self._path = path
        self._errors = errors
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)
        self.offset = 0  # bytes read from the file so far

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        while True:
            data = self._f.read(size)
            held = self._decoder.getstate()[0]  # the start of a character cut by the last read
            try:
                text = self._decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                raise _not_utf8(self._path, self.offset - len(held) + e.start, (held + data)[e.start]) from None
            self.offset += len(data)
            if self._errors == "strict":
                return data
            if text or not data:  # an empty answer would mean the end of the file
                return text.encode()


def _text_of(record, text_field: str, where: str) -> str:
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise TinyGPTError(
            f"{where} has no text field {text_field!r} (set data.text_field, e.g. --text-field story)"
        )
    return text
