"""`tinygpt prepare`: documents and their bytes, shards equal to a direct encoding, the manifest,
validation splits, input formats, parallel determinism, interrupted runs and one-line errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib

from tinygpt import documents, shards
from tinygpt.common import TinyGPTError
from tinygpt.config import config_from_dict, load_config
from tinygpt.documents import split_documents
from tinygpt.prepare import held_out, prepare
from tinygpt.shards import read_manifest
from tinygpt.tokenizers import EOT_SEPARATOR, load_tokenizer


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
    assert manifest["source_bytes"] == train_txt.stat().st_size + valid_txt.stat().st_size
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["documents"], val["documents"]) == (2316, 1000)
    # Byte-level BPE loses nothing and the end-of-text token stands for the separator line: exact sizes.
    assert (train["text_bytes"], val["text_bytes"]) == (train_txt.stat().st_size, valid_txt.stat().st_size)
    assert (train["unknown"], val["unknown"]) == (0, 0)
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
        expected = [i for doc in split_documents(text) for i in [*tok.encode(doc), tok.eot_id]]
        assert tokens(bpe_prepared, split).tolist() == expected
        assert tok.decode(tokens(bpe_prepared, split)) == text


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
    assert tokens(tmp_path / "out", "train").tolist() == tok.encode_docs(train_docs)[0].tolist()
    assert manifest["splits"]["val"] == {"shards": [], "tokens": 0, "documents": 0, "text_bytes": 0, "unknown": 0}


# ---------------------------------------------------------------- validation split


def test_validation_by_fraction_holds_out_whole_documents(train_txt, train_docs, tmp_path):
    out = tmp_path / "out"
    manifest = run(train_txt, out, tokenizer__kind="char", data__val_fraction="0.1")
    is_val = held_out(np.arange(len(train_docs)), 0.1)
    val_docs = [doc for doc, v in zip(train_docs, is_val) if v]
    train_docs_left = [doc for doc, v in zip(train_docs, is_val) if not v]
    assert (manifest["splits"]["val"]["documents"], manifest["splits"]["train"]["documents"]) == (231, 2085)
    tok = load_tokenizer(out / "tokenizer")
    assert tok.decode(tokens(out, "train")) == "".join(doc + EOT_SEPARATOR for doc in train_docs_left)
    # The tokenizer learnt its characters from the training documents only; held-out documents
    # have a few more ('«', 'ñ', ...), which are unknown to it.
    assert set(tok.chars) == set("".join(train_docs_left))
    val_text = "".join(doc + EOT_SEPARATOR for doc in val_docs)
    unseen = set(val_text) - set(tok.chars) - set(EOT_SEPARATOR)
    assert "«" in unseen
    assert tok.decode(tokens(out, "val")) == "".join("\ufffd" if c in unseen else c for c in val_text)
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


def test_not_utf8_is_reported_with_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "CHUNK_BYTES", 64)  # the bad byte lies several chunks in
    good = "Once upon a time there was a cat.\n" * 5 + EOT_SEPARATOR
    bad = good.encode() * 3 + b"A caf\xe9 sold tea.\n" + EOT_SEPARATOR.encode()
    offset = len(good.encode()) * 3 + 5
    cases = {  # file -> (content, offset of the bad byte)
        "stories.txt": (bad, offset),
        "stories.jsonl": (b'{"text": "fine"}\n' * 9 + b'{"text": "caf\xe9"}\n', 17 * 9 + 13),
        "stories.json": (b"[" + b'{"text": "fine"}, ' * 9 + b'{"text": "caf\xe9"}]', 1 + 18 * 9 + 13),
    }
    for name, (content, bad_offset) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(TinyGPTError, match=rf"{name} is not UTF-8: byte 0xe9 at offset {bad_offset} "):
            run(path, tmp_path / "out", tokenizer__kind="char", data__val_fraction="0")
        assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []
        replaced = tmp_path / f"replaced-{path.suffix[1:]}"
        run(path, replaced, tokenizer__kind="char", data__val_fraction="0", data__errors="replace")
        tok = load_tokenizer(replaced / "tokenizer")
        assert "caf\ufffd" in tok.decode(tokens(replaced, "train"))


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
        assert not out.exists()
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


# ---------------------------------------------------------------- bad input

BAD_INPUTS = {  # case -> what its one-line error must say; each runs the command in a subprocess
    "missing path": "input not found:",
    "empty file": "the input is empty:",
    "only separators and whitespace": "no documents in",
    "bytes that are not UTF-8": "latin1.txt is not UTF-8: byte 0xe9 at offset 37",
    "bpe vocabulary too large": "supports a BPE vocabulary of only",
    "sentencepiece vocabulary too large": "sentencepiece could not train a vocabulary of 60000: Vocabulary size too high",
    "tokenizer of the wrong kind": "is of kind 'bpe', expected 'char'",
    "tokenizer-from is not a tokenizer": "no tokenizer in",
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, tinygpt_command, train_docs, bpe_prepared):
    """Every bad-input case, run at once (each start of the command costs seconds)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "separators.txt").write_text("<|endoftext|>\n \n<|endoftext|>\n\n\t\n<|endoftext|>\n")
    (d / "latin1.txt").write_bytes(b"Once upon a time.\n" + EOT_SEPARATOR.encode() + b"A caf\xe9.\n" + EOT_SEPARATOR.encode())
    few = write_txt(d / "few.txt", train_docs[:3])
    (d / "not-a-tokenizer").mkdir()
    inputs = {
        "missing path": [d / "nope.txt"],
        "empty file": [d / "empty.txt"],
        "only separators and whitespace": [d / "separators.txt"],
        "bytes that are not UTF-8": [d / "latin1.txt", "--tokenizer", "char"],
        "bpe vocabulary too large": [few, "--vocab-size", "60000"],
        "sentencepiece vocabulary too large": [few, "--tokenizer", "sentencepiece", "--vocab-size", "60000"],
        "tokenizer of the wrong kind": [few, "--tokenizer-from", bpe_prepared, "--tokenizer", "char"],
        "tokenizer-from is not a tokenizer": [few, "--tokenizer-from", d / "not-a-tokenizer"],
    }
    commands = {case: ["prepare", *args, "--out", d / f"out{i}"] for i, (case, args) in enumerate(inputs.items())}
    results = tinygpt_command.run_all(commands)
    return {case: (results[case], d / f"out{i}") for i, case in enumerate(inputs)}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_a_one_line_error(bad_input_runs, case):
    result, out = bad_input_runs[case]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinygpt prepare: error: "), result.stderr
    assert BAD_INPUTS[case] in lines[0]
    assert not out.exists() and leftovers(out) == []


MORE_BAD_INPUTS = {  # file name -> (content, error); the same path to the user as above, tested in-process
    "bad.jsonl": ('{"text": "fine"}\n{"text": oops}\n', "bad.jsonl line 2: not valid JSON"),
    "nofield.json": ('[{"story": "the text is in another field"}]', "nofield.json item 0 has no text field 'text'"),
    "object.json": ('{"text": "an object, not an array"}', "object.json is not a JSON array of objects"),
    "broken.json": ('[{"text": "a"}, {"text": ', "broken.json is not valid JSON (parse error: premature EOF)"),
    "few.txt": ("One.\n<|endoftext|>\nTwo.\n<|endoftext|>\n", "2 documents are too few to hold out data.val_fraction"),
}


@pytest.mark.parametrize("name", MORE_BAD_INPUTS)
def test_more_bad_input(name, tmp_path):
    content, error = MORE_BAD_INPUTS[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(TinyGPTError, match=re.escape(error)) as raised:
        run(tmp_path / name, tmp_path / "out", tokenizer__kind="char", data__val_fraction="0.005")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []
