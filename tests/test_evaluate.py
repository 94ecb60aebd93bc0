"""`tinygpt eval` (an exact pass, bits per byte on one scale) and `tinygpt info` (size, FLOPs, memory)."""

from __future__ import annotations

import json

import pytest
import torch

from tinygpt.config import load_config
from tinygpt.evaluate import evaluate_path
from tinygpt.info import activation_bytes, model_info
from tinygpt.tokenizers import load_tokenizer
from tinygpt.train import Trainer

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


def test_eval_of_raw_text_scores_every_byte_of_the_file(bpe_run, text_files):
    _, valid = text_files
    result = evaluate_path(str(bpe_run), str(valid), device="cpu")
    tokenizer = load_tokenizer(bpe_run / "best" / "tokenizer")
    first_token_bytes = tokenizer.token_bytes()[tokenizer.encode(valid.read_text(encoding="utf-8")[:50])[0]]
    # every token but the very first is a target: together they stand for the whole file
    assert result["bytes"] == valid.stat().st_size - first_token_bytes
    assert 0 < result["bpb"] < 8
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item())


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
    assert results["ok"].returncode == 0 and set(line) >= {"loss", "bpb", "perplexity", "tokens", "bytes"}
    for name in ("other_tokenizer", "missing", "no_checkpoint"):
        result = results[name]
        assert result.returncode != 0, name
        assert "Traceback" not in result.stderr, name
    assert "another tokenizer" in results["other_tokenizer"].stderr
    assert "nope.txt" in results["missing"].stderr


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
