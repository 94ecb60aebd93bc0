"""Benchmark `tinygpt prepare`: memory against corpus size and shape, throughput against the libraries alone.

usage: python bench/prepare.py [--sizes targets] [--bpe-size 100M] [--char-size 100M] [--repeats 3]
                               [--workdir DIR] [--skip-baseline]      (a size of '' skips that part)

Corpora are ../shared/data/tinystories/train.txt repeated into a temporary file, in one of SHAPES. Prints
JSON lines:
  memory            peak RSS of `tinygpt prepare` (4096 tokens unless char, all cores, valid.txt as --val)
                    per case [SHAPE:]SIZE[:KIND[:TRAIN_BYTES]] of --sizes (shape `shipped` and kind `bpe`
                    unless given; 'targets', the default: TARGETS): the sum of the peaks of the parent and
                    every worker (psutil polls the process tree), and the highest simultaneous total seen.
                    Memory corpora tag every line of each repetition (a 3-letter word first), so that no
                    line repeats, as in real text (tokenizer trainers keep each distinct line or word).
  memory_baseline   the seed recipe (whole file -> list of ints -> int64 tensor) at the first shipped case
  throughput_bpe    `tinygpt prepare` reusing a 4096-token BPE, encoding with `tokenizers` (tiktoken hidden
                    from it) and with tiktoken, interleaved, --repeats each: MB per CPU-second (all threads
                    and processes), which other work on the machine disturbs much less, wall-clock MB/s and
                    peak RSS; and each library alone over the same documents with all cores
  throughput_char   prepare with the char tokenizer end to end (training included), best of --repeats
Every line carries the load average, since other work on the machine slows both sides.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from baseline import SEED_RECIPE, TRAIN, VALID, emit
from tinygpt.config import load_config
from tinygpt.documents import split_documents
from tinygpt.prepare import available_cpus, prepare
from tinygpt.shards import tokenizer_dir
from tinygpt.tokenizers import ENCODE_SLICE_CHARS


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


SHAPES = {  # name -> train.txt turned into it
    "shipped": lambda text: text,  # stories separated by <|endoftext|> lines
    "crlf": lambda text: text.replace("\n", "\r\n"),  # the same with \r\n line endings
    "no-separators": lambda text: text.replace("<|endoftext|>\n", ""),  # one document
    "one-line": lambda text: text.replace("<|endoftext|>\n", "").replace("\n", " "),  # one line with spaces
    "no-whitespace": lambda text: re.sub(r"\s+|<\|endoftext\|>", "", text),  # one line, no space, tab or newline
}
TARGETS = (  # issue 9: peak RSS of all processes <= 1 GB in each
    "no-separators:1G:bpe,no-separators:1G:sentencepiece,crlf:1G:bpe,crlf:1G:sentencepiece,"
    "shipped:100M:bpe,shipped:100M:sentencepiece,shipped:100M:char,one-line:100M:bpe,one-line:100M:sentencepiece,"
    "no-whitespace:100M:bpe,no-whitespace:100M:sentencepiece,no-whitespace:100M:char"
)


def make_corpus(folder: Path, size: int, shape: str = "shipped", tagged: bool = False) -> Path:
    """train.txt repeated whole, in `shape`, until the file holds at least `size` bytes (so it stays well
    formed); `tagged`: every line of repetition r starts with the r-th three-letter word, so no line repeats."""
    path = folder / f"corpus-{shape}-{size}{'-tagged' * tagged}.txt"
    if not path.exists():
        text = TRAIN.read_text(encoding="utf-8")
        tags = ("".join(t) for t in itertools.product(string.ascii_lowercase, repeat=3))
        with open(path, "wb") as f:
            written = 0
            while written < size:
                block = re.sub(r"(?m)^(?!<\|endoftext\|>$)(?=.)", next(tags) + " ", text) if tagged else text
                written += f.write(SHAPES[shape](block).encode())
    return path


def memory_case(text: str) -> list[str]:
    """'[SHAPE:]SIZE[:KIND[:TRAIN_BYTES]]' -> [shape, size, kind(, train_bytes)]: shipped text and BPE by default."""
    parts = text.split(":")
    if parts[0] not in SHAPES:
        parts.insert(0, "shipped")
    return parts if len(parts) > 2 else [*parts, "bpe"]


def measure(command: list, env: dict | None = None) -> dict:
    """Run `command`, polling the RSS of it and all its descendants every 20 ms; also their CPU time."""
    start, cpu = time.perf_counter(), cpu_seconds()
    process = psutil.Popen(
        [str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peaks: dict[int, int] = {}
    simultaneous = 0
    while process.poll() is None:
        total = 0
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                rss = p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            peaks[p.pid] = max(peaks.get(p.pid, 0), rss)
            total += rss
        simultaneous = max(simultaneous, total)
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{stderr}")
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(cpu_seconds() - cpu, 2),  # with the finished workers (the command waits for them)
        "peak_rss_mb_sum_of_process_peaks": round(sum(peaks.values()) / 1e6),
        "peak_rss_mb_simultaneous": round(simultaneous / 1e6),
        "largest_process_mb": round(max(peaks.values()) / 1e6),
        "processes": len(peaks),
        "stdout": stdout,
        "stderr": stderr,
    }


def prepare_command(corpus: Path, out: Path, *options) -> list:
    """The `tinygpt prepare` command line that writes `corpus` into `out`, replacing what is there."""
    return [sys.executable, "-m", "tinygpt", "prepare", corpus, "--out", out, "--force", *options]


def memory_run(corpus: Path, out: Path, kind: str, train_bytes: int | None) -> dict:
    options = ["--tokenizer", kind, *(["--vocab-size", "4096"] if kind != "char" else [])]
    options += ["--val", VALID, *(["--tokenizer.train_bytes", str(train_bytes)] if train_bytes else [])]
    result = measure(prepare_command(corpus, out, *options))
    summary = result.pop("stdout").strip().splitlines()
    command = " ".join(map(str, ["tinygpt prepare CORPUS --out OUT", *options])).replace(str(VALID), "VALID")
    return _memory_row("memory", command, corpus, result,
                       summary=[line for line in summary if line.startswith(("prepared", "  train", "  read"))])  # fmt: skip


def baseline_run(corpus: Path) -> dict:
    result = measure([sys.executable, SEED_RECIPE, corpus, VALID, "--prep-only"])
    own = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return _memory_row("memory_baseline", "python ../shared/baselines/seed_recipe.py CORPUS VALID --prep-only", corpus,
                       result, its_own_report=own)  # fmt: skip


def _memory_row(bench: str, command: str, corpus: Path, result: dict, **extra) -> dict:
    """One memory result: peak RSS of all processes, also per input byte."""
    size = corpus.stat().st_size
    del result["stderr"]
    return {
        "bench": bench,
        "command": command,
        "input_mb": round(size / 1e6),
        **result,
        "rss_bytes_per_input_byte": round(result["peak_rss_mb_sum_of_process_peaks"] * 1e6 / size, 3),
        **extra,
    }


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished descendants (those waited for)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rates(nbytes: int, work) -> tuple[float, float]:
    """(MB per wall-clock second, MB per CPU-second) of `work()`."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    work()
    return nbytes / (time.perf_counter() - wall) / 1e6, nbytes / (cpu_seconds() - cpu) / 1e6


def library_rates(documents: list[str], encode) -> tuple[float, float]:
    """A library alone, `encode(batch)` over slices of ~1M characters."""
    batches, batch, size = [], [], 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= ENCODE_SLICE_CHARS:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    return rates(sum(len(d.encode()) for d in documents), lambda: [len(encode(b)) for b in batches])  # nothing kept


def prepare_rates(corpus: Path, out: Path, tokenizer_from: Path | None = None, **overrides: str) -> tuple[float, float]:
    cfg = load_config(None, {"data.val_fraction": "0", **overrides})
    shutil.rmtree(out, ignore_errors=True)
    tokenizer = tokenizer_from and str(tokenizer_from)
    return rates(
        corpus.stat().st_size, lambda: prepare([str(corpus)], out, cfg, tokenizer_from=tokenizer, progress=False)
    )


def without_tiktoken(work: Path) -> dict[str, str]:
    """An environment in which `import tiktoken` fails, so that `tinygpt prepare` and its workers
    encode BPE with `tokenizers` alone, as before tiktoken."""
    shim = work / "no-tiktoken"
    shim.mkdir(exist_ok=True)
    (shim / "tiktoken.py").write_text('raise ImportError("hidden by bench/prepare.py")\n')
    paths = [str(shim), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def prepare_command_run(corpus: Path, out: Path, tokenizer: Path, env: dict | None) -> dict:
    """`tinygpt prepare` reusing `tokenizer`, in its own process: wall, CPU of all processes, peak RSS."""
    options = ["--tokenizer-from", tokenizer, "--tokenizer", "bpe", "--vocab-size", "4096"]
    result = measure(prepare_command(corpus, out, *options), env=env)
    hidden = "BPE encoding uses tokenizers" in result.pop("stderr")
    if hidden != (env is not None):
        raise SystemExit(f"the BPE engine was not the one meant (tiktoken hidden: {env is not None})")
    size = corpus.stat().st_size
    return {
        "wall": size / result["wall_s"] / 1e6,
        "cpu": size / result["cpu_s"] / 1e6,
        "rss": result["peak_rss_mb_sum_of_process_peaks"],
    }


def bpe_throughput(corpus: Path, work: Path, repeats: int) -> None:
    """`tinygpt prepare` with `tokenizers` (tiktoken hidden) and with tiktoken, interleaved, and each
    library alone with all cores; the tokenizer is trained once, by the first run."""
    from tokenizers import Tokenizer

    from tinygpt.tokenizers import tiktoken_twin

    with_training = prepare_rates(
        corpus, work / "tp-trained", **{"tokenizer.kind": "bpe", "tokenizer.vocab_size": "4096"}
    )
    trained = tokenizer_dir(work / "tp-trained")
    library = Tokenizer.from_file(str(trained / "bpe.json"))
    twin, reason = tiktoken_twin(library)
    if twin is None:
        raise SystemExit(f"tiktoken cannot encode this tokenizer: {reason}")
    libraries = {
        "tokenizers_encode_batch_fast": lambda batch: library.encode_batch_fast(batch, add_special_tokens=False),
        "tiktoken_encode_ordinary_batch": lambda batch: twin.encode_ordinary_batch(batch, num_threads=available_cpus()),
    }
    documents = split_documents(corpus.read_text(encoding="utf-8"))
    library_runs = {
        name: [library_rates(documents, encode) for _ in range(repeats)] for name, encode in libraries.items()
    }
    del documents
    engines = {"tokenizers": without_tiktoken(work), "tiktoken": None}
    runs = {name: [] for name in engines}
    for _ in range(repeats):  # interleaved, so both see the same machine
        for name, env in engines.items():
            runs[name].append(prepare_command_run(corpus, work / "tp-bpe", trained, env))
    best = {name: max(r["cpu"] for r in rs) for name, rs in runs.items()}
    median = {name: float(np.median([r["cpu"] for r in rs])) for name, rs in runs.items()}
    emit(
        {
            "bench": "throughput_bpe",
            "input_mb": round(corpus.stat().st_size / 1e6),
            "cores": available_cpus(),
            **{f"{name}_mb_per_cpu_s": [round(c, 2) for _, c in r] for name, r in library_runs.items()},
            **{f"prepare_{name}_mbps_wall": [round(r["wall"], 2) for r in rs] for name, rs in runs.items()},
            **{f"prepare_{name}_mb_per_cpu_s": [round(r["cpu"], 2) for r in rs] for name, rs in runs.items()},
            **{f"prepare_{name}_peak_rss_mb": [r["rss"] for r in rs] for name, rs in runs.items()},
            "speedup_per_cpu_s_best": round(best["tiktoken"] / best["tokenizers"], 3),
            "speedup_per_cpu_s_median": round(median["tiktoken"] / median["tokenizers"], 3),
            "prepare_with_tokenizer_training_mbps_wall": round(with_training[0], 2),
        }
    )


def char_throughput(corpus: Path, work: Path, repeats: int) -> None:
    runs = [prepare_rates(corpus, work / "tp-char", **{"tokenizer.kind": "char"}) for _ in range(repeats)]
    cli = measure(prepare_command(corpus, work / "tp-char", "--tokenizer", "char"))
    emit(
        {
            "bench": "throughput_char",
            "input_mb": round(corpus.stat().st_size / 1e6),
            "prepare_mbps_wall": [round(w, 1) for w, _ in runs],
            "prepare_mb_per_cpu_s": [round(c, 1) for _, c in runs],
            "cli_wall_s_including_startup": cli["wall_s"],
            "cli_mbps_including_startup": round(corpus.stat().st_size / cli["wall_s"] / 1e6, 1),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="targets", help="memory cases [SHAPE:]SIZE[:KIND[:TRAIN_BYTES]],... ('' for none)")
    parser.add_argument("--bpe-size", default="100M", help="corpus size of the BPE throughput runs")
    parser.add_argument("--char-size", default="100M", help="corpus size of the char throughput runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", help="where corpora and outputs go (default: a temporary folder, removed)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    cases = [memory_case(case) for case in (TARGETS if args.sizes == "targets" else args.sizes).split(",") if case]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tinygpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    emit({"bench": "machine", "cores": available_cpus(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)})
    baseline = not args.skip_baseline
    try:
        for i, (shape, size, kind, *train_bytes) in enumerate(cases):
            corpus = make_corpus(work, parse_size(size), shape, tagged=True)
            emit({"shape": shape, **memory_run(corpus, work / "prepared", kind, parse_size(train_bytes[0]) if train_bytes else None)})
            if shape == "shipped" and baseline:
                emit(baseline_run(corpus))
                baseline = False
            if all(later[:2] != [shape, size] for later in cases[i + 1 :]):  # the next cases need another corpus
                corpus.unlink()
        if args.bpe_size:
            bpe_throughput(make_corpus(work, parse_size(args.bpe_size)), work, args.repeats)
        if args.char_size:
            char_throughput(make_corpus(work, parse_size(args.char_size)), work, args.repeats)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
