"""The preparation pipeline: input files in, a prepared folder out; and the `tinygpt prepare` command.

The main process reads each input with documents.read_documents, in pieces of about CHUNK_BYTES
cut where documents end, and divides the documents into train and validation; worker processes
encode the chunks (each loads the tokenizer once); the main process writes the results in input
order with shards.ShardWriter, so the shards do not depend on the number of workers. At most two
chunks per worker are in flight, so memory does not grow with the corpus, only with the largest
document. The folder (its layout is in shards.py) is written whole by `common.atomic_folder`, so
an interrupted run leaves nothing that looks finished. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from .common import TinyGPTError, atomic_folder, atomic_write_bytes, atomic_write_json, interrupt_for
from .config import Config, add_config_arguments, dump_toml, load_config
from .documents import read_documents, resolve_inputs
from .shards import CONFIG, MANIFEST, MANIFEST_VERSION, SPLITS, TOKENIZER, ShardWriter, is_prepared, tokenizer_dir
from .tokenizers import EOT_TEXT, META_FILE, Tokenizer, load_tokenizer, train_tokenizer

# ---------------------------------------------------------------- chunks of train and validation documents


@dataclass
class Chunk:
    """One unit of work: the documents of a piece of input, already divided into the two splits."""

    nbytes: int  # input bytes the chunk came from (for the progress bar)
    docs: dict[str, list[str]]  # "train" / "val" -> documents


def held_out(indices: np.ndarray, fraction: float) -> np.ndarray:
    """Which documents (by position in the input) belong to validation: floor(n * fraction) of the
    first n, evenly spread, so the choice is fixed and whole documents are held out."""
    return np.floor((indices + 1) * fraction) > np.floor(indices * fraction)


def read_chunks(train_paths: list[Path], val_paths: list[Path], cfg: Config, *, train_only: bool = False) -> Iterator[Chunk]:
    """Every chunk of the input in order: the training files (minus documents held out for
    validation when there is no validation file), then, unless `train_only`, the validation files."""
    fraction = 0.0 if val_paths else cfg.data.val_fraction
    index = 0
    for path in train_paths:
        for docs, nbytes in read_documents(path, cfg.data.text_field, cfg.data.errors):
            train, val, start = [], [], 0
            if fraction:
                for i in np.flatnonzero(held_out(np.arange(index, index + len(docs)), fraction)):
                    train += docs[start:i]
                    val.append(docs[i])
                    start = i + 1
            train += docs[start:]
            index += len(docs)
            yield Chunk(nbytes, {"train": train, "val": val})
    if train_only:
        return
    for path in val_paths:
        for docs, nbytes in read_documents(path, cfg.data.text_field, cfg.data.errors):
            yield Chunk(nbytes, {"val": docs})


# ---------------------------------------------------------------- the tokenizer


def tokenizer_sample(chunks: Iterable[Chunk], max_bytes: int) -> Iterator[str]:
    """Training documents from the start of the input: whole chunks, until `max_bytes` bytes are read."""
    remaining = max_bytes
    for chunk in chunks:
        if remaining <= 0:
            return
        yield from chunk.docs["train"]
        remaining -= chunk.nbytes


def obtain_tokenizer(cfg: Config, train_paths: list[Path], val_paths: list[Path], tokenizer_from: str | None) -> Tokenizer:
    """The tokenizer of `--tokenizer-from` (a prepared folder or a tokenizer folder), or a new one
    trained on a bounded sample of the training documents."""
    kind = cfg.tokenizer.kind
    if tokenizer_from:
        folder = Path(tokenizer_from)
        if (tokenizer_dir(folder) / META_FILE).is_file():
            folder = tokenizer_dir(folder)
        return load_tokenizer(folder, expect_kind=kind)
    sample = tokenizer_sample(read_chunks(train_paths, val_paths, cfg, train_only=True), cfg.tokenizer.train_bytes)
    first = next(sample, None)
    if first is None:
        raise _no_documents(train_paths)
    what = "" if kind == "char" else f" with {cfg.tokenizer.vocab_size} tokens"
    _say(f"training a {kind} tokenizer{what} on up to {cfg.tokenizer.train_bytes / 1e6:,.0f} MB of text")
    return train_tokenizer(kind, chain([first], sample), cfg.tokenizer.vocab_size)


def _no_documents(paths: list[Path]) -> TinyGPTError:
    names = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return TinyGPTError(
        f"no documents in {names}: every document is empty or whitespace "
        f"(documents are separated by lines that are exactly {EOT_TEXT})"
    )


# ---------------------------------------------------------------- encoding, in worker processes


@dataclass
class Encoded:
    """A chunk's tokens and figures, per split: (tokens, documents, text_bytes, unknown)."""

    nbytes: int
    splits: dict[str, tuple[np.ndarray, int, int, int]]


class ChunkEncoder:
    """Turns a Chunk into token arrays of the shard dtype, with the bytes the tokens stand for."""

    def __init__(self, tokenizer: Tokenizer, dtype: str):
        self.tokenizer = tokenizer
        self.dtype = np.dtype(dtype)
        self.token_bytes = tokenizer.token_bytes()

    def __call__(self, chunk: Chunk) -> Encoded:
        splits = {}
        for split, docs in chunk.docs.items():
            if docs:
                ids, unknown = self.tokenizer.encode_docs(docs)
                text_bytes = int(np.bincount(ids, minlength=self.token_bytes.size) @ self.token_bytes)
                splits[split] = (ids.astype(self.dtype), len(docs), text_bytes, unknown)
        return Encoded(chunk.nbytes, splits)


_worker_encoder: ChunkEncoder | None = None


def _start_worker(tokenizer_dir: str, dtype: str) -> None:
    global _worker_encoder
    # (SIGINT and SIGTERM are ignored from the start: see _children_ignore_signals.) One thread per process: the processes are the parallelism, more threads would only compete.
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
                with _children_ignore_signals():  # submit starts the worker processes, as they are needed
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


@contextlib.contextmanager
def _children_ignore_signals() -> Iterator[None]:
    """Processes started inside ignore SIGINT and SIGTERM for their whole life: an ignored signal
    stays ignored through exec, and Python keeps it so. A Ctrl-C or a SIGTERM sent to the whole
    process group then reaches only this process, which stops the pool cleanly, where a worker
    would print a traceback or die and leave the pool broken. Meanwhile this process blocks the
    two signals and takes them after (Linux keeps a blocked signal pending even while it is ignored).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
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
    Raises TinyGPTError for an invalid config (validated here, as the command line does) or input.
    """
    cfg.validate()
    out = Path(out).resolve()  # also gives "." or ".." a name for the temporary sibling
    _check_out(out, force)
    train_paths = resolve_inputs(inputs, exclude=out)
    val_paths = resolve_inputs([val], exclude=out) if val else []
    source_bytes = sum(p.stat().st_size for p in train_paths + val_paths)
    if not sum(p.stat().st_size for p in train_paths):
        raise TinyGPTError(f"the input is empty: {', '.join(map(str, train_paths))}")
    with atomic_folder(out) as tmp:
        tokenizer = obtain_tokenizer(cfg, train_paths, val_paths, tokenizer_from)
        tokenizer.save(tokenizer_dir(tmp))
        dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
        splits = _encode_and_write(cfg, train_paths, val_paths, tmp, dtype, source_bytes, progress)
        if not splits["train"]["documents"]:
            raise _no_documents(train_paths)
        if val_paths and not splits["val"]["documents"]:
            raise _no_documents(val_paths)
        if cfg.data.val_fraction and not val_paths and not splits["val"]["documents"]:
            raise TinyGPTError(
                f"{splits['train']['documents']} documents are too few to hold out "
                f"data.val_fraction={cfg.data.val_fraction} of them: raise it, or pass --val FILE"
            )
        manifest = {
            "format_version": MANIFEST_VERSION,
            "dtype": dtype,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "tokenizer_kind": tokenizer.kind,
            "tokenizer_hash": tokenizer.hash,
            "source_bytes": source_bytes,
            "splits": splits,
        }
        if source:
            manifest["source"] = source
        used = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, vocab_size=tokenizer.vocab_size))
        atomic_write_bytes(tmp / CONFIG, dump_toml(used).encode())  # with the vocabulary size it got
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks the folder complete
        _check_out(out, force)  # again: something may have appeared there meanwhile
    return manifest


def _encode_and_write(
    cfg: Config, train_paths: list[Path], val_paths: list[Path], folder: Path, dtype: str, total: int, progress: bool
) -> dict:
    """Encode every chunk into the shard files of `folder`; return the manifest's "splits"."""
    from tqdm import tqdm

    writers = {split: ShardWriter(folder, split, cfg.data.shard_tokens) for split in SPLITS}
    figures = {split: {"documents": 0, "text_bytes": 0, "unknown": 0} for split in SPLITS}
    workers = cfg.data.workers or available_cpus()
    chunks = read_chunks(train_paths, val_paths, cfg)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="encoding", disable=None if progress else True)
    # closing(): an error while writing stops the workers now, not when the generator is collected
    with bar, contextlib.closing(encode_chunks(chunks, tokenizer_dir(folder), dtype, workers)) as encoded_chunks:
        for encoded in encoded_chunks:
            for split, (tokens, documents, text_bytes, unknown) in encoded.splits.items():
                writers[split].write(tokens)
                figures[split]["documents"] += documents
                figures[split]["text_bytes"] += text_bytes
                figures[split]["unknown"] += unknown
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
    short.add_argument("--errors", choices=["strict", "replace"], help="data.errors: what to do with bytes that are not UTF-8")
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
    mb = manifest["source_bytes"] / 1e6
    lines = [f"prepared {mb:,.1f} MB in {seconds:,.1f} s ({mb / max(seconds, 1e-9):,.1f} MB/s) -> {out.resolve()}"]
    for split in SPLITS:
        s = manifest["splits"][split]
        per_byte = s["tokens"] / s["text_bytes"] if s["text_bytes"] else 0.0
        lines.append(
            f"  {split + ':':<6} {s['documents']:,} documents, {s['tokens']:,} tokens in {len(s['shards'])} shard(s), "
            f"{s['text_bytes']:,} bytes ({per_byte:.3f} tokens/byte), {s['unknown']:,} unknown characters"
        )
    lines.append(
        f"  tokenizer: {manifest['tokenizer_kind']}, {manifest['vocab_size']:,} tokens, "
        f"hash {manifest['tokenizer_hash']}, shards of {manifest['dtype']}"
    )
    return "\n".join(lines)
