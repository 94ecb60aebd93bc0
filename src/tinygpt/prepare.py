"""The preparation pipeline: input files in, a prepared folder out; and the `tinygpt prepare` command.

The main process reads each input with a documents.Reader, in Pieces of at most about
CHUNK_BYTES whatever the documents' sizes, and divides the documents into train and validation
(a document cut into several Pieces stays whole in one split); worker processes encode the
chunks (each loads the tokenizer once); the main process writes the results in input order with
shards.ShardWriter, so the shards do not depend on the number of workers. At most two chunks per
worker are in flight, so memory does not grow with the corpus nor with its documents. The folder
(its layout is in shards.py) is written whole by `common.atomic_folder`, so an interrupted run
leaves nothing that looks finished. Nothing here imports torch.

Each split is one token stream that starts with the end-of-text token (t0 of the bits-per-byte
definition in evaluate.py: a text is always preceded by it) and has an end-of-text token for
every separator line read (and after every JSON record); none is invented at the end of a file.
Where a document without one is followed by another in the same split (the last document of a
file, then the first of the next), one is put between them, and counted as the 14 bytes of the
separator line it stands for. The split's source_bytes (S) add up what the reader consumed for
its documents, plus those 14s: for one .txt file, its size.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path

import numpy as np

from .common import TinyGPTError, atomic_folder, atomic_write_bytes, atomic_write_json, interrupt_for
from .config import Config, add_config_arguments, dump_toml, load_config
from .documents import CHUNK_BYTES, EOT_BYTES, Inputs, Reader, cut_text, find_inputs
from .shards import CONFIG, MANIFEST, MANIFEST_VERSION, SPLITS, TOKENIZER, ShardWriter, is_prepared, tokenizer_dir
from .tokenizers import EOT_TEXT, META_FILE, Tokenizer, load_tokenizer, train_tokenizer

# ---------------------------------------------------------------- chunks of train and validation documents


@dataclass
class Part:
    """The texts of one split in a chunk, in order; each is followed by an end-of-text token but the
    last when `open_end`, and `lead_eot` puts one before the first."""

    texts: list[str] = field(default_factory=list)
    lead_eot: bool = False
    open_end: bool = False
    documents: int = 0  # documents that start here
    empty: int = 0  # of those, empty or whitespace only: counted where they start, taken back (-1) in the chunk
    # where a document counted empty on its first texts gets text after all (a cut inside its leading blank lines)
    source_bytes: int = 0  # S: see the module docstring


@dataclass
class Chunk:
    """One unit of work: the texts of a documents.Piece, divided into the two splits."""

    nbytes: int  # input bytes the chunk came from (for the progress bar)
    parts: dict[str, Part]


def held_out(indices: np.ndarray, fraction: float) -> np.ndarray:
    """Which documents (by position in the input) belong to validation: floor(n * fraction) of the
    first n, evenly spread, so the choice is fixed and whole documents are held out."""
    return np.floor((indices + 1) * fraction) > np.floor(indices * fraction)


class _Streams:
    """Where each split's token stream stands: whether it has begun (with t0), and whether its
    last text still lacks its end-of-text token."""

    def __init__(self):
        self.begun = dict.fromkeys(SPLITS, False)
        self.open = dict.fromkeys(SPLITS, False)
        self.blank = dict.fromkeys(SPLITS, False)  # the open document is empty or whitespace so far

    def add(self, part: Part, split: str, texts: list[str], nbytes: list[int], starts: bool, open_end: bool) -> None:
        """Append consecutive texts of one Piece to `part`; `starts`: the first begins a document."""
        if not part.texts and (not self.begun[split] or (starts and self.open[split])):
            part.lead_eot = True
            part.source_bytes += EOT_BYTES if self.begun[split] else 0  # t0 stands for no text
        part.texts += texts
        part.source_bytes += sum(nbytes)
        blank = [not text or text.isspace() for text in texts]
        part.documents += len(texts) - (not starts)
        part.empty += sum(blank[(not starts) :])
        if not starts and self.blank[split] and not blank[0]:
            part.empty -= 1
        part.open_end = open_end
        self.blank[split] = blank[-1] and (starts or len(texts) > 1 or self.blank[split])
        self.begun[split], self.open[split] = True, open_end


def read_chunks(inputs: Inputs, reader: Reader, val_fraction: float, *, train_only: bool = False) -> Iterator[Chunk]:
    """Every chunk of the input in order: the training files (minus the documents held out for
    validation when there is no validation file), then, unless `train_only`, the validation files."""
    fraction = 0.0 if inputs.val else val_fraction
    streams = _Streams()
    index = 0  # documents of the training files so far
    split_of_open = "train"  # the split of the document the last piece left open
    files = [(path, "train") for path in inputs.train] + ([] if train_only else [(path, "val") for path in inputs.val])
    for path, file_split in files:
        for piece in reader.read(path):
            parts = {split: Part() for split in SPLITS}
            texts, nbytes, last = piece.texts, piece.nbytes, len(piece.texts) - 1
            start = 0
            if piece.continues:  # the first text goes where its document went
                streams.add(parts[split_of_open], split_of_open, texts[:1], nbytes[:1], False, last == 0 and piece.open_end)
                start = 1
            if start <= last and (file_split == "val" or not fraction):
                streams.add(parts[file_split], file_split, texts[start:], nbytes[start:], True, piece.open_end)
                split_of_open = file_split
            elif start <= last:
                is_val = held_out(np.arange(index, index + last + 1 - start), fraction)
                index += last + 1 - start
                # runs of consecutive texts that go to the same split
                bounds = [start, *(start + np.flatnonzero(np.diff(is_val)) + 1).tolist(), last + 1]
                for a, b in pairwise(bounds):
                    split = "val" if is_val[a - start] else "train"
                    streams.add(parts[split], split, texts[a:b], nbytes[a:b], True, b == last + 1 and piece.open_end)
                    split_of_open = split
            yield Chunk(sum(nbytes), {split: part for split, part in parts.items() if part.texts})


# ---------------------------------------------------------------- the tokenizer


LONG_WORD = re.compile(r"\S{33,}")  # a run of more than 32 characters without whitespace
MAX_LONG_WORD_CHARS = 8_000_000  # of them in a BPE or SentencePiece tokenizer's sample (see TokenizerSample)


class TokenizerSample:
    """Training texts from the start of the input, at most `max_bytes` UTF-8 bytes of them (the last
    one cut at a safe point to fit) and, when `max_long_word_chars`, only until they hold that many
    characters in words of more than 32 characters.

    A BPE or SentencePiece trainer keeps every distinct word, and words that long are seldom
    repeated: text without whitespace is nearly all distinct words. Measured on TinyStories with its
    whitespace removed, peak memory grows by ~12 bytes per byte of sample for Hugging Face's BPE
    trainer and ~35 for SentencePiece's (30 MB: 0.65 and 1.15 GB), against ~2.5 for SentencePiece on
    the text as shipped (200 MB: 0.71 GB). Iterate once; then `nbytes` is the sample's size and
    `long_words_full` says whether the long words ended it.
    """

    def __init__(self, chunks: Iterable[Chunk], max_bytes: int, max_long_word_chars: int = 0):
        self.chunks = chunks
        self.max_bytes = max_bytes
        self.max_long_word_chars = max_long_word_chars
        self.nbytes = 0
        self.long_words_full = False

    def __iter__(self) -> Iterator[str]:
        long_chars = 0
        for chunk in self.chunks:
            for text in chunk.parts["train"].texts if "train" in chunk.parts else []:
                size = len(text.encode())
                if self.nbytes + size >= self.max_bytes:
                    text = cut_text(text, self.max_bytes - self.nbytes)[0] if self.nbytes < self.max_bytes else ""
                    self.nbytes += len(text.encode())
                    yield text
                    return
                self.nbytes += size
                yield text
                if self.max_long_word_chars:
                    long_chars += sum(len(word) for word in LONG_WORD.findall(text))
                    if long_chars >= self.max_long_word_chars:
                        self.long_words_full = True
                        return


def obtain_tokenizer(cfg: Config, inputs: Inputs, tokenizer_from: str | None) -> Tokenizer:
    """The tokenizer of `--tokenizer-from` (a prepared folder or a tokenizer folder), or a new one
    trained on at most tokenizer.train_bytes of the training documents."""
    kind = cfg.tokenizer.kind
    if tokenizer_from:
        folder = Path(tokenizer_from)
        if (tokenizer_dir(folder) / META_FILE).is_file():
            folder = tokenizer_dir(folder)
        return load_tokenizer(folder, expect_kind=kind)
    chunks = read_chunks(inputs, _reader(cfg), cfg.data.val_fraction, train_only=True)
    with contextlib.closing(chunks):  # stop reading (and close the file) once the sample is complete
        sample = TokenizerSample(chunks, cfg.tokenizer.train_bytes, 0 if kind == "char" else MAX_LONG_WORD_CHARS)
        texts = (text for text in sample if text.strip())
        first = next(texts, None)
        if first is None:
            raise _no_documents(inputs.train)
        what = "" if kind == "char" else f" with {cfg.tokenizer.vocab_size} tokens"
        _say(f"training a {kind} tokenizer{what} on up to {cfg.tokenizer.train_bytes / 1e6:,.0f} MB of text")
        # An error reading the input (bad bytes, bad JSON) is kept aside and raised here: raised
        # inside the library's loop it would come out wrapped in the library's own message.
        errors: list[TinyGPTError] = []
        try:
            tokenizer = train_tokenizer(kind, _stop_at_error(chain([first], texts), errors), cfg.tokenizer.vocab_size)
        except TinyGPTError:
            if not errors:
                raise
        if errors:
            raise errors[0]
        _return_freed_memory()
        if sample.long_words_full:
            _say(
                f"  (on {sample.nbytes / 1e6:,.1f} MB: its words of more than 32 characters, seldom repeated, "
                f"reached the {MAX_LONG_WORD_CHARS / 1e6:,.0f} million characters the trainer's memory allows)"
            )
        return tokenizer


def _return_freed_memory() -> None:
    """Hand the memory a tokenizer library freed back to the system: glibc keeps it for reuse, and
    the libraries' large temporaries leave its heap in pieces it cannot reuse. Measured: 0.27 GB kept
    after training BPE on 30 MB of text (0.06 GB after malloc_trim); a SentencePiece worker encoding
    256 KiB texts grew from 57 to 85 MB over 30 MB of them, and to ~180 MB over 500 MB (flat at 57
    with malloc_trim after each chunk, which costs ~0.1 ms). Elsewhere than glibc, nothing happens."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no such library or function
        ctypes.CDLL(None).malloc_trim(0)


def _stop_at_error(texts: Iterator[str], errors: list[TinyGPTError]) -> Iterator[str]:
    try:
        yield from texts
    except TinyGPTError as e:
        errors.append(e)


def _reader(cfg: Config) -> Reader:
    return Reader(cfg.data.text_field, cfg.data.errors, cfg.data.line_endings)


def _no_documents(paths: list[Path]) -> TinyGPTError:
    names = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return TinyGPTError(
        f"no documents in {names}: every document is empty or whitespace "
        f"(documents are separated by lines that are exactly {EOT_TEXT})"
    )


# ---------------------------------------------------------------- encoding, in worker processes


@dataclass
class Encoded:
    """A chunk's tokens per split, and the figures the manifest adds up per split."""

    nbytes: int
    tokens: dict[str, np.ndarray]
    figures: dict[str, dict[str, int]]  # split -> {"documents", "empty_documents", "source_bytes", "unknown"}


class ChunkEncoder:
    """Turns a Chunk into token arrays of the shard dtype: each text's ids, then end-of-text tokens
    where the Part says (before the first text, after every text but an open last one)."""

    def __init__(self, tokenizer: Tokenizer, dtype: str):
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)

    def __call__(self, chunk: Chunk) -> Encoded:
        tokens, figures = {}, {}
        for split, part in chunk.parts.items():
            ids, unknown = self.tokenizer.encode_docs(part.texts)
            ids = ids[: ids.size - part.open_end]
            if part.lead_eot:
                ids = np.concatenate([np.array([self.tokenizer.eot_id], dtype=ids.dtype), ids])
            tokens[split] = ids.astype(self.dtype)
            figures[split] = {
                "documents": part.documents,
                "empty_documents": part.empty,
                "source_bytes": part.source_bytes,
                "unknown": unknown,
            }
        _return_freed_memory()
        return Encoded(chunk.nbytes, tokens, figures)


_worker_encoder: ChunkEncoder | None = None


def _start_worker(tokenizer_dir: str, dtype: str) -> None:
    global _worker_encoder
    # (SIGINT and SIGTERM are blocked from the start: see _children_block_signals.) One thread per process: the processes are the parallelism, more threads would only compete.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_encoder = ChunkEncoder(load_tokenizer(tokenizer_dir), dtype)


def _encode_in_worker(chunk: Chunk) -> Encoded:
    return _worker_encoder(chunk)


def encode_chunks(chunks: Iterable[Chunk], tokenizer_dir: Path, dtype: str, workers: int) -> Iterator[Encoded]:
    """Encoded chunks in input order, from `workers` processes with at most two chunks each in flight.

    (Pool.imap would read the whole input ahead into its task queue.) With one worker, this process
    encodes, and the tokenizer library may use threads of its own.
    """
    if workers == 1:
        yield from map(ChunkEncoder(load_tokenizer(tokenizer_dir), dtype), chunks)
        return
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and memory
    start = {"initializer": _start_worker, "initargs": (str(tokenizer_dir), dtype)}
    with _interrupts_at_safe_points() as interrupted, ProcessPoolExecutor(workers, mp_context=context, **start) as pool:
        pending = deque()
        try:
            for chunk in chunks:
                interrupted.check()
                with _children_block_signals():  # submit starts the worker processes, as they are needed
                    pending.append(pool.submit(_encode_in_worker, chunk))
                if len(pending) >= 2 * workers:
                    encoded = pending.popleft().result()
                    interrupted.check()
                    yield encoded
            while pending:
                encoded = pending.popleft().result()
                interrupted.check()
                yield encoded
        except BrokenProcessPool:
            interrupted.check()  # a signal meant for this process that also reached a worker
            raise TinyGPTError("an encoding worker process died (out of memory?); try fewer --workers") from None
        finally:
            for future in pending:
                future.cancel()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Interrupts:
    def __init__(self):
        self.received: int | None = None  # the first stop signal received

    def handle(self, signum, frame) -> None:
        self.received = self.received or signum

    def check(self) -> None:
        """Raise KeyboardInterrupt (SIGINT) or common.Terminated (SIGTERM) once one was received."""
        if self.received:
            raise interrupt_for(self.received)


@contextlib.contextmanager
def _interrupts_at_safe_points() -> Iterator[_Interrupts]:
    """Ctrl-C (SIGINT) and SIGTERM only set a flag, which check() turns into an exception between chunks.

    Raised wherever the main thread happens to be, it can land inside the process pool's own
    bookkeeping (a half-written wake-up message) and leave the pool waiting forever.
    """
    interrupts = _Interrupts()
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield interrupts
        return
    previous = {s: signal.signal(s, interrupts.handle) for s in _STOP_SIGNALS}
    try:
        yield interrupts
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    interrupts.check()  # a signal that came after the last safe point still stops the command


@contextlib.contextmanager
def _children_block_signals() -> Iterator[None]:
    """Processes started inside never take SIGINT or SIGTERM: they start with both blocked (a
    signal mask is inherited through fork and exec, and Python leaves it so). A Ctrl-C or a SIGTERM
    sent to the whole process group then stops only this process, which stops the pool cleanly,
    where a worker would print a traceback or die and leave the pool broken. This process takes a
    signal that came meanwhile when the mask is restored. (Setting SIG_IGN here instead would
    discard such a signal: POSIX drops a pending signal whose action becomes SIG_IGN.)
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- prepare


def prepare(
    inputs: list[str],
    out: str | Path,
    cfg: Config,
    *,
    val: str | None = None,
    tokenizer_from: str | None = None,
    force: bool = False,
    progress: bool = True,
    source: str | None = None,
) -> dict:
    """Encode `inputs` (and the validation input `val`) into a prepared folder `out`; return its manifest.

    `source` names the data (e.g. "tinystories") for model cards, which then carry its licence.

    The folder is built under a temporary name beside `out` and renamed when complete. An
    existing `out` is replaced only with `force`, and only if it is a prepared folder itself.
    Raises TinyGPTError for an invalid config (validated here, as the command line does) or bad
    input (see documents.find_inputs and documents.Reader.read).
    """
    cfg.validate()
    out = Path(out).resolve()  # also gives "." or ".." a name for the temporary sibling
    _check_out(out, force)
    found = find_inputs(inputs, val, exclude=out)
    input_bytes = sum(p.stat().st_size for p in found.train + found.val)
    if not sum(p.stat().st_size for p in found.train):
        raise TinyGPTError(f"the input is empty: {', '.join(map(str, found.train))}")
    with atomic_folder(out) as tmp:
        tokenizer = obtain_tokenizer(cfg, found, tokenizer_from)
        tokenizer.save(tokenizer_dir(tmp))
        dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
        reader = _reader(cfg)
        splits = _encode_and_write(cfg, found, reader, tmp, dtype, input_bytes, progress)
        _check_documents(splits, found, cfg.data.val_fraction)
        manifest = {
            "format_version": MANIFEST_VERSION,
            "dtype": dtype,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "tokenizer_kind": tokenizer.kind,
            "tokenizer_hash": tokenizer.hash,
            "input": {
                "files": len(found.train) + len(found.val),
                "bytes": input_bytes,
                "line_endings": cfg.data.line_endings,
                **dataclasses.asdict(reader.stats),
                "notes": found.notes,
            },
            "splits": splits,
        }
        if source:
            manifest["source"] = source
        used = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, vocab_size=tokenizer.vocab_size))
        atomic_write_bytes(tmp / CONFIG, dump_toml(used).encode())  # with the vocabulary size it got
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks the folder complete
        _check_out(out, force)  # again: something may have appeared there meanwhile
    return manifest


def _check_documents(splits: dict, found: Inputs, val_fraction: float) -> None:
    def has_text(split: str) -> bool:
        return splits[split]["documents"] > splits[split]["empty_documents"]

    if not has_text("train"):
        raise _no_documents(found.train)
    if found.val and not has_text("val"):
        raise _no_documents(found.val)
    if val_fraction and not found.val and not splits["val"]["documents"]:
        raise TinyGPTError(
            f"{splits['train']['documents']} documents are too few to hold out data.val_fraction={val_fraction} of "
            f"them (documents are separated by {EOT_TEXT} lines): pass --val FILE, or raise data.val_fraction, "
            "or set it to 0 to train without validation"
        )


def _encode_and_write(
    cfg: Config, found: Inputs, reader: Reader, folder: Path, dtype: str, total: int, progress: bool
) -> dict:
    """Encode every chunk into the shard files of `folder`; return the manifest's "splits"."""
    from tqdm import tqdm

    writers = {split: ShardWriter(folder, split, cfg.data.shard_tokens) for split in SPLITS}
    figures = {split: {"documents": 0, "empty_documents": 0, "source_bytes": 0, "unknown": 0} for split in SPLITS}
    workers = cfg.data.workers or available_cpus()
    chunks = read_chunks(found, reader, cfg.data.val_fraction)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="encoding", disable=None if progress else True)
    # closing(): an error while writing stops the workers now, not when the generator is collected
    with bar, contextlib.closing(encode_chunks(chunks, tokenizer_dir(folder), dtype, workers)) as encoded_chunks:
        for encoded in encoded_chunks:
            for split, tokens in encoded.tokens.items():
                writers[split].write(tokens)
                for key, value in encoded.figures[split].items():
                    figures[split][key] += value
            bar.update(encoded.nbytes)
    splits = {}
    for split in SPLITS:
        shards = writers[split].close()
        splits[split] = {"shards": shards, "tokens": sum(s["tokens"] for s in shards), **figures[split]}
    return splits


def _check_out(out: Path, force: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_prepared(out):
        raise TinyGPTError(f"{out} exists and is not a prepared-data folder: choose another --out")
    if not force:
        raise TinyGPTError(f"{out} already holds prepared data: use --force to replace it")


def _say(message: str) -> None:
    """Progress notes go to stdout: stderr is kept for errors (one line each) and the progress bar."""
    print(message, flush=True)


# ---------------------------------------------------------------- `tinygpt prepare`

_ALIASES = {  # convenience flag -> the config key it sets
    "tokenizer_kind": "tokenizer.kind",
    "vocab_size": "tokenizer.vocab_size",
    "workers": "data.workers",
    "errors": "data.errors",
    "text_field": "data.text_field",
}


def add_prepare_arguments(p) -> None:
    p.description = (
        "Turn text into token shards: train a tokenizer (or reuse one), encode on all cores, write\n"
        f"OUT/{{{MANIFEST}, {CONFIG}, {TOKENIZER}/, train_*.bin, val_*.bin}}.\n\n"
        "examples:\n"
        "  tinygpt prepare stories.txt --out runs/data --val valid.txt\n"
        "  tinygpt prepare 'shards/*.json' --out runs/data --text-field story --tokenizer char\n"
        "  tinygpt prepare tinystories --out runs/data --config tiny"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help=".txt (documents separated by <|endoftext|> lines), .jsonl or .json files, folders or globs; "
        "or 'tinystories' to download TinyStories and prepare it",
    )
    p.add_argument("--out", "-o", required=True, metavar="FOLDER", help="the prepared folder to write")
    p.add_argument("--val", metavar="FILE", help="validation documents (default: hold out data.val_fraction)")
    p.add_argument("--tokenizer-from", metavar="FOLDER", help="reuse the tokenizer of a prepared or tokenizer folder")
    p.add_argument("--force", action="store_true", help="replace OUT if it already holds prepared data")
    p.add_argument(
        "--source", metavar="NAME", help="what the data is, for model cards: 'tinystories' (set when downloaded) or a description"
    )
    short = p.add_argument_group("shortcuts for config keys")
    short.add_argument("--tokenizer", dest="tokenizer_kind", choices=["char", "bpe", "sentencepiece"], help="tokenizer.kind")
    short.add_argument("--vocab-size", metavar="N", help="tokenizer.vocab_size")
    short.add_argument("--workers", metavar="N", help="data.workers (0: all cores)")
    short.add_argument("--errors", choices=["strict", "replace"], help="data.errors: undecodable text (not UTF-8, lone surrogates) is an error (strict) or U+FFFD (replace)")
    short.add_argument("--text-field", metavar="NAME", help="data.text_field of .jsonl/.json inputs")
    ts = p.add_argument_group("downloading TinyStories (INPUT 'tinystories')")
    ts.add_argument("--version", dest="ts_version", choices=["v1", "v2"], help="v1 (default): GPT-3.5 + GPT-4 stories; v2: GPT-4 only")
    ts.add_argument("--cache", metavar="DIR", help="download folder (default: $TINYGPT_CACHE/tinystories or ~/.cache/tinygpt/tinystories)")
    ts.add_argument("--base-url", metavar="URL", help="where the files are (default: the Hugging Face dataset)")
    ts.add_argument("--files", metavar="TRAIN[:SIZE],VALID[:SIZE]", help="file names and expected sizes in bytes")
    add_config_arguments(p)


def run_prepare(args) -> int:
    aliases = {key: str(getattr(args, name)) for name, key in _ALIASES.items() if getattr(args, name) is not None}
    cfg = load_config(args.config, {**aliases, **args.overrides})
    inputs, val = args.inputs, args.val
    download_options = [args.ts_version, args.cache, args.base_url, args.files]
    if inputs == ["tinystories"]:
        from .download import download_tinystories

        if val:
            raise TinyGPTError("--val does not apply to 'tinystories' (its validation file is used)")
        train_file, valid_file = download_tinystories(args.ts_version or "v1", args.cache, args.base_url, args.files)
        inputs, val, args.source = [str(train_file)], str(valid_file), args.source or "tinystories"
    elif any(option is not None for option in download_options):
        raise TinyGPTError("--version, --cache, --base-url and --files only apply to the input 'tinystories'")
    start = time.perf_counter()
    manifest = prepare(
        inputs, args.out, cfg, val=val, tokenizer_from=args.tokenizer_from, force=args.force, source=args.source
    )
    print(summary(manifest, Path(args.out), time.perf_counter() - start))
    return 0


def summary(manifest: dict, out: Path, seconds: float) -> str:
    """The lines printed at the end of `tinygpt prepare`."""
    read = manifest["input"]
    mb = read["bytes"] / 1e6
    lines = [f"prepared {mb:,.1f} MB in {seconds:,.1f} s ({mb / max(seconds, 1e-9):,.1f} MB/s) -> {out.resolve()}"]
    for split in SPLITS:
        s = manifest["splits"][split]
        per_byte = s["tokens"] / s["source_bytes"] if s["source_bytes"] else 0.0
        empty = f" ({s['empty_documents']:,} empty)" if s["empty_documents"] else ""
        lines.append(
            f"  {split + ':':<6} {s['documents']:,} documents{empty}, {s['tokens']:,} tokens in {len(s['shards'])} shard(s), "
            f"{s['source_bytes']:,} bytes ({per_byte:.3f} tokens/byte), {s['unknown']:,} unknown characters"
        )
    lines.append(
        f"  tokenizer: {manifest['tokenizer_kind']}, {manifest['vocab_size']:,} tokens, "
        f"hash {manifest['tokenizer_hash']}, shards of {manifest['dtype']}"
    )
    done = "converted to \\n" if read["line_endings"] == "normalize" else "kept (data.line_endings = keep)"
    reading = [
        f"{read['cr_line_endings']:,} \\r\\n or \\r line endings {done}" if read["cr_line_endings"] else "",
        f"{read['boms']:,} byte-order mark(s) dropped" if read["boms"] else "",
        f"{read['char_cuts']:,} cut(s) inside documents at a character boundary (no space, tab or newline in "
        f"{CHUNK_BYTES / 2**10:,.0f} KiB)" if read["char_cuts"] else "",
    ]
    if any(reading):
        lines.append("  read: " + "; ".join(filter(None, reading)))
    lines += [f"  {note}" for note in read["notes"]]
    return "\n".join(lines)
