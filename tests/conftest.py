"""Shared fixtures: the real TinyStories sample, small prepared folders built from it by the real
`prepare`, and a runner for the `tinygpt` command in subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tinygpt.config import load_config
from tinygpt.documents import split_documents
from tinygpt.prepare import prepare

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINYSTORIES = SHARED / "data" / "tinystories"
SEPARATOR = "<|endoftext|>\n"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread: more only contend for the cores (subprocesses set their own)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def train_txt() -> Path:
    """The shared TinyStories training sample: 2,316 stories, 2,094,605 bytes."""
    return TINYSTORIES / "train.txt"


@pytest.fixture(scope="session")
def valid_txt() -> Path:
    """The shared validation sample: 1,000 stories, 803,232 bytes, with characters train.txt lacks."""
    return TINYSTORIES / "valid.txt"


@pytest.fixture(scope="session")
def train_docs(train_txt) -> list[str]:
    """The documents of train.txt, each with its final newline."""
    return split_documents(train_txt.read_text(encoding="utf-8"))


class TinyGPTCommand:
    """Runs `python -m tinygpt ...` in subprocesses, as a user would; run_all starts several at once,
    since every start pays for importing the whole package."""

    def run(self, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tinygpt", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)

    def run_all(self, commands: dict[str, list]) -> dict[str, subprocess.CompletedProcess]:
        with ThreadPoolExecutor(min(len(commands), 8)) as pool:
            futures = {name: pool.submit(self.run, *args) for name, args in commands.items()}
            return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="session")
def tinygpt_command() -> TinyGPTCommand:
    return TinyGPTCommand()


def one_line(err: str) -> str:
    """The one line a command leaves on stderr, as a terminal shows it (a progress bar that a carriage
    return wipes is not a line); fails the test on a traceback or any other line."""
    assert "Traceback" not in err, err
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll `condition` every 10 ms while the process runs; fail the test when it ends first or the time is up."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended before {what}:\n{proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.01)


def _stories(name: str, n_bytes: int) -> str:
    """The first stories of a TinyStories file, about n_bytes of them, cut where a story ends."""
    text = (TINYSTORIES / name).read_text(encoding="utf-8")
    return text[: text.index(SEPARATOR, n_bytes) + len(SEPARATOR)]


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> tuple[Path, Path]:
    """About 200 KB of training stories and 40 KB of validation stories as .txt files."""
    folder = tmp_path_factory.mktemp("text")
    train, valid = folder / "train.txt", folder / "valid.txt"
    train.write_text(_stories("train.txt", 200_000), encoding="utf-8")
    valid.write_text(_stories("valid.txt", 40_000), encoding="utf-8")
    return train, valid


def _prepared(tmp_path_factory, text_files, name: str, **overrides: str) -> Path:
    train, valid = text_files
    out = tmp_path_factory.mktemp("prepared") / name
    cfg = load_config(None, {"data.workers": "1", **overrides})
    prepare([str(train)], out, cfg, val=str(valid), progress=False)
    return out


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, text_files) -> Path:
    """Char-level shards: about 200k training tokens in four shards, 40k validation tokens."""
    return _prepared(tmp_path_factory, text_files, "char", **{"tokenizer.kind": "char", "data.shard_tokens": "60000"})


# Characters the generated texts of the property tests draw on besides TinyStories' own: multi-byte
# ones, a tab and a literal separator inside a line. The char tokenizer of `tokenizer_folders`
# knows them; UNSEEN are characters no tokenizer here was trained on.
EXTRA_CHARS = "é日本😀\t<|>"
UNSEEN = "Ж🐶"


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory, train_docs) -> dict[str, Path]:
    """Small tokenizers of every kind, saved: char (train.txt's characters plus EXTRA_CHARS), BPE with 300
    and SentencePiece with 400 tokens (its 256 bytes, then characters first) trained on the first 200 stories."""
    from tinygpt.tokenizers import train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizers")
    texts = {"char": [*train_docs, EXTRA_CHARS], "bpe": train_docs[:200], "sentencepiece": train_docs[:200]}
    for kind, docs in texts.items():
        train_tokenizer(kind, docs, 400 if kind == "sentencepiece" else 300).save(folder / kind)
    return {kind: folder / kind for kind in texts}


@pytest.fixture(scope="session")
def bpe_data(tmp_path_factory, text_files) -> Path:
    """The same text with a 300-token byte-level BPE: another tokenizer, for mismatch tests."""
    return _prepared(tmp_path_factory, text_files, "bpe", **{"tokenizer.kind": "bpe", "tokenizer.vocab_size": "300"})


@pytest.fixture(scope="session")
def sentencepiece_data(tmp_path_factory, text_files) -> Path:
    """The same text with a 512-token SentencePiece vocabulary."""
    overrides = {"tokenizer.kind": "sentencepiece", "tokenizer.vocab_size": "512"}
    return _prepared(tmp_path_factory, text_files, "sentencepiece", **overrides)


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
    """Texts a tokenizer gets wrong first: multi-byte characters, whitespace runs, digits, literal special tokens."""
    return [
        "Once upon a time, there was a little girl named Lily.",
        "line one\nline two\n\n\nafter blank lines\n",
        "runs of  spaces   and    more     \t\ttabs\t and trailing   ",
        " leading space",
        "naïve café, Zürich — “quotes” ‘single’ …",
        "emoji 🙂👍🏽👨‍👩‍👧, CJK 家族, Cyrillic Привет",
        "literal <|endoftext|> inside text, and <unk>, <0x41> and ▁ too",
        "digits 0123456789 3.14159 1,000,000",
        "it's they're we've I'm you'll he'd 2026's",
        "",
        "a" * 300,
    ]
