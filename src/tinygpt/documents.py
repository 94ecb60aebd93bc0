"""Text in, documents out: finding the input files and reading .txt, .jsonl and .json files as a stream.

Text is read the way people save it, by every reader alike:

- **Line endings.** A separator line `<|endoftext|>` ends in `\\n`, `\\r\\n` or `\\r`, or is the last
  line of the file without one. Documents get `\\n` for `\\r\\n` and `\\r` (data.line_endings =
  "normalize"; "keep" leaves them). A `\\r` at the end of one read and `\\n` at the start of the
  next are one line ending. Prompts get the same treatment from `normalize_line_endings`.
- **A UTF-8 byte-order mark** at the start of a file is dropped.
- **Undecodable text**, bytes that are not UTF-8 or a lone surrogate escaped in JSON (`"\\ud800"`),
  is an error naming the file and the position, or U+FFFD with errors="replace".
- **Formats by suffix**, case-insensitive: `.jsonl` (an object per line), `.json` (an array of
  objects), anything else plain text. Folders and globs take `.txt`, `.jsonl` and `.json` only.

Memory is bounded whatever the shape of the input: a reader yields Pieces of at most about
CHUNK_BYTES, cut where a document ends if one ends in the window, else **between a non-whitespace
character and a following space, tab or newline** (a cut there leaves the BPE and SentencePiece ids
of the document unchanged: encoding the parts gives the ids of the whole), else, when CHUNK_BYTES
hold no such point (CJK text, base64), at a character boundary, which ReadStats counts.

Every text of a Piece carries the source bytes the reader consumed for it: the text itself as it
was in the file (a `\\r\\n` that became `\\n` counts 2, an undecodable byte its own size), its
separator line and a dropped byte-order mark; so a .txt file's texts add up to its size. A JSON
record counts the UTF-8 bytes of its text field plus 14 for its end-of-text token: the size of
the same documents written as a separator-delimited .txt. These are the bytes of bits per byte.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .common import TinyGPTError
from .shards import is_prepared
from .tokenizers import EOT_SEPARATOR, EOT_TEXT

# Input read, split and encoded as one unit of work. The tokenizer libraries' memory grows with the
# text of one call: Hugging Face's BPE took ~150 MB above its base for one 1 MiB text, ~35 MB at 256 KiB.
CHUNK_BYTES = 1 << 18
INPUT_SUFFIXES = (".txt", ".jsonl", ".json")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".lzma", ".zst", ".zip", ".7z", ".lz4", ".br", ".tgz", ".tar")
BOM = codecs.BOM_UTF8
EOT_BYTES = len(EOT_SEPARATOR.encode())  # what an end-of-text token stands for: its separator line, 14 bytes

# A separator line: the literal, then a line ending or (checked by the caller) the end of the file.
_SEPARATOR_LINE = re.compile(re.escape(EOT_TEXT.encode()) + rb"(?:\r\n|\r|\n|\Z)")
# The last p with data[p] a space, tab or line break right after a character that is not whitespace
# (Python's str.isspace or Unicode White_Space: ASCII ones, then NEL, NBSP, U+1680, U+2000-U+200A,
# U+2028, U+2029, U+202F, U+205F and U+3000 by their UTF-8 bytes). The greedy `.*` makes the
# search start from the end.
_SAFE_CUT = re.compile(
    rb"(?s).*(?=[ \t\n\r])(?<=[^\t\n\x0b\x0c\r\x1c-\x20])"
    rb"(?<!\xc2\x85)(?<!\xc2\xa0)(?<!\xe1\x9a\x80)(?<!\xe2\x80[\x80-\x8a\xa8\xa9\xaf])(?<!\xe2\x81\x9f)(?<!\xe3\x80\x80)"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def normalize_line_endings(text: str) -> str:
    """`\\r\\n` and `\\r` -> `\\n`: how documents are read by default, and how prompts are taken."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# ---------------------------------------------------------------- finding the input files


@dataclass
class Inputs:
    """The files to read for training and for validation, and what the summary says about them."""

    train: list[Path]
    val: list[Path]
    notes: list[str] = field(default_factory=list)  # skipped files, files read as plain text, files left out


def find_inputs(specs: Iterable[str], val: str | None = None, exclude: Path | None = None) -> Inputs:
    """The files of `specs` (files, folders searched recursively, glob patterns) and of `val`, in the order given.

    Folders and globs take .txt, .jsonl and .json files (any case) and skip the others, noting
    each (compressed ones as such); a file named explicitly is read whatever its suffix (as plain
    text unless .jsonl or .json), noted too, but a compressed one is an error. A file given
    twice is read once. Validation never leaks into training: a training file that is also a
    validation file (the same file, however named) is left out of training. Files under `exclude`
    (the output folder) are skipped, so preparing a folder into a subfolder of itself does not
    read the previous run's output.

    Raises TinyGPTError: a path that does not exist, a spec that yields no files, a compressed
    file named explicitly, or training inputs that are all validation files.
    """
    notes: list[str] = []
    val_paths = _unique(_expand(val, exclude, notes), notes) if val else []
    train_paths = _unique([p for spec in specs for p in _expand(spec, exclude, notes)], notes)
    held = {_identity(p) for p in val_paths}
    left_out = [p for p in train_paths if _identity(p) in held]
    notes += [f"{p} is a validation file: left out of training" for p in left_out]
    train_paths = [p for p in train_paths if _identity(p) not in held]
    if not train_paths:
        raise TinyGPTError(f"every input is also a validation file ({', '.join(map(str, left_out[:3]))}): nothing to train on")
    return Inputs(train_paths, val_paths, notes)


def _expand(spec: str, exclude: Path | None, notes: list[str]) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in COMPRESSED_SUFFIXES:
            raise TinyGPTError(f"{path}: {path.suffix} is not read; decompress it first")
        if path.suffix.lower() not in INPUT_SUFFIXES:
            notes.append(f"{path} is read as plain text ({path.suffix or 'no suffix'} is not .txt, .jsonl or .json)")
        return [path]
    if path.is_dir():
        found, root = sorted(p for p in path.rglob("*") if p.is_file()), path
    elif any(c in spec for c in "*?["):
        found = sorted(p for p in map(Path, glob.glob(spec, recursive=True)) if p.is_file())
        root = Path(os.path.dirname(spec[: min(spec.find(c) % (len(spec) + 1) for c in "*?[")]))
    else:
        raise TinyGPTError(f"input not found: {spec}")
    if exclude is not None:
        excluded = exclude.resolve()
        found = [p for p in found if not p.resolve().is_relative_to(excluded)]
    prepared = _prepared_folders(found, root)
    notes += [f"skipped: {folder}: a prepared-data folder (its manifest and tokenizer are not text)" for folder in prepared]
    found = [p for p in found if not any(p.is_relative_to(folder) for folder in prepared)]
    taken = [p for p in found if p.suffix.lower() in INPUT_SUFFIXES]
    skipped = [p for p in found if p.suffix.lower() not in INPUT_SUFFIXES]
    for p in skipped:
        reason = "decompress it first" if p.suffix.lower() in COMPRESSED_SUFFIXES else "only .txt, .jsonl and .json are"
        notes.append(f"skipped: {p}: {p.suffix or 'a file without a suffix'} is not read; {reason}")
    if not taken:
        what = f" (skipped: {', '.join(p.name for p in skipped[:3])}{' ...' if len(skipped) > 3 else ''})" if skipped else ""
        raise TinyGPTError(f"no .txt, .jsonl or .json files in {spec}{what}")
    return taken


def _prepared_folders(files: list[Path], root: Path) -> list[Path]:
    """The prepared-data folders (a previous `prepare`'s output) below `root` that hold any of `files`."""
    folders = {parent for path in files for parent in path.relative_to(root).parents}
    return sorted(root / folder for folder in folders if folder != Path(".") and is_prepared(root / folder))


def _identity(path: Path) -> tuple[int, int]:
    """What os.path.samefile compares: the device and the inode."""
    st = path.stat()
    return st.st_dev, st.st_ino


def _unique(paths: list[Path], notes: list[str]) -> list[Path]:
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        first = seen.setdefault(_identity(path), path)
        if first is not path:
            notes.append(f"{path} is given twice (also as {first}): read once")
    return list(seen.values())


# ---------------------------------------------------------------- cutting text


def safe_cut(data: bytes | bytearray, start: int, end: int) -> int:
    """The last position p in (start, end], p < len(data), between a non-whitespace character and
    a following space, tab, `\\n` or `\\r` in UTF-8 `data`: cut there, the two sides encode to
    the ids of the whole. 0 if there is none."""
    match = _SAFE_CUT.match(data, start, min(end + 1, len(data)))
    return match.end() if match and match.end() > start else 0


def character_cut(data: bytes | bytearray, start: int, end: int) -> int:
    """A cut in (start, end + 1] for where no safe cut exists (end < len(data)): at a line start
    if one is within 15 bytes before `end` (so that a separator line is never cut), else at the
    start of the UTF-8 character `end` falls in; never between `\\r` and `\\n`."""
    newline = max(data.rfind(b"\n", max(start, end - 15), end), data.rfind(b"\r", max(start, end - 15), end))
    if newline >= 0:
        return newline + 1 + (data[newline : newline + 2] == b"\r\n")
    p = end
    while p > max(start + 1, end - 3) and data[p] & 0xC0 == 0x80:  # a continuation byte: the character began before
        p -= 1
    return p if data[p] & 0xC0 != 0x80 else end  # not UTF-8 at all: any cut will do


def cut_text(text: str, max_bytes: int, stats: ReadStats | None = None) -> list[str]:
    """`text` in parts of at most `max_bytes` UTF-8 bytes (a part may take one byte more to keep
    a \\r\\n whole), cut at safe points where there are any; `stats` counts the other cuts."""
    data = text.encode("utf-8", "surrogatepass")
    parts, start = [], 0
    while len(data) - start > max_bytes:
        cut = safe_cut(data, start, start + max_bytes)
        if not cut:
            cut = character_cut(data, start, start + max_bytes)
            if stats is not None:
                stats.char_cuts += 1
        parts.append(data[start:cut].decode("utf-8", "surrogatepass"))
        start = cut
    parts.append(data[start:].decode("utf-8", "surrogatepass"))
    return parts


# ---------------------------------------------------------------- reading documents


@dataclass
class Piece:
    """Up to about CHUNK_BYTES of one file: consecutive texts, each a whole document or a part of one.

    Every text is followed by an end-of-text token in the token stream (its separator line, or
    the end of its JSON record) except the last when `open_end`: its document goes on in the
    next Piece, or ends the file without a separator.
    """

    texts: list[str]
    nbytes: list[int]  # source bytes each text consumed (see the module docstring)
    continues: bool  # the first text goes on with the document the file's previous Piece ended with
    open_end: bool


@dataclass
class ReadStats:
    """What the readers did that the summary reports."""

    cr_line_endings: int = 0  # \r\n and \r line endings read (converted to \n unless kept)
    boms: int = 0  # files whose byte-order mark was dropped
    char_cuts: int = 0  # cuts inside documents at a character boundary: no safe point in CHUNK_BYTES


class Reader:
    """Reads input files as Pieces; one Reader's `stats` add up over every file it reads.

    `text_field`: the field of .jsonl/.json records holding the text; `errors`: "strict" or
    "replace" (undecodable text); `line_endings`: "normalize" or "keep".
    """

    def __init__(self, text_field: str = "text", errors: str = "strict", line_endings: str = "normalize"):
        self.text_field = text_field
        self.errors = errors
        self.normalize = line_endings == "normalize"
        self.stats = ReadStats()

    def read(self, path: Path) -> Iterator[Piece]:
        """The Pieces of `path`, in order; its format by its suffix (any case).

        Raises TinyGPTError for undecodable text under errors="strict", invalid JSON, and JSON
        records without a string text field, naming the file and the position.
        """
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return self._pieces_of_records(self._jsonl_records(path))
        if suffix == ".json":
            return self._pieces_of_records(self._json_records(path))
        return self._read_txt(path)

    # ------------------------------------------------------------ plain text

    def _read_txt(self, path: Path) -> Iterator[Piece]:
        with open(path, "rb") as f:
            yield from self.read_text_stream(f, str(path))

    def read_text_stream(self, f, name: str) -> Iterator[Piece]:
        """The Pieces of a binary stream of plain text (what `read` does with a .txt file named `name`)."""
        head = f.read(len(BOM))
        pending = len(BOM) if head == BOM else 0  # consumed bytes not yet counted in a text
        self.stats.boms += bool(pending)
        buffer = bytearray(head[pending:])
        offset, line_start, continues, eof = pending, True, False, False
        while True:
            while not eof and len(buffer) < CHUNK_BYTES + 2:  # two bytes past a cut: a whole \r\n
                block = f.read(CHUNK_BYTES + 2 - len(buffer))
                eof = not block
                buffer += block
            final = eof and len(buffer) <= CHUNK_BYTES
            if final and not buffer:
                if pending:  # a file that is a byte-order mark and nothing else
                    yield Piece([""], [pending], False, True)
                return
            # a piece ends after the last separator line that starts in CHUNK_BYTES, else at a safe cut
            separators = self._separators(buffer, line_start, len(buffer) if final else CHUNK_BYTES + 2, final)
            if final:
                cut, next_line_start = len(buffer), True
            elif separators:
                cut, next_line_start = separators[-1][1], True
            elif cut := safe_cut(buffer, 0, CHUNK_BYTES):
                next_line_start = False
            else:
                cut = character_cut(buffer, 0, CHUNK_BYTES)
                next_line_start = buffer[cut - 1] in b"\n\r"
                self.stats.char_cuts += 1
            piece = self._txt_piece(buffer, cut, separators, name, offset, continues)
            piece.nbytes[0] += pending
            self.stats.cr_line_endings += buffer.count(b"\r", 0, cut)
            yield piece
            if final:
                return
            del buffer[:cut]
            offset += cut
            pending, line_start, continues = 0, next_line_start, piece.open_end

    @staticmethod
    def _separators(data: bytearray, line_start: bool, end: int, final: bool) -> list[tuple[int, int]]:
        """(start, end) of the separator lines in data[:end]: at a line start, ending in a line
        ending, or at the end of the file (only when `final`: data[:end] reaches it)."""
        found = []
        for match in _SEPARATOR_LINE.finditer(data, 0, end):
            start, stop = match.span()
            at_line_start = data[start - 1] in b"\n\r" if start else line_start
            decided = stop < end or final or data[stop - 1 : stop] == b"\n"
            if at_line_start and decided:
                found.append((start, stop))
        return found

    def _txt_piece(self, buffer: bytearray, cut: int, separators, name: str, offset: int, continues: bool) -> Piece:
        texts, nbytes, start = [], [], 0
        with memoryview(buffer) as view:
            for sep_start, sep_end in separators:
                texts.append(self._decode(view, start, sep_start, name, offset))
                nbytes.append(sep_end - start)
                start = sep_end
            open_end = start < cut or not texts
            if open_end:
                texts.append(self._decode(view, start, cut, name, offset))
                nbytes.append(cut - start)
        if self.normalize:
            texts = [normalize_line_endings(text) for text in texts]
        return Piece(texts, nbytes, continues, open_end)

    def _decode(self, view: memoryview, start: int, end: int, name: str, offset: int) -> str:
        try:
            return str(view[start:end], "utf-8", self.errors)
        except UnicodeDecodeError as e:
            raise _not_utf8(name, offset + start + e.start, view[start + e.start]) from None

    # ------------------------------------------------------------ JSON records

    def _pieces_of_records(self, records: Iterator[tuple[str, int]]) -> Iterator[Piece]:
        """Records (text, source bytes) grouped into Pieces of about CHUNK_BYTES; a record longer
        than that is cut into parts, each a Piece of its own."""
        texts: list[str] = []
        nbytes: list[int] = []
        size = 0
        for text, n in records:
            if n - EOT_BYTES > CHUNK_BYTES:
                if texts:
                    yield Piece(texts, nbytes, False, False)
                    texts, nbytes, size = [], [], 0
                parts = cut_text(text, CHUNK_BYTES, self.stats)
                sizes = [len(part.encode()) for part in parts[:-1]]
                sizes.append(n - sum(sizes))  # the record's end-of-text token and any \\r that became \\n
                for i, (part, part_size) in enumerate(zip(parts, sizes)):
                    yield Piece([part], [part_size], i > 0, i < len(parts) - 1)
                continue
            texts.append(text)
            nbytes.append(n)
            size += n
            if size >= CHUNK_BYTES:
                yield Piece(texts, nbytes, False, False)
                texts, nbytes, size = [], [], 0
        if texts:
            yield Piece(texts, nbytes, False, False)

    def _jsonl_records(self, path: Path) -> Iterator[tuple[str, int]]:
        line_number = 1
        with open(path, "rb") as f:
            for offset, data in self._lines_of(f):
                for i, line in enumerate(self._decode(memoryview(data), 0, len(data), str(path), offset).split("\n")):
                    if line.strip():
                        where = f"{path} line {line_number + i}"
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise TinyGPTError(f"{where}: not valid JSON ({e.msg})") from None
                        except (ValueError, RecursionError) as e:
                            raise _unreadable_json(where, e) from None
                        yield self._record_text(record, where)
                line_number += data.count(b"\n")

    def _lines_of(self, f) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) blocks of about CHUNK_BYTES of whole lines (a longer line makes its block grow);
        a byte-order mark dropped."""
        buffer = bytearray()
        offset = 0
        while block := f.read(CHUNK_BYTES):
            if not offset and not buffer and block.startswith(BOM):
                block, offset = block[len(BOM) :], len(BOM)
                self.stats.boms += 1
            search_from = len(buffer)
            buffer += block
            end = buffer.rfind(b"\n", search_from) + 1
            if end:
                yield offset, bytes(buffer[:end])
                del buffer[:end]
                offset += end
        if buffer:
            yield offset, bytes(buffer)

    def _json_records(self, path: Path) -> Iterator[tuple[str, int]]:
        """The records of a JSON array, parsed one at a time from a sliding window of the file."""
        decoder = json.JSONDecoder()
        with open(path, "rb") as f:
            source = _TextWindow(f, path, self.errors, self.stats)
            pos = source.skip_space(0)
            if source.char(pos) != "[":
                raise TinyGPTError(f"{path} is not a JSON array of objects (a .jsonl file needs that suffix)")
            pos = source.skip_space(pos + 1)
            index = 0
            while source.char(pos) != "]":
                try:
                    record, pos = decoder.raw_decode(source.text, pos)
                except json.JSONDecodeError as e:
                    if source.more_for(e):
                        continue
                    raise source.invalid(e.msg, e.pos) from None
                except (ValueError, RecursionError) as e:
                    raise _unreadable_json(f"{path} item {index}", e) from None
                yield self._record_text(record, f"{path} item {index}")
                index += 1
                pos = source.skip_space(pos)
                if source.char(pos) == "]":
                    break
                if source.char(pos) != ",":
                    raise source.invalid("Expecting ',' or ']' after an item", pos)
                pos = source.slide(source.skip_space(pos + 1))
            after = source.skip_space(pos + 1)
            if source.char(after):
                raise source.invalid("More data after the array", after)

    def _record_text(self, record, where: str) -> tuple[str, int]:
        """The text field of a JSON record and its source bytes (its UTF-8 bytes + 14)."""
        if not isinstance(record, dict):
            raise TinyGPTError(f"{where} is {_json_type(record)}, not an object with a text field {self.text_field!r}")
        if self.text_field not in record:
            raise TinyGPTError(f"{where} has no text field {self.text_field!r} (set data.text_field, e.g. --text-field story)")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise TinyGPTError(f"{where}: its text field {self.text_field!r} is {_json_type(text)}, not a string")
        try:
            size = len(text.encode())
        except UnicodeEncodeError as e:
            if self.errors == "strict":
                raise TinyGPTError(
                    f"{where}: its text field has a lone surrogate U+{ord(text[e.start]):04X} at character {e.start} "
                    "(use --errors replace to read it as U+FFFD)"
                ) from None
            text = _SURROGATE.sub("\ufffd", text)
            size = len(text.encode())
        self.stats.cr_line_endings += text.count("\r")
        if self.normalize:
            text = normalize_line_endings(text)
        return text, size + EOT_BYTES


class _TextWindow:
    """A JSON file as text, decoded as it is read: `text` holds a window of it, which `slide` moves on."""

    def __init__(self, f, path: Path, errors: str, stats: ReadStats):
        self._f = f
        self._path = path
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)
        self._read = 0  # bytes read from the file
        self._base = 0  # file offset of text[0] (exact while the text decoded without replacements)
        self.eof = False
        self.text = ""
        head = f.read(len(BOM))
        if head == BOM:
            stats.boms += 1
            self._read = self._base = len(BOM)
        else:
            self._feed(head)

    def _feed(self, data: bytes) -> None:
        held = self._decoder.getstate()[0]  # the start of a character cut by the last read
        try:
            self.text += self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise _not_utf8(str(self._path), self._read - len(held) + e.start, (held + data)[e.start]) from None
        self._read += len(data)
        self.eof = not data

    def _more(self) -> bool:
        if self.eof:
            return False
        self._feed(self._f.read(CHUNK_BYTES))
        return True

    def char(self, pos: int) -> str:
        """The character at `pos` ("" at the end of the file), reading on as needed."""
        while pos >= len(self.text) and self._more():
            pass
        return self.text[pos : pos + 1]

    def skip_space(self, pos: int) -> int:
        while True:
            pos = _JSON_SPACE.match(self.text, pos).end()
            if pos < len(self.text) or not self._more():
                return pos

    def more_for(self, error: json.JSONDecodeError) -> bool:
        """Whether `error` may be the window ending inside an item: then more text is read."""
        incomplete = error.pos >= len(self.text) - 12 or error.msg.startswith("Unterminated string")
        return incomplete and self._more()

    def slide(self, pos: int) -> int:
        """Drop the text before `pos` once it is long; return pos in the new window."""
        if pos < CHUNK_BYTES:
            return pos
        self._base += len(self.text[:pos].encode())
        self.text = self.text[pos:]
        return 0

    def invalid(self, message: str, pos: int) -> TinyGPTError:
        if pos >= len(self.text) and self.eof:
            return TinyGPTError(f"{self._path} is not valid JSON (it ends too early, at offset {self._read})")
        offset = self._base + len(self.text[:pos].encode())
        return TinyGPTError(f"{self._path} is not valid JSON ({message[0].lower() + message[1:]} at offset {offset})")


def _unreadable_json(where: str, error: ValueError | RecursionError) -> TinyGPTError:
    """Valid JSON that Python's parser refuses: nesting deeper than its recursion limit, or an
    integer of more digits than sys.get_int_max_str_digits() (4,300 by default)."""
    if isinstance(error, RecursionError):
        return TinyGPTError(f"{where}: its JSON is nested too deeply to read (more than {sys.getrecursionlimit():,} levels)")
    return TinyGPTError(f"{where}: its JSON holds a number too long to read (more than {sys.get_int_max_str_digits():,} digits)")


def _json_type(value) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names[type(value)]


def _not_utf8(name: str, offset: int, byte: int) -> TinyGPTError:
    return TinyGPTError(
        f"{name} is not UTF-8: byte 0x{byte:02x} at offset {offset} (use --errors replace to read it as U+FFFD)"
    )


def whole_documents(pieces: Iterable[Piece]) -> list[str]:
    """The documents of a file's Pieces, each a string again (a piece that continues its
    predecessor's last document is glued to it), without their separator lines."""
    docs: list[str] = []
    for piece in pieces:
        texts = piece.texts
        if piece.continues:
            docs[-1] += texts[0]
            texts = texts[1:]
        docs += texts
    return docs


def split_documents(text: str, line_endings: str = "normalize") -> list[str]:
    """The documents a .txt file holding `text` is read as (for in-memory text: tests and benchmarks)."""
    return whole_documents(Reader(line_endings=line_endings).read_text_stream(io.BytesIO(text.encode()), "<text>"))
