"""Three tokenizers behind one small interface: `char`, byte-level `bpe` and `sentencepiece`.

`bpe` is trained, saved and loaded by Hugging Face `tokenizers`, and encoded by tiktoken (about
3x the text per CPU-second) wherever that is proven to give the same ids: see BPETokenizer.

The end-of-text id is never produced by encoding text: the document splitter appends it.
So a literal "<|endoftext|>" inside a story or a prompt is ordinary text and round-trips.
It is decoded as the separator line it stands for in the corpus, "<|endoftext|>\\n".
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import re
import sys
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

    def encode_prompt(self, text: str, what: str = "prompt") -> list[int]:
        """Encode a person's prompt (or other text, named `what` in errors); a tokenizer that would lose
        characters refuses instead."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON or a shell can spell half a surrogate pair
            raise TinyGPTError(f"the {what} is not valid Unicode: a lone surrogate at position {e.start}") from None
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
    def vocab_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each id stands for, by id (length vocab_size).

        A byte-level token may hold part of a character: its bytes are then not valid UTF-8
        on their own. Ids that stand for no text (SentencePiece's control and unknown pieces)
        give b"".
        """

    def token_bytes(self) -> np.ndarray:
        """How many UTF-8 bytes each id stands for (int64, length vocab_size): the bits-per-byte denominator."""
        return np.array([len(b) for b in self.vocab_bytes()], dtype=np.int64)

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

    def encode_prompt(self, text: str, what: str = "prompt") -> list[int]:
        ids = self._lookup(text)
        unknown = np.flatnonzero(ids == self.unk_id)
        if unknown.size:
            pos = int(unknown[0])
            raise TinyGPTError(
                f"the {what} has character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos}, "
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

    def vocab_bytes(self) -> list[bytes]:
        return [s.encode() for s in self._strings]  # <unk> as U+FFFD, the text it decodes to

    def token_bytes(self) -> np.ndarray:
        lengths = super().token_bytes()
        lengths[self.unk_id] = 1  # <unk> stands for one character we cannot recover: count it as one byte
        return lengths

    def _save_files(self, out: Path) -> dict:
        return {"chars": self.chars}

    def _content(self) -> bytes:
        return b"char\0" + self.chars.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- bpe (tokenizers; tiktoken where identical)

# The split pattern of `tokenizers`' ByteLevel pre-tokenizer with use_regex (GPT-2's, from openai/gpt-2 src/encoder.py).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_level_alphabet() -> list[str]:
    """The character byte-level BPE spells each byte 0..255 with (GPT-2's bytes_to_unicode, as
    Hugging Face's ByteLevel uses): printable Latin-1 bytes stand for themselves, the other 68
    take the code points from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 256 + 256 - len(printable)))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


BYTE_OF_CHAR = {char: byte for byte, char in enumerate(_byte_level_alphabet())}  # stand-in character -> byte


def tiktoken_twin(hf_tokenizer) -> tuple[object | None, str]:
    """A tiktoken Encoding that encodes exactly as `hf_tokenizer` does, or (None, the reason there is none).

    Decided from the tokenizer file alone: no normalizer, added tokens, post-processor, truncation
    or padding; the ByteLevel pre-tokenizer without prefix space, with its regex (GPT2_SPLIT);
    a BPE model without dropout, unknown token, prefix or suffix, byte fallback or ignore_merges;
    ids 0-255 the 256 byte characters, merge i making id 256 + i and nothing else in the vocabulary;
    and every token's own bytes encoding to that token alone. Why that suffices: both libraries
    split with the same pattern (where their Unicode tables agree, see SplitAgreement) and then
    merge within each piece; `tokenizers` applies the lowest-ranked merge pair (leftmost first),
    tiktoken the adjacent pair whose concatenation has the lowest id (leftmost first), and a piece
    that is one whole token tiktoken returns as is. With merge i -> id 256 + i every merge pair is
    such a pair with the same rank. An extra one, adjacent tokens x, y with x + y = T whose merge is
    another pair (p, q), would need the bytes of T, encoded alone, to reach [x, y] when no merge of
    rank below T's is left: no merge ever crossed the ends of x + y, so those bytes went through the
    same merges as alone, and alone they end as [T], made only by (p, q) at T's rank. Whole-piece
    tokens are the same check.
    """
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(hf_tokenizer.to_str())
    problem = _tiktoken_problem(spec)
    if problem:
        return None, problem
    vocab: dict[str, int] = spec["model"]["vocab"]
    unreachable = [t for t, i in vocab.items() if i >= 256 and [x.id for x in hf_tokenizer.model.tokenize(t)] != [i]]
    if unreachable:
        return None, f"{len(unreachable)} of its tokens do not encode to themselves (one: {unreachable[0]!r})"
    ranks = {bytes(BYTE_OF_CHAR[c] for c in token): i for token, i in vocab.items()}
    return tiktoken.Encoding("tinygpt-bpe", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={}), ""


def _tiktoken_problem(spec: dict) -> str:
    """What in a `tokenizers` file (parsed JSON) keeps tiktoken from encoding as it does ("" for nothing)."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return "it has a normalizer"
    if spec.get("added_tokens"):
        return "it has added tokens"
    if any(spec.get(key) is not None for key in ("post_processor", "truncation", "padding")):
        return "it has a post-processor, truncation or padding"
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")) != ("ByteLevel", False, True):
        return "its pre-tokenizer is not ByteLevel with the GPT-2 regex and no prefix space"
    options = [k for k in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix") if model.get(k)]
    options += [k for k in ("byte_fallback", "ignore_merges") if model.get(k)]
    if model.get("type") != "BPE" or options:
        return f"its model is not plain BPE ({model.get('type')}{''.join(', ' + k for k in options)})"
    vocab: dict[str, int] = model["vocab"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]  # "a b" before tokenizers 0.20
    by_id = sorted(vocab, key=vocab.__getitem__)
    if sorted(vocab.values()) != list(range(256 + len(merges))) or sorted(by_id[:256]) != sorted(BYTE_OF_CHAR):
        return "its vocabulary is not the 256 byte characters and one token per merge"
    if any(vocab.get(a + b) != 256 + i for i, (a, b) in enumerate(merges)):
        return "its merge i does not make token 256 + i"
    return ""


class SplitAgreement:
    """Which characters the regex engines of `tokenizers` (Oniguruma) and tiktoken (Rust regex, through
    fancy-regex) treat alike in GPT2_SPLIT: each engine has its own Unicode tables.

    The pattern sees a character only through the classes in CLASSES (its literals are ASCII), so
    two engines that put each character of a text in the same classes split the text alike. Each
    engine compiles each class alone and lists its members in a block of BLOCK code points:
    `tokenizers` by splitting the block's characters with the class removed, tiktoken by encoding
    them with the class as its pattern (only matches are encoded) and a vocabulary of bytes alone.
    A block is checked when a text first brings one of its characters. Lone surrogates, which
    tiktoken replaces and `tokenizers` refuses, count as different.
    """

    BLOCK = 256
    CLASSES = (r"\p{L}", r"\p{N}", r"\s", r"\S", r"[^\s\p{L}\p{N}]")

    def __init__(self):
        import tiktoken
        from tokenizers import Regex, pre_tokenizers

        byte_ranks = {bytes([b]): b for b in range(256)}
        self._engines = [
            (
                pre_tokenizers.Split(Regex(pattern), behavior="removed"),
                tiktoken.Encoding(pattern, pat_str=pattern, mergeable_ranks=byte_ranks, special_tokens={}),
            )
            for pattern in self.CLASSES
        ]
        self._checked = np.zeros(0x110000 // self.BLOCK, dtype=bool)
        self.different: set[int] = set(range(0xD800, 0xE000))
        self._check_blocks([0])

    def agree_on(self, text: str) -> bool:
        """True when every character of `text` is in the same classes in both engines."""
        if text.isascii() and self._ascii_agrees:
            return True
        found = self._unknown_or_different.search(text)
        while found:
            code = ord(found.group())
            if code in self.different:
                return False
            self._check_blocks([code // self.BLOCK])
            found = self._unknown_or_different.search(text, found.start())
        return True

    def check_all(self) -> set[int]:
        """Check every code point; return those classed differently (surrogates included)."""
        self._check_blocks(np.flatnonzero(~self._checked).tolist())
        return set(self.different)

    def _check_blocks(self, blocks: list[int]) -> None:
        for block in blocks:
            start = block * self.BLOCK
            chars = "".join(chr(c) for c in range(start, start + self.BLOCK) if not 0xD800 <= c < 0xE000)
            for split, encoding in self._engines:
                library = set(chars).difference(*(piece for piece, _ in split.pre_tokenize_str(chars)))
                tiktoken = set(bytes(encoding.encode_ordinary(chars)).decode())
                self.different.update(map(ord, library ^ tiktoken))
        self._checked[blocks] = True
        self._ascii_agrees = not any(c < 0x80 for c in self.different)
        unsafe = np.repeat(~self._checked, self.BLOCK)
        unsafe[list(self.different)] = True
        edges = np.flatnonzero(np.diff(np.concatenate([[False], unsafe, [False]]).astype(np.int8)))
        ranges = "".join(f"\\U{a:08x}-\\U{b - 1:08x}" for a, b in zip(edges[::2], edges[1::2]))
        self._unknown_or_different = re.compile(f"[{ranges}]")


@functools.cache
def split_agreement() -> SplitAgreement:
    """The one SplitAgreement of this process (it depends only on the installed libraries)."""
    return SplitAgreement()


class BPETokenizer(Tokenizer):
    """Byte-level BPE from Hugging Face `tokenizers`: every byte is in the alphabet, so nothing is unknown.

    The library's model holds ids 0..n-1; <|endoftext|> is id n, kept outside the library so
    that the library never matches it inside text. Texts are encoded by tiktoken, about 3x faster
    on one core, when `tiktoken_twin` proves it gives the same ids for this tokenizer and both
    libraries split the text's characters alike (`SplitAgreement`); otherwise by `tokenizers`.
    `engine` says which; the main process says so in one line when it cannot be tiktoken.
    """

    kind = "bpe"
    FILE = "bpe.json"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.eot_id = hf_tokenizer.get_vocab_size()
        self.vocab_size = self.eot_id + 1
        self._tiktoken, reason = tiktoken_twin(hf_tokenizer)
        self.engine = "tiktoken" if self._tiktoken else "tokenizers"
        if reason and multiprocessing.parent_process() is None:  # worker processes: their parent has said it
            print(f"tinygpt: note: BPE encoding uses tokenizers, not the faster tiktoken: {reason}", file=sys.stderr)

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
        tok.train_from_iterator(short_words(texts), trainer=trainer)
        got = tok.get_vocab_size() + 1
        if got < vocab_size:
            raise TinyGPTError(
                f"the training text supports a BPE vocabulary of only {got} tokens, not {vocab_size}: "
                f"use --tokenizer.vocab_size {got} or less, or more text"
            )
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._tiktoken is None:
            return self._library_encode_batch(texts)
        agree, encode = split_agreement().agree_on, self._tiktoken.encode_ordinary  # one thread, the caller's
        out = [encode(t) if agree(t) else None for t in texts]
        rest = [i for i, ids in enumerate(out) if ids is None]
        for i, ids in zip(rest, self._library_encode_batch([texts[i] for i in rest])):
            out[i] = ids
        return out

    def _library_encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
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

    def vocab_bytes(self) -> list[bytes]:
        # Byte-level tokens are spelled with one stand-in character per byte (GPT-2's byte map).
        out = [b""] * self.vocab_size
        for token, i in self._tok.get_vocab().items():
            out[i] = bytes(BYTE_OF_CHAR[char] for char in token)
        out[self.eot_id] = EOT_SEPARATOR.encode()
        return out

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
            if needed := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):  # its advice names its own flags
                msg = (
                    f"it keeps a token for every character of the text (character_coverage 1.0), which takes "
                    f"{int(needed[1]):,} tokens with its own: raise --vocab-size, or use --tokenizer bpe"
                )
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

    def vocab_bytes(self) -> list[bytes]:
        sp = self._sp
        out = [b""] * self.vocab_size
        for i in range(self.vocab_size):
            if sp.is_byte(i):  # byte-fallback pieces are spelled <0xAB>
                out[i] = bytes([int(sp.id_to_piece(i)[3:5], 16)])
            elif not (sp.is_control(i) or sp.is_unknown(i)):
                out[i] = sp.id_to_piece(i).replace("\u2581", " ").encode()
        out[self.eot_id] = EOT_SEPARATOR.encode()
        return out

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


# Hugging Face's BPE trainer takes time quadratic in the length of a word (a run of letters, for
# its pre-tokenizer): measured, 100,000 random CJK characters as one word took 6.1 CPU-seconds,
# as words of 1,000 characters 0.5; a 3 MB line of them took 160 s to prepare at load 9.
MAX_TRAINING_WORD = 1000
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_TRAINING_WORD + 1}}}")  # from a run's start only: linear time


def short_words(texts: Iterable[str]) -> Iterator[str]:
    """BPE training texts with no run of more than MAX_TRAINING_WORD characters without whitespace:
    a text that has one is given in parts of that many characters (a word cut in two is two
    words to the trainer; the merges it learns are as valid, its counts hardly change)."""
    for text in texts:
        if _LONG_RUN.search(text) is None:
            yield text
        else:
            yield from (text[i : i + MAX_TRAINING_WORD] for i in range(0, len(text), MAX_TRAINING_WORD))


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
