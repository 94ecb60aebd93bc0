"""`tinygpt prepare`: documents and their bytes, shards equal to a direct encoding, the manifest,
validation splits, input formats, documents longer than a piece, the tokenizer's bounded sample,
parallel determinism, interrupted runs, a generated-corpus property test and a table of bad inputs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygpt import cli, documents, shards
from tinygpt.common import TinyGPTError
from tinygpt.config import config_from_dict, load_config
from tinygpt.documents import normalize_line_endings, split_documents
from tinygpt.prepare import Chunk, Part, TokenizerSample, held_out, prepare
from tinygpt.shards import read_manifest
from tinygpt.tokenizers import EOT_SEPARATOR, load_tokenizer

KINDS = ("char", "bpe", "sentencepiece")


def config(**overrides: str):
    """A config with one worker and the given overrides (keyword names spell the dot as "__")."""
    return load_config(None, {"data.workers": "1", **{k.replace("__", "."): v for k, v in overrides.items()}})


def run(inputs, out: Path, val=None, tokenizer_from=None, force=False, **overrides: str) -> dict:
    """prepare() as the command calls it, with paths for arguments."""
    inputs = [str(i) for i in (inputs if isinstance(inputs, list) else [inputs])]
    val, tokenizer_from = (str(p) if p else None for p in (val, tokenizer_from))
    return prepare(inputs, out, config(**overrides), val=val, tokenizer_from=tokenizer_from, force=force, progress=False)


def tokens(folder: Path, split: str) -> np.ndarray:
    manifest = read_manifest(folder)
    dtype = np.dtype(manifest["dtype"])
    shards = [np.fromfile(folder / s["file"], dtype=dtype) for s in manifest["splits"][split]["shards"]]
    return np.concatenate(shards) if shards else np.zeros(0, dtype)


def stream(tok, docs: list[str]) -> list[int]:
    """The token stream of documents that each end with a separator line: end-of-text first (t0), then each
    document's ids and its end-of-text token."""
    return [tok.eot_id, *(i for doc in docs for i in [*tok.encode(doc), tok.eot_id])]


def leftovers(out: Path) -> list[Path]:
    """Temporary or set-aside folders of `out` that a run left behind."""
    return sorted(out.parent.glob(f".{out.name}.*"))


def write_txt(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(doc + EOT_SEPARATOR for doc in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe_prepared(tmp_path_factory, train_txt, valid_txt) -> Path:
    """train.txt with valid.txt as validation, a 300-token BPE, two worker processes."""
    out = tmp_path_factory.mktemp("bpe") / "prepared"
    run(train_txt, out, val=valid_txt, tokenizer__vocab_size="300", data__workers="2")
    return out


# ---------------------------------------------------------------- documents held out for validation


def test_held_out_documents_are_spread_evenly():
    picked = np.flatnonzero(held_out(np.arange(1000), 0.01))
    assert len(picked) == 10
    assert np.diff(picked).tolist() == [100] * 9
    assert np.count_nonzero(held_out(np.arange(2316), 0.1)) == 231


# ---------------------------------------------------------------- shards and manifest


def test_manifest_figures(bpe_prepared, train_txt, valid_txt):
    manifest = read_manifest(bpe_prepared)
    tok = load_tokenizer(bpe_prepared / "tokenizer")
    assert manifest["format_version"] == shards.MANIFEST_VERSION
    assert manifest["dtype"] == "uint16"
    assert (manifest["vocab_size"], manifest["eot_id"], manifest["tokenizer_kind"]) == (300, tok.eot_id, "bpe")
    assert manifest["tokenizer_hash"] == tok.hash
    assert manifest["input"] == {
        "files": 2, "bytes": train_txt.stat().st_size + valid_txt.stat().st_size, "line_endings": "normalize",
        "cr_line_endings": 0, "boms": 0, "char_cuts": 0, "notes": [],
    }  # fmt: skip
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["documents"], val["documents"]) == (2316, 1000)
    # S, what bits per byte divides by, is each file's size
    assert (train["source_bytes"], val["source_bytes"]) == (train_txt.stat().st_size, valid_txt.stat().st_size)
    assert (train["unknown"], val["unknown"], train["empty_documents"]) == (0, 0, 0)
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"]) == tokens(bpe_prepared, split).size
        for shard in info["shards"]:
            assert (bpe_prepared / shard["file"]).stat().st_size == 2 * shard["tokens"]
    saved = config_from_dict(tomllib.loads((bpe_prepared / "config.toml").read_text()))
    assert saved == config(tokenizer__vocab_size="300", data__workers="2")
    assert leftovers(bpe_prepared) == []


def test_shards_equal_a_direct_encoding(bpe_prepared, train_txt, valid_txt):
    tok = load_tokenizer(bpe_prepared / "tokenizer")
    for split, path in (("train", train_txt), ("val", valid_txt)):
        text = path.read_text(encoding="utf-8")
        assert tokens(bpe_prepared, split).tolist() == stream(tok, split_documents(text))
        assert tok.decode(tokens(bpe_prepared, split)) == EOT_SEPARATOR + text  # t0, then the file


def test_one_and_two_workers_write_identical_shards(bpe_prepared, train_txt, valid_txt, tmp_path):
    out = tmp_path / "one"
    run(train_txt, out, val=valid_txt, tokenizer_from=bpe_prepared, tokenizer__vocab_size="300", data__workers="1")
    assert read_manifest(out) == read_manifest(bpe_prepared)
    for shard in sorted(p.name for p in bpe_prepared.glob("*.bin")):
        assert (out / shard).read_bytes() == (bpe_prepared / shard).read_bytes()


def test_many_shards_of_the_configured_size(train_txt, train_docs, tmp_path):
    manifest = run(train_txt, tmp_path / "out", tokenizer__kind="char", data__shard_tokens="300000", data__val_fraction="0")
    shards = manifest["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train_{i:06d}.bin" for i in range(len(shards))]
    assert len(shards) == 7 and all(s["tokens"] == 300_000 for s in shards[:-1])
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tokens(tmp_path / "out", "train").tolist() == [tok.eot_id, *tok.encode_docs(train_docs)[0].tolist()]
    assert manifest["splits"]["val"] == {
        "shards": [], "tokens": 0, "documents": 0, "empty_documents": 0, "source_bytes": 0, "unknown": 0,
    }  # fmt: skip


# ---------------------------------------------------------------- validation split


@pytest.mark.parametrize("chunk", [documents.CHUNK_BYTES, 300])
def test_validation_by_fraction_holds_out_whole_documents(chunk, train_txt, train_docs, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", chunk)  # 300: every story is cut into pieces, held out whole
    out = tmp_path / "out"
    manifest = run(train_txt, out, tokenizer__kind="char", data__val_fraction="0.1")
    is_val = held_out(np.arange(len(train_docs)), 0.1)
    val_docs = [doc for doc, v in zip(train_docs, is_val) if v]
    train_docs_left = [doc for doc, v in zip(train_docs, is_val) if not v]
    splits = manifest["splits"]
    assert (splits["val"]["documents"], splits["train"]["documents"]) == (231, 2085)
    assert splits["val"]["source_bytes"] == sum(len(doc.encode()) + 14 for doc in val_docs)
    assert splits["train"]["source_bytes"] + splits["val"]["source_bytes"] == train_txt.stat().st_size
    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(tokens(out, "train")) == EOT_SEPARATOR + "".join(doc + EOT_SEPARATOR for doc in train_docs_left)
    # The tokenizer learnt its characters from the training documents only; held-out documents
    # have a few more ('«', 'ñ', ...), which are unknown to it.
    assert set(tok.chars) == set("".join(train_docs_left))
    val_text = "".join(doc + EOT_SEPARATOR for doc in val_docs)
    unseen = set(val_text) - set(tok.chars) - set(EOT_SEPARATOR)
    assert "«" in unseen
    assert tok.decode(tokens(out, "val")) == EOT_SEPARATOR + "".join("\ufffd" if c in unseen else c for c in val_text)
    assert manifest["splits"]["val"]["unknown"] == sum(val_text.count(c) for c in unseen)


def test_validation_file_and_unknown_characters(train_txt, valid_txt, tmp_path):
    manifest = run(train_txt, tmp_path / "out", val=valid_txt, tokenizer__kind="char")
    text = valid_txt.read_text(encoding="utf-8")
    unseen = sum(text.count(c) for c in "/9\u200a")  # characters train.txt lacks
    assert manifest["splits"]["val"]["unknown"] == unseen > 0
    assert manifest["splits"]["train"]["unknown"] == 0
    assert manifest["splits"]["val"]["documents"] == 1000


# ---------------------------------------------------------------- input formats


def test_jsonl_and_json_inputs_match_the_text_file(bpe_prepared, train_docs, tmp_path):
    docs = train_docs[:300]
    txt = write_txt(tmp_path / "stories.txt", docs)
    jsonl = tmp_path / "stories.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "story": d}) + "\n" for i, d in enumerate(docs)) + "\n")
    array = tmp_path / "stories.json"  # like TinyStories' JSON shards: more fields, indented
    array.write_text(json.dumps([{"story": d, "instruction": {"words": ["a", "b"]}} for d in docs], indent=2))
    results = {}
    for path in (txt, jsonl, array):
        out = tmp_path / f"out-{path.suffix[1:]}"
        run(path, out, tokenizer_from=bpe_prepared, data__text_field="story", data__val_fraction="0")
        results[path.suffix] = (read_manifest(out)["splits"], tokens(out, "train").tolist())
    assert results[".txt"][1] and results[".txt"] == results[".jsonl"] == results[".json"]


def test_folder_and_glob_inputs(bpe_prepared, train_docs, tmp_path):
    docs = train_docs[:90]
    whole = write_txt(tmp_path / "whole.txt", docs)
    for i in range(3):
        write_txt(tmp_path / "parts" / f"part{i}.txt", docs[30 * i : 30 * (i + 1)])
    (tmp_path / "parts" / "notes.md").write_text("not an input of the folder")
    outs = {"whole": whole, "folder": tmp_path / "parts", "glob": tmp_path / "parts" / "*.txt"}
    for name, spec in outs.items():
        run(spec, tmp_path / name, tokenizer_from=bpe_prepared, data__val_fraction="0")
    expected = tokens(tmp_path / "whole", "train").tolist()
    assert tokens(tmp_path / "folder", "train").tolist() == expected
    assert tokens(tmp_path / "glob", "train").tolist() == expected


def test_a_document_cut_inside_its_leading_blank_lines_is_not_empty(tokenizer_folders, tmp_path, monkeypatch):
    """A cut that leaves a document's first piece only blank lines (found by hypothesis): its text
    arrives in the next pieces, so it is neither counted empty nor refused as "no documents"."""
    monkeypatch.setattr(documents, "CHUNK_BYTES", 16)  # pieces "\n\n", "aa<|endoftext|>", "\n<|endoftext|>\n"
    (tmp_path / "c.txt").write_text("\n\naa<|endoftext|>\n<|endoftext|>\n  \n\n \n<|endoftext|>\n")
    manifest = run(tmp_path / "c.txt", tmp_path / "out", tokenizer_from=tokenizer_folders["char"], tokenizer__kind="char",
                   data__val_fraction="0")  # fmt: skip
    train = manifest["splits"]["train"]
    assert (train["documents"], train["empty_documents"]) == (2, 1)  # the second, blank lines only, is empty
    decoded = load_tokenizer(tokenizer_folders["char"]).decode(tokens(tmp_path / "out", "train"))
    assert decoded == EOT_SEPARATOR + "\n\naa<|endoftext|>\n" + EOT_SEPARATOR + "  \n\n \n" + EOT_SEPARATOR


def test_files_without_a_final_separator_are_joined_by_an_end_of_text_token(tokenizer_folders, tmp_path):
    (tmp_path / "a.txt").write_text("First file,\r\nno separator at its end.")
    (tmp_path / "b.txt").write_text("\ufeffSecond file.\n<|endoftext|>\nThird document, open.\n")
    manifest = run([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "out", tokenizer_from=tokenizer_folders["bpe"],
                   data__val_fraction="0")  # fmt: skip
    tok = load_tokenizer(tokenizer_folders["bpe"])
    assert tok.decode(tokens(tmp_path / "out", "train")) == (
        EOT_SEPARATOR + "First file,\nno separator at its end." + EOT_SEPARATOR + "Second file.\n" + EOT_SEPARATOR
        + "Third document, open.\n"  # the end of the input: no end-of-text token invented
    )
    train = manifest["splits"]["train"]
    size = (tmp_path / "a.txt").stat().st_size + (tmp_path / "b.txt").stat().st_size
    assert train["source_bytes"] == size + 14  # the token between the files stands for a separator line
    assert train["documents"] == 3
    assert manifest["input"]["cr_line_endings"] == 1 and manifest["input"]["boms"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_documents_ten_times_a_piece_encode_to_the_ids_of_the_whole(kind, tokenizer_folders, train_docs, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """Cut between a word and the space, tab or newline after it, a document's parts encode to its ids."""
    monkeypatch.setattr(documents, "CHUNK_BYTES", 512)
    rng = random.Random(0)
    docs = ["".join(train_docs[i : i + 6]) for i in range(0, 60, 6)]  # about 5 KB each: ten pieces
    docs = ["".join(w + rng.choice([" ", "\t", "  ", "\n", "\t\t "]) for w in doc.split(" ")).rstrip() + "\n" for doc in docs]
    path = write_txt(tmp_path / "long.txt", docs)
    manifest = run(path, tmp_path / "out", tokenizer_from=tokenizer_folders[kind], tokenizer__kind=kind,
                   data__val_fraction="0")  # fmt: skip
    tok = load_tokenizer(tokenizer_folders[kind])
    assert tokens(tmp_path / "out", "train").tolist() == stream(tok, docs)
    assert manifest["splits"]["train"]["documents"] == len(docs) and manifest["input"]["char_cuts"] == 0


def test_the_tokenizer_is_trained_on_at_most_train_bytes(train_docs, tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 1000)
    chunks = (Chunk(0, {"train": Part([doc])}) for doc in train_docs)
    sample = list(TokenizerSample(chunks, 10_000))
    assert sum(len(t.encode()) for t in sample) <= 10_000 < sum(len(t.encode()) for t in train_docs[: len(sample) + 1])
    assert train_docs[len(sample) - 1].startswith(sample[-1])  # the last text cut to fit...
    assert sample[-1][-1] != " "  # ...before a space, tab or newline
    # one long line of a document: the char tokenizer learns only the characters of its first 500 bytes
    (tmp_path / "line.txt").write_text("abc " * 200 + "xyz " * 200)
    run(tmp_path / "line.txt", tmp_path / "out", tokenizer__kind="char", tokenizer__train_bytes="500", data__val_fraction="0")
    assert load_tokenizer(tmp_path / "out" / "tokenizer").chars == " abc"


def test_the_tokenizer_sample_stops_at_a_budget_of_long_words():
    """Words of more than 32 characters (text without whitespace) are what a BPE trainer's memory grows with."""
    words = Chunk(0, {"train": Part(["short words only here " * 50])})
    long = Chunk(0, {"train": Part(["x" * 100 + " " + "y" * 40 + " " + "z" * 32])})  # 140 characters in long words
    sample = TokenizerSample([words, long, long, long], 10**9, max_long_word_chars=250)
    assert len(list(sample)) == 3 and sample.long_words_full
    unbounded = TokenizerSample([words, long, long, long], 10**9)
    assert len(list(unbounded)) == 4 and not unbounded.long_words_full


def test_sentencepiece_trains_on_lines_longer_than_it_takes(tmp_path, train_docs):
    """SentencePiece skips lines longer than its max_sentence_length; they are cut to fit instead."""
    path = tmp_path / "long-lines.txt"
    path.write_text(" ".join(doc.replace("\n", " ") for doc in train_docs[:200]))  # one 180 KB line
    manifest = run(path, tmp_path / "out", tokenizer__kind="sentencepiece", tokenizer__vocab_size="400",
                   data__val_fraction="0")  # fmt: skip
    assert manifest["vocab_size"] == 400
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tok.decode(tokens(tmp_path / "out", "train")) == EOT_SEPARATOR + path.read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_undecodable_text_becomes_replacement_characters_in_every_reader(kind, tokenizer_folders, tmp_path):
    files = {
        "a.txt": b"A caf\xe9 sold tea.\n",
        "b.jsonl": b'{"text": "A caf\xe9 sold tea."}\n{"text": "half a pair \\ud800."}\n',
        "c.json": b'[{"text": "A caf\xe9 sold tea."}, {"text": "half a pair \\udfff."}]',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    run([tmp_path / name for name in files], tmp_path / "out", tokenizer_from=tokenizer_folders[kind], tokenizer__kind=kind,
        data__val_fraction="0", data__errors="replace")  # fmt: skip
    text = load_tokenizer(tokenizer_folders[kind]).decode(tokens(tmp_path / "out", "train"))
    assert text.count("caf\ufffd sold") == 3 and text.count("half a pair \ufffd.") == 2


def test_summary_says_what_was_read(tokenizer_folders, train_docs, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_txt(tmp_path / "in" / "a.txt", train_docs[:5])
    (tmp_path / "in" / "b.TXT").write_bytes(b"\xef\xbb\xbfOne.\r\nTwo.\r\n<|endoftext|>\r\n")
    (tmp_path / "in" / "c.txt.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "notes.md").write_text("Read as plain text.\n")
    argv = ["prepare", str(tmp_path / "in"), str(tmp_path / "notes.md"), str(tmp_path / "in" / "a.txt"), "--out",
            str(tmp_path / "out"), "--tokenizer-from", str(tokenizer_folders["char"]), "--tokenizer", "char",
            "--val", str(tmp_path / "in" / "a.txt")]  # fmt: skip
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  read: 3 \\r\\n or \\r line endings converted to \\n; 1 byte-order mark(s) dropped" in lines
    assert f"  skipped: {tmp_path / 'in' / 'c.txt.gz'}: .gz is not read; decompress it first" in lines
    assert f"  {tmp_path / 'notes.md'} is read as plain text (.md is not .txt, .jsonl or .json)" in lines
    assert f"  {tmp_path / 'in' / 'a.txt'} is a validation file: left out of training" in lines
    assert any(line.startswith("  train: 2 documents,") for line in lines)  # b.TXT's and notes.md's


def test_summary_counts_the_cuts_at_a_character_boundary(tokenizer_folders, tmp_path, capsys, monkeypatch):
    """One document of 3.5 pieces without whitespace: three cuts, and the summary says cuts, not documents."""
    monkeypatch.setattr(documents, "CHUNK_BYTES", 1000)
    (tmp_path / "line.txt").write_text("abcdefghij" * 350)
    argv = ["prepare", str(tmp_path / "line.txt"), "--out", str(tmp_path / "out"), "--tokenizer-from",
            str(tokenizer_folders["char"]), "--tokenizer", "char", "--data.val_fraction=0", "--workers", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  train: 1 documents,") for line in lines)
    assert any(line.startswith("  read: 3 cut(s) inside documents at a character boundary") for line in lines), lines


# ---------------------------------------------------------------- the output folder


def test_a_failure_midway_leaves_nothing(train_txt, tmp_path, monkeypatch):
    def broken_write(self, tokens):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.ShardWriter, "write", broken_write)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        run(train_txt, out, tokenizer__kind="char")
    assert not out.exists() and leftovers(out) == []


def test_existing_output_is_replaced_only_with_force(bpe_prepared, train_docs, tmp_path):
    source = write_txt(tmp_path / "s.txt", train_docs[:50])
    out = tmp_path / "out"
    run(source, out, tokenizer_from=bpe_prepared, data__val_fraction="0")
    with pytest.raises(TinyGPTError, match="already holds prepared data: use --force"):
        run(source, out, tokenizer__kind="char", data__val_fraction="0")
    manifest = run(source, out, force=True, tokenizer__kind="char", data__val_fraction="0")
    assert read_manifest(out) == manifest and manifest["tokenizer_kind"] == "char"
    assert leftovers(out) == []
    other = tmp_path / "other"
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("not prepared data")
    with pytest.raises(TinyGPTError, match="is not a prepared-data folder"):
        run(source, other, force=True, tokenizer__kind="char", data__val_fraction="0")
    assert (other / "keep.txt").exists()


def test_killed_or_interrupted_prepare_leaves_nothing_finished(bpe_prepared, train_txt, tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(train_txt.read_bytes() * 12)  # 25 MB: long enough to stop midway
    runs = {}
    for name, sig, workers in (("killed", signal.SIGKILL, "1"), ("interrupted", signal.SIGINT, "2")):
        command = [sys.executable, "-m", "tinygpt", "prepare", big, "--out", tmp_path / name]
        process = subprocess.Popen([*command, "--tokenizer-from", bpe_prepared, "--workers", workers], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        runs[name] = (process, sig, tmp_path / name)
    waiting, deadline = dict(runs), time.monotonic() + 120
    while waiting:  # signal each run as soon as it has written its first shard
        for name, (process, sig, _) in list(waiting.items()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            if list(tmp_path.glob(f".{name}.*.tmp/train_000000.bin")):
                os.kill(process.pid, sig)
                del waiting[name]
        time.sleep(0.02)
    for process, sig, out in runs.values():
        _, stderr = process.communicate(timeout=60)
        assert not out.exists(), (process.returncode, stderr)
        assert not list(tmp_path.glob(f".{out.name}*/{shards.MANIFEST}"))
        if sig == signal.SIGINT:  # a clean stop removes its temporary folder too
            assert process.returncode == 130 and stderr.strip() == "tinygpt prepare: interrupted"
            assert leftovers(out) == []


def test_prepare_never_imports_torch(train_docs, tmp_path):
    """`tinygpt prepare` runs without torch in its process, so it starts fast and stays small."""
    source = write_txt(tmp_path / "s.txt", train_docs[:50])
    argv = ["prepare", str(source), "--out", str(tmp_path / "out"), "--tokenizer", "char", "--data.val_fraction", "0"]
    code = f"import sys; from tinygpt.cli import main; rc = main({argv!r}); print(rc, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.splitlines()[-1] == "0 False", result.stdout + result.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


# ---------------------------------------------------------------- a generated corpus, in every format

SEP = "<|endoftext|>"
LINE_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])
WORDS = st.sampled_from(["a", "b", "Once", " ", "  ", "\t", ".", "é", "日本", "😀", SEP])  # all in EXTRA_CHARS or TinyStories


@st.composite
def corpora(draw):
    """Documents (each a list of lines with their line endings, so separators can follow them), the line
    ending of each separator line ("" at the end of the file: none; None: no last separator), and a BOM."""
    lines = st.tuples(st.lists(WORDS, max_size=5).map("".join).map(lambda line: line + "x" if line == SEP else line), LINE_ENDINGS)
    docs = draw(st.lists(st.lists(lines, max_size=4).map(lambda doc: "".join(a + b for a, b in doc)), max_size=6))
    endings = draw(st.lists(LINE_ENDINGS, min_size=len(docs), max_size=len(docs)))
    if docs:
        endings[-1] = draw(st.sampled_from(["\n", "\r\n", "\r", "", None]))
    for i in range(len(docs) - 1):  # a "\r" separator ending and a document starting with "\n" read as one "\r\n"
        if endings[i] == "\r" and docs[i + 1].startswith("\n"):
            endings[i] = "\n"
    return docs, endings, draw(st.booleans())


def write_corpus(folder: Path, fmt: str, docs: list[str], endings: list, bom: bool) -> Path:
    path = folder / f"corpus.{fmt}"
    if fmt == "txt":
        text = "".join(doc + (SEP + end if end is not None else "") for doc, end in zip(docs, endings))
    elif fmt == "jsonl":
        text = "".join(json.dumps({"text": doc}) + "\n" for doc in docs)
    else:
        text = json.dumps([{"text": doc} for doc in docs])
    path.write_bytes(b"\xef\xbb\xbf" * bom + text.encode())
    return path


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus=corpora(), fmt=st.sampled_from(["txt", "jsonl", "json"]), chunk=st.sampled_from([16, 23, 40, 1 << 20]))
def test_generated_corpus_comes_back_as_its_normalised_documents(kind, corpus, fmt, chunk, tokenizer_folders):
    """Whatever the pieces the reader cuts (tiny ones here: every kind of cut), decoding gives the documents back."""
    docs, endings, bom = corpus
    tok = load_tokenizer(tokenizer_folders[kind])
    saved, documents.CHUNK_BYTES = documents.CHUNK_BYTES, chunk  # (hypothesis forbids the monkeypatch fixture)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_corpus(Path(tmp), fmt, docs, endings, bom)
            if not path.stat().st_size:
                return
            try:
                manifest = run(path, Path(tmp) / "out", tokenizer_from=tokenizer_folders[kind], tokenizer__kind=kind,
                               data__val_fraction="0")  # fmt: skip
            except TinyGPTError as e:  # nothing to train on is the one refusal a well-formed corpus can meet
                assert "no documents in" in str(e) and all(not doc.strip() for doc in docs)
                return
            decoded = tok.decode(tokens(Path(tmp) / "out", "train"))
    finally:
        documents.CHUNK_BYTES = saved
    ended = [fmt != "txt" or end is not None for end in endings]
    expected = EOT_SEPARATOR + "".join(normalize_line_endings(d) + EOT_SEPARATOR * e for d, e in zip(docs, ended))
    assert decoded == expected
    train = manifest["splits"]["train"]
    if fmt == "txt":  # a last document that is empty and has no separator line is not in the file...
        written = len(docs) - bool(docs and endings[-1] is None and not docs[-1])
        assert train["documents"] == written or (written == 0 and bom and train["documents"] == 1)  # ...but a BOM is
    else:
        assert train["documents"] == len(docs)
    if fmt == "txt":
        assert train["source_bytes"] == path_size(docs, endings, bom)
    else:
        assert train["source_bytes"] == sum(len(doc.encode()) + 14 for doc in docs)


def path_size(docs: list[str], endings: list, bom: bool) -> int:
    return 3 * bom + sum(len(doc.encode()) + (len(SEP) + len(end) if end is not None else 0) for doc, end in zip(docs, endings))


# ---------------------------------------------------------------- bad input: one line, an exit code, no output

SOME_STORIES = "".join(f"Story {i}: a cat sat on a mat.\n{SEP}\n" for i in range(3))

BAD_INPUTS = {  # case -> (files to write, arguments after `prepare`, exit code, words of its one-line error)
    "missing path": ({}, ["{d}/nope.txt"], 2, "input not found:"),
    "empty file": ({"empty.txt": b""}, ["{d}/empty.txt"], 2, "the input is empty:"),
    "only separators and whitespace": (
        {"s.txt": f"{SEP}\r\n \n{SEP}\n\t\r\n{SEP}".encode()}, ["{d}/s.txt"], 2, "no documents in"),
    "txt not UTF-8, char": (
        {"latin1.txt": f"Once upon a time.\n{SEP}\nA caf\xe9.\n".encode("latin-1")}, ["{d}/latin1.txt", "--tokenizer", "char"],
        2, "latin1.txt is not UTF-8: byte 0xe9 at offset 37 (use --errors replace"),
    "txt not UTF-8 met while encoding, 2 workers": (
        {"late.txt": SOME_STORIES.encode() * 18000 + b"caf\xe9\n"}, ["{d}/late.txt", "--tokenizer-from", "{bpe}", "--workers", "2"],
        2, f"late.txt is not UTF-8: byte 0xe9 at offset {len(SOME_STORIES) * 18000 + 3}"),
    "jsonl not UTF-8, bpe": (
        {"s.jsonl": b'{"text": "fine"}\n{"text": "caf\xe9"}\n'}, ["{d}/s.jsonl"], 2, "s.jsonl is not UTF-8: byte 0xe9 at offset 30"),
    "json not UTF-8, sentencepiece": (
        {"s.json": b'[{"text": "caf\xe9"}]'}, ["{d}/s.json", "--tokenizer", "sentencepiece"],
        2, "s.json is not UTF-8: byte 0xe9 at offset 14"),
    "jsonl lone surrogate, sentencepiece": (
        {"s.jsonl": b'{"text": "a \\ud800"}\n'}, ["{d}/s.jsonl", "--tokenizer", "sentencepiece"],
        2, "s.jsonl line 1: its text field has a lone surrogate U+D800 at character 2"),
    "json lone surrogate, char": (
        {"s.json": b'[{"text": "fine"}, {"text": "\\udc00"}]'}, ["{d}/s.json", "--tokenizer", "char"],
        2, "s.json item 1: its text field has a lone surrogate U+DC00 at character 0"),
    "json field is a number": ({"s.json": b'[{"text": 5}]'}, ["{d}/s.json"], 2, "s.json item 0: its text field 'text' is a number"),
    "jsonl field is null": ({"s.jsonl": b'{"text": null}\n'}, ["{d}/s.jsonl"], 2, "s.jsonl line 1: its text field 'text' is null"),
    "json field is a list": ({"s.json": b'[{"text": ["a"]}]'}, ["{d}/s.json"], 2, "item 0: its text field 'text' is a list"),
    "jsonl without the field": (
        {"s.jsonl": b'{"story": "x"}\n'}, ["{d}/s.jsonl"], 2, "s.jsonl line 1 has no text field 'text' (set data.text_field"),
    "jsonl not JSON": ({"s.jsonl": b'{"text": "fine"}\n{"text": oops}\n'}, ["{d}/s.jsonl"], 2, "s.jsonl line 2: not valid JSON"),
    "json object, not an array": ({"s.json": b'{"text": "x"}'}, ["{d}/s.json"], 2, "s.json is not a JSON array of objects"),
    "jsonl number of 5000 digits": (
        {"s.jsonl": b'{"text": "fine"}\n{"text": "x", "id": ' + b"1" * 5000 + b"}\n"}, ["{d}/s.jsonl"],
        2, "s.jsonl line 2: its JSON holds a number too long to read (more than 4,300 digits)"),
    "json nested 100000 deep, sentencepiece": (
        {"s.json": b'[{"text": "x", "y": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]"}, ["{d}/s.json", "--tokenizer", "sentencepiece"],
        2, "s.json item 0: its JSON is nested too deeply to read"),
    "json cut short": ({"s.json": b'[{"text": "a"}, {"text": '}, ["{d}/s.json"], 2, "s.json is not valid JSON (it ends too early"),
    "compressed file named": ({"data.txt.gz": b"\x1f\x8b\x08"}, ["{d}/data.txt.gz"], 2, ".gz is not read; decompress it first"),
    "folder of files it does not read": (
        {"in/a.gz": b"\x1f\x8b", "in/b.csv": b"a,b"}, ["{d}/in"], 2, "no .txt, .jsonl or .json files in"),
    "validation is the only input": (
        {"v.txt": SOME_STORIES.encode()}, ["{d}/v.txt", "--val", "{d}/v.txt"], 2, "every input is also a validation file"),
    "too few documents to hold out": (
        {"few.txt": SOME_STORIES.encode()}, ["{d}/few.txt", "--tokenizer", "char"], 2, "3 documents are too few to hold out"),
    "bpe vocabulary too large": (
        {"few.txt": SOME_STORIES.encode()}, ["{d}/few.txt", "--vocab-size", "60000"], 2, "supports a BPE vocabulary of only"),
    "sentencepiece vocabulary too large": (
        {"few.txt": SOME_STORIES.encode()}, ["{d}/few.txt", "--tokenizer", "sentencepiece", "--vocab-size", "60000"],
        2, "sentencepiece could not train a vocabulary of 60000: Vocabulary size too high"),
    "sentencepiece vocabulary below the characters": (
        {"cjk.txt": "".join(chr(0x4E00 + i) + chr(0x4E00 + (i * 7) % 500) for i in range(500)).encode()},
        ["{d}/cjk.txt", "--tokenizer", "sentencepiece", "--vocab-size", "400", "--data.val_fraction=0"],
        2, "it keeps a token for every character of the text (character_coverage 1.0), which takes 758 tokens with its own"),
    "tokenizer of the wrong kind": (
        {"few.txt": SOME_STORIES.encode()}, ["{d}/few.txt", "--tokenizer-from", "{bpe}", "--tokenizer", "char"],
        2, "is of kind 'bpe', expected 'char'"),
    "tokenizer-from is not a tokenizer": (
        {"few.txt": SOME_STORIES.encode(), "nothing/x": b""}, ["{d}/few.txt", "--tokenizer-from", "{d}/nothing"],
        2, "no tokenizer in"),
    "line endings setting": (
        {"few.txt": SOME_STORIES.encode()}, ["{d}/few.txt", "--data.line_endings", "crlf"],
        2, "config: data.line_endings must be 'normalize' or 'keep'"),
}  # fmt: skip
IN_SUBPROCESSES = ("missing path", "txt not UTF-8, char", "json lone surrogate, char", "sentencepiece vocabulary too large")


def bad_input_argv(case: str, folder: Path, bpe: Path) -> list[str]:
    files, args, _, _ = BAD_INPUTS[case]
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return ["prepare", *(a.format(d=folder, bpe=bpe) for a in args), "--out", str(folder / "out")]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory, tinygpt_command, tokenizer_folders):
    """The cases run through the real command, all at once (each start of it costs seconds)."""
    folders = {case: tmp_path_factory.mktemp("bad") for case in IN_SUBPROCESSES}
    argv = {case: bad_input_argv(case, folders[case], tokenizer_folders["bpe"]) for case in IN_SUBPROCESSES}
    results = tinygpt_command.run_all(argv)
    return {case: (results[case].returncode, results[case].stderr, folders[case]) for case in IN_SUBPROCESSES}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_error(case, tmp_path, capsys, tokenizer_folders, request):
    _, _, code, words = BAD_INPUTS[case]
    if case in IN_SUBPROCESSES:
        returncode, stderr, folder = request.getfixturevalue("subprocess_runs")[case]
    else:
        folder = tmp_path
        returncode = cli.main(bad_input_argv(case, folder, tokenizer_folders["bpe"]))
        stderr = capsys.readouterr().err
    assert returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt prepare: error: "), stderr
    assert words in lines[0]
    out = folder / "out"
    assert not out.exists() and leftovers(out) == []  # no partial output
