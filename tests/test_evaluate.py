"""`tinygpt eval` (an exact pass, bits per byte on one scale: every byte of any file) and
`tinygpt info` (size, FLOPs, memory)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from tinygpt import cli
from tinygpt.common import TinyGPTError
from tinygpt.config import load_config
from tinygpt.evaluate import evaluate, evaluate_path
from tinygpt.info import activation_bytes, model_info
from tinygpt.prepare import prepare
from tinygpt.run import load_model
from tinygpt.shards import ShardSet
from tinygpt.tokenizers import load_tokenizer
from tinygpt.train import Trainer

KINDS = ("char", "bpe", "sentencepiece")
SEP = "<|endoftext|>"

SMALL = {
    "model.n_layer": "1",
    "model.n_embd": "32",
    "model.block_size": "32",
    "train.batch_size": "8",
    "train.max_iters": "30",
    "train.ckpt_interval": "30",
    "train.eval_interval": "30",
    "train.eval_windows": "8",
    "train.threads": "1",
    "train.sample_tokens": "0",
}


@pytest.fixture(scope="module")
def bpe_run(bpe_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    Trainer(load_config("tiny", {**SMALL, "tokenizer.kind": "bpe"}), bpe_data, run).fit()
    return run


@pytest.fixture(scope="module")
def runs(tokenizer_folders, text_files, tmp_path_factory) -> dict[str, Path]:
    """A run of every tokenizer kind: one training step of a tiny model, enough for a checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    train, _ = text_files
    found = {}
    for kind, folder in tokenizer_folders.items():
        cfg = load_config(None, {"data.workers": "1", "tokenizer.kind": kind})
        prepare([str(train)], root / f"data-{kind}", cfg, tokenizer_from=str(folder), progress=False)
        one_step = {**SMALL, "tokenizer.kind": kind, "train.max_iters": "1", "model.block_size": "16"}
        Trainer(load_config("tiny", one_step), root / f"data-{kind}", root / kind).fit()
        found[kind] = root / kind
    return found


def stream_bits(model, ids: list[int]) -> float:
    """-log2 p of every token of `ids` but the first, each predicted in its own window of the model's context
    (non-overlapping windows: window i predicts tokens i*T + 1 .. i*T + T from the T before each)."""
    T, bits = model.cfg.block_size, 0.0
    model.eval()
    for start in range(0, len(ids) - 1, T):
        window = ids[start : start + T + 1]
        with torch.no_grad():
            logits, _ = model(torch.tensor([window[:-1]]))
        bits += F.cross_entropy(logits[0], torch.tensor(window[1:]), reduction="sum").item() / math.log(2)
    return bits


def test_eval_of_raw_text_scores_every_byte_of_the_file(bpe_run, text_files):
    _, valid = text_files
    result = evaluate_path(str(bpe_run), str(valid), device="cpu")
    tokenizer = load_tokenizer(bpe_run / "best" / "tokenizer")
    ids = tokenizer.encode_docs(valid.read_text(encoding="utf-8").split(SEP + "\n")[:-1])[0]
    assert result["bytes"] == valid.stat().st_size and result["exact"]
    assert result["tokens"] == ids.size  # every token of the file is scored, the first given end-of-text
    assert 0 < result["bpb"] < 8
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item())


@pytest.mark.parametrize("kind", KINDS)
def test_eval_is_exactly_the_definition_on_a_short_file(kind, runs, tmp_path):
    """bits = sum of -log2 p(t_i | t_0 .. t_i-1) over the file's tokens after t_0 = end-of-text; bpb = bits / file size."""
    text = "Once upon a time.\r\n<|endoftext|>\r\nThe end"  # no separator after the last document: none invented
    (tmp_path / "short.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = evaluate_path(str(runs[kind]), str(tmp_path / "short.txt"), device="cpu")
    model, tok = load_model(runs[kind])
    ids = [tok.eot_id, *tok.encode("Once upon a time.\n"), tok.eot_id, *tok.encode("The end")]
    assert result["tokens"] == len(ids) - 1
    assert result["bytes"] == 3 + len(text.encode())
    assert result["bpb"] * result["bytes"] == pytest.approx(stream_bits(model, ids), rel=1e-5)


PARTS = st.sampled_from(["Once", " upon", " ", "\t", "\n", "\r\n", "\r", f"{SEP}\n", f"{SEP}\r\n", SEP, "é", "日本", "Ж🐶", "\xff"])


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PARTS, min_size=1, max_size=30), bom=st.booleans())
def test_bits_per_byte_counts_every_byte_of_any_file_whatever_the_shards(kind, parts, bom, runs):
    """S is the file's size (BOM, CRLF, separators or none, unseen characters, undecodable bytes replaced),
    and one shard or many give the same bits."""
    data = b"\xef\xbb\xbf" * bom + "".join(parts).encode().replace("\xff".encode(), b"\xff")
    model, tok = load_model(runs[kind])
    token_bytes = torch.from_numpy(tok.token_bytes())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "f.txt").write_bytes(data)
        for shard_tokens in ("100000000", "3"):
            cfg = load_config(None, {"data.workers": "1", "tokenizer.kind": kind, "data.val_fraction": "0",
                                     "data.shard_tokens": shard_tokens, "data.errors": "replace"})  # fmt: skip
            out = Path(tmp) / f"out-{shard_tokens}"
            try:
                prepare([str(Path(tmp) / "f.txt")], out, cfg, tokenizer_from=str(runs[kind] / "best"), progress=False)
            except TinyGPTError as e:  # whitespace and separators only: nothing to train on, refused
                assert "no documents in" in str(e) and not data.decode("utf-8", "replace").replace(SEP, "").strip("\ufeff \t\r\n")
                return
            shards = ShardSet(out, "train")
            assert shards.source_bytes == len(data)
            if shards.tokens > 1:
                results.append(evaluate(model, shards, token_bytes, model.cfg.block_size, batch_size=4))
    if results:
        one, many = results
        assert one["exact"] and one["bytes"] == many["bytes"] == len(data) and one["tokens"] == many["tokens"]
        assert one["loss"] * one["tokens"] == pytest.approx(many["loss"] * many["tokens"], rel=1e-6)


def test_eval_of_raw_text_equals_eval_of_its_prepared_shards(bpe_run, bpe_data, text_files):
    _, valid = text_files  # bpe_data's validation split is this same file
    from_text = evaluate_path(str(bpe_run), str(valid), device="cpu")
    from_shards = evaluate_path(str(bpe_run), str(bpe_data), split="val", device="cpu")
    assert from_text["tokens"] == from_shards["tokens"]
    assert from_text["bpb"] == pytest.approx(from_shards["bpb"], rel=1e-9)


def test_eval_does_not_depend_on_batch_size(bpe_run, bpe_data):
    a = evaluate_path(str(bpe_run), str(bpe_data), batch_size=3, device="cpu")
    b = evaluate_path(str(bpe_run), str(bpe_data), batch_size=16, device="cpu")
    assert a["bpb"] == pytest.approx(b["bpb"], rel=1e-6)


def test_eval_cli_json_and_errors(bpe_run, char_data, text_files, tinygpt_command):
    _, valid = text_files
    results = tinygpt_command.run_all({
        "ok": ["eval", bpe_run, "--data", valid, "--json"],
        "other_tokenizer": ["eval", bpe_run, "--data", char_data],
        "missing": ["eval", bpe_run, "--data", valid.with_name("nope.txt")],
        "no_checkpoint": ["eval", valid.parent, "--data", valid],
    })
    line = json.loads(results["ok"].stdout.strip().splitlines()[-1])
    assert results["ok"].returncode == 0 and set(line) >= {"loss", "bpb", "perplexity", "tokens", "bytes", "exact"}
    for name in ("other_tokenizer", "missing", "no_checkpoint"):
        result = results[name]
        assert result.returncode != 0, name
        assert "Traceback" not in result.stderr, name
    assert "another tokenizer" in results["other_tokenizer"].stderr
    assert "nope.txt" in results["missing"].stderr


BAD_EVAL_INPUTS = {  # file -> (content, words of the one-line error under --errors strict, text read under replace)
    "latin1.txt": (b"A caf\xe9 sold tea.\n", "latin1.txt is not UTF-8: byte 0xe9 at offset 5", "A caf\ufffd sold tea.\n"),
    "s.jsonl": (b'{"text": "half \\ud800"}\n', "s.jsonl line 1: its text field has a lone surrogate U+D800", "half \ufffd"),
    "s.json": (b'[{"text": "caf\xe9"}]', "s.json is not UTF-8: byte 0xe9 at offset 14", "caf\ufffd"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_eval_of_undecodable_text_is_one_line_or_replaced(kind, runs, tmp_path, capsys):
    for name, (content, error, _) in BAD_EVAL_INPUTS.items():
        (tmp_path / name).write_bytes(content)
        assert cli.main(["eval", str(runs[kind]), "--data", str(tmp_path / name), "--device", "cpu"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tinygpt eval: error: ") and error in lines[0], lines
        argv = ["eval", str(runs[kind]), "--data", str(tmp_path / name), "--errors", "replace", "--device", "cpu", "--json"]
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["bytes"] == (
            len(content) if name.endswith(".txt") else len(BAD_EVAL_INPUTS[name][2].encode()) + 14
        )


def test_eval_of_an_old_prepared_folder_asks_to_prepare_again(bpe_run, bpe_data, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    for path in bpe_data.iterdir():
        if path.is_file():
            (old / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    assert cli.main(["eval", str(bpe_run), "--data", str(old), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = f"{old / 'manifest.json'} has format version 1; this tinygpt reads version 2: prepare the data again"
    assert lines == [f"tinygpt eval: error: {expected}"]


def test_info_of_the_seed_preset_matches_the_parameter_formula():
    cfg = load_config("seed")
    for vocab in (65, 236):
        cfg.model.vocab_size = vocab
        assert model_info(cfg.model, 32)["params"] == 794_496 + 129 * vocab


def test_activation_estimate_scales_with_batch_and_context():
    cfg = load_config("tiny").model
    cfg.vocab_size = 512
    one = activation_bytes(cfg, 1, 4)
    assert activation_bytes(cfg, 8, 4) == 8 * one
    longer = load_config("tiny", {"model.block_size": "128"}).model
    longer.vocab_size = 512
    assert activation_bytes(longer, 1, 4) > 2 * one  # attention probabilities grow with the square


def test_info_cli_on_preset_and_checkpoint(bpe_run, tinygpt_command):
    results = tinygpt_command.run_all({
        "preset": ["info", "seed", "--json"],
        "run": ["info", bpe_run, "--json"],
        "text": ["info", "llama-15m"],
        "bad": ["info", "no-such-thing"],
    })
    preset = json.loads(results["preset"].stdout)
    assert preset["params"] == 794_496 + 129 * 236
    run = json.loads(results["run"].stdout)
    assert run["step"] == 30 and run["tokens_seen"] == 30 * 8 * 32 and run["tokenizer"].startswith("bpe")
    assert "parameters" in results["text"].stdout and "AdamW" in results["text"].stdout
    assert results["bad"].returncode != 0 and "Traceback" not in results["bad"].stderr
