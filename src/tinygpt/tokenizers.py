"""Three tokenizers behind one small interface: `char`, byte-level `bpe` and `sentencepiece`.

The end-of-text id is never produced by encoding text: the document splitter appends it.
So a literal "<|endoftext|>" inside a story or a prompt is ordinary text and round-trips.
It is decoded as the separator line it stands for in the corpus, "<|endoftext|>\\n".
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .common import TinyGPTError, atomic_write_bytes

EOT_TEXT = "<|endoftext|>"
EOT_SEPARATOR = EOT_TEXT + "\n"  # what the end-of-text token stands for in a .txt corpus
META_FILE = "tokenizer.json"  # our small description; the library's own files sit beside it
ENCODE_SLICE_CHARS = 1 << 20  # text handed to a library in one call (bounds its per-token objects)
SP_MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece's max_sentence_length: its training lines are cut to fit
_LINE_BREAKS = re.compile(r"[\n\r\t]")


class Tokenizer(ABC):
    """What every stage needs of a tokenizer. Ids fit in uint32; `eot_id` is a normal id."""

    kind: str
    eot_id: int
    vocab_size: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Encode a document's text (never yields `eot_id`)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_prompt(self, text: str) -> list[int]:
        """Encode a person's prompt; a tokenizer that would lose characters refuses instead."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON or a shell can spell half a surrogate pair
            raise TinyGPTError(f"the prompt is not valid Unicode: a lone surrogate at position {e.start}") from None
        return self.encode(text)

    def encode_docs(self, docs: list[str]) -> tuple[np.ndarray, int]:
        """Encode documents into one array with `eot_id` after each; also return the unknown count.

        Works through slices of about ENCODE_SLICE_CHARS characters: the libraries return
        Python objects per token (Hugging Face's cost ~140 bytes each), so memory stays bounded.
        """
        pieces = []
        for docs_slice in _slices(docs, ENCODE_SLICE_CHARS):
            flat: list[int] = []
            for ids in self.encode_batch(docs_slice):
                flat += ids
                flat.append(self.eot_id)
            pieces.append(np.array(flat, dtype=np.uint32))
        return (np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)), 0

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids; `eot_id` becomes the separator line it stands for."""

    @abstractmethod
    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (int64, length vocab_size): the bits-per-byte denominator."""

    @abstractmethod
    def _save_files(self, out: Path) -> dict:
        """Write the library's own files into `out`; return extra metadata for tokenizer.json."""

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id, **self._save_files(out)}
        atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())

    @property
    def hash(self) -> str:
        """A stable hash of what decides the ids, so shards and checkpoints can be matched."""
        return hashlib.sha256(self._content()).hexdigest()[:16]

    @abstractmethod
    def _content(self) -> bytes: ...


# ---------------------------------------------------------------- char


class CharTokenizer(Tokenizer):
    """The original write-up's tokenizer: one id per character seen in the training text.

    Ids: 0 is <|endoftext|>, 1 is <unk>, then the characters in code-point order.
    Encoding is a table lookup on the UTF-32 code points, so it runs at numpy speed.
    """

    kind = "char"
    eot_id = 0
    unk_id = 1

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.chars) + 2
        self._table = np.full(0x110000, self.unk_id, dtype=np.uint32)
        self._table[np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)] = np.arange(2, self.vocab_size)
        self._strings = [EOT_SEPARATOR, "\ufffd"] + list(self.chars)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        # A flag per code point, set a slice of text at a time: several times faster than a Python set.
        # (numpy indexes with intp several times faster than with the uint32 code points themselves.)
        seen = np.zeros(0x110000, dtype=bool)
        for texts_slice in _slices(texts, ENCODE_SLICE_CHARS):
            seen[_codepoints("".join(texts_slice)).astype(np.intp)] = True
        if not seen.any():
            raise TinyGPTError("cannot build a char tokenizer: the corpus has no text")
        return cls("".join(map(chr, np.flatnonzero(seen))))

    def encode(self, text: str) -> list[int]:
        return self._lookup(text).tolist()

    def _lookup(self, text: str) -> np.ndarray:
        return np.take(self._table, _codepoints(text))  # np.take: ~4x faster than table[codepoints]

    def encode_prompt(self, text: str) -> list[int]:
        ids = self._lookup(text)
        unknown = np.flatnonzero(ids == self.unk_id)
        if unknown.size:
            pos = int(unknown[0])
            raise TinyGPTError(
                f"the prompt has character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos}, "
                "which this char tokenizer never saw in training"
            )
        return ids.tolist()

    def encode_docs(self, docs: list[str]) -> tuple[np.ndarray, int]:
        # One lookup for the whole batch: a placeholder after each document, overwritten with
        # the end-of-text id at positions known from the lengths (so a NUL in the text stays text).
        ids = self._lookup("\0".join([*docs, ""]))
        ends = np.cumsum(np.fromiter(map(len, docs), dtype=np.int64, count=len(docs)) + 1) - 1
        ids[ends] = self.eot_id
        return ids, int(np.count_nonzero(ids == self.unk_id))

    def decode(self, ids: Iterable[int]) -> str:
        strings = self._strings
        return "".join(strings[i] for i in ids)

    def token_bytes(self) -> np.ndarray:
        # <unk> stands for a character we cannot recover; count it as one byte.
        return np.array([len(s.encode()) for s in self._strings[:1]] + [1] + [len(c.encode()) for c in self.chars], dtype=np.int64)

    def _save_files(self, out: Path) -> dict:
        return {"chars": self.chars}

    def _content(self) -> bytes:
        return b"char\0" + self.chars.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- bpe (Hugging Face tokenizers)


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers`: every byte is in the alphabet, so nothing is unknown.

    The library's model holds ids 0..n-1; <|endoftext|> is id n, kept outside the library so
    that the library never matches it inside text.
    """

    kind = "bpe"
    FILE = "bpe.json"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.eot_id = hf_tokenizer.get_vocab_size()
        self.vocab_size = self.eot_id + 1

    @staticmethod
    def _empty():
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import pre_tokenizers, trainers

        tok = cls._empty()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        got = tok.get_vocab_size() + 1
        if got < vocab_size:
            raise TinyGPTError(
                f"the training text supports a BPE vocabulary of only {got} tokens, not {vocab_size}: "
                f"use --tokenizer.vocab_size {got} or less, or more text"
            )
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets, which we never use: ~15% faster.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        out, run = [], []
        for i in ids:
            if i == self.eot_id:
                out.append(self._tok.decode(run, skip_special_tokens=False))
                out.append(EOT_SEPARATOR)
                run = []
            else:
                run.append(i)
        out.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(out)

    def token_bytes(self) -> np.ndarray:
        # Byte-level tokens are spelled with one stand-in character per byte.
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self._tok.get_vocab().items():
            lengths[i] = len(token)
        lengths[self.eot_id] = len(EOT_SEPARATOR.encode())
        return lengths

    def _save_files(self, out: Path) -> dict:
        atomic_write_bytes(out / self.FILE, self._tok.to_str().encode())
        return {"file": self.FILE}

    @classmethod
    def load(cls, folder: Path, meta: dict) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str((folder / meta.get("file", cls.FILE)).read_text(encoding="utf-8")))
        except Exception as e:  # noqa: BLE001 (the library raises plain Exception on bad JSON)
            raise TinyGPTError(f"cannot read the BPE tokenizer in {folder}: {e}") from None

    def _content(self) -> bytes:
        return b"bpe\0" + self._tok.to_str().encode()


# ---------------------------------------------------------------- sentencepiece


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE with byte fallback and every option that makes it lossless.

    Identity normalisation, no dummy prefix, whitespace kept as is and full character
    coverage, so decode(encode(t)) == t for any text without U+2581 ("▁"), the library's
    own stand-in for a space: a literal "▁" comes back as a space.
    """

    kind = "sentencepiece"
    FILE = "sentencepiece.model"

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm

        self._bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.eot_id = self._sp.piece_to_id(EOT_TEXT)
        self.vocab_size = self._sp.get_piece_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_lines(texts, SP_MAX_SENTENCE_BYTES),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                character_coverage=1.0,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                max_sentence_length=SP_MAX_SENTENCE_BYTES,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                control_symbols=[EOT_TEXT],
                minloglevel=2,
                num_threads=1,
            )
        except RuntimeError as e:
            # Keep the library's reason, without its "INTERNAL: file.cc(123) [condition]" prefix.
            lines = str(e).splitlines()
            msg = re.sub(r"^[A-Z_]+: \S+\(\d+\) \[.*?\] ", "", lines[0]) if lines else "training failed"
            raise TinyGPTError(f"sentencepiece could not train a vocabulary of {vocab_size}: {msg}") from None
        return cls(model.getvalue())

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        out, run = [], []
        for i in ids:
            if i == self.eot_id:
                out.append(self._sp.decode(run))
                out.append(EOT_SEPARATOR)
                run = []
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def token_bytes(self) -> np.ndarray:
        sp = self._sp
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i)):
                lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode())
        lengths[self.eot_id] = len(EOT_SEPARATOR.encode())
        return lengths

    def _save_files(self, out: Path) -> dict:
        atomic_write_bytes(out / self.FILE, self._bytes)
        return {"file": self.FILE}

    @classmethod
    def load(cls, folder: Path, meta: dict) -> SentencePieceTokenizer:
        try:
            return cls((folder / meta.get("file", cls.FILE)).read_bytes())
        except (OSError, RuntimeError) as e:
            raise TinyGPTError(f"cannot read the sentencepiece model in {folder}: {e}") from None

    def _content(self) -> bytes:
        return b"sentencepiece\0" + self._bytes


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _slices(texts: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    """Consecutive groups of texts of about `max_chars` characters (a longer text is a group of its own)."""
    group: list[str] = []
    size = 0
    for text in texts:
        if group and size + len(text) > max_chars:
            yield group
            group, size = [], 0
        group.append(text)
        size += len(text)
    if group:
        yield group


def _lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """SentencePiece trains on lines (it skips longer ones than max_sentence_length bytes): feed it
    the text between line breaks and tabs, a long one cut where the cut leaves the ids unchanged.

    Line breaks and tabs then never enter its vocabulary (byte fallback spells them), so a
    document cut before one (documents.safe_cut) encodes to the ids of the whole.
    """
    from .documents import cut_text  # documents imports this module

    for text in texts:
        for line in _LINE_BREAKS.split(text):
            if line:
                yield from cut_text(line, max_bytes)


# ---------------------------------------------------------------- building and loading


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of `kind` on an iterable of document texts (a bounded sample)."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, vocab_size)
    raise TinyGPTError(f"unknown tokenizer kind {kind!r}")


def load_tokenizer(folder: str | Path, expect_kind: str | None = None) -> Tokenizer:
    """Load a tokenizer saved with `save`; `expect_kind` rejects a tokenizer of the wrong kind."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except FileNotFoundError:
        raise TinyGPTError(f"no tokenizer in {folder} (missing {META_FILE})") from None
    except (ValueError, KeyError, TypeError):
        raise TinyGPTError(f"{meta_path} is not a tinygpt tokenizer file") from None
    if expect_kind and kind != expect_kind:
        raise TinyGPTError(f"tokenizer in {folder} is of kind {kind!r}, expected {expect_kind!r}")
    if kind == "char":
        if not isinstance(meta.get("chars"), str) or not meta["chars"]:
            raise TinyGPTError(f"{meta_path} is not a valid char tokenizer")
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return BPETokenizer.load(folder, meta)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.load(folder, meta)
    raise TinyGPTError(f"{meta_path} has unknown tokenizer kind {kind!r}")
