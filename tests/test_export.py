"""Tests for tinygpt.export: what `transformers` loads from an export computes and tokenizes as we do.

Each test builds its own tiny tokenizer and model; nothing is downloaded.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from tinygpt.checkpoint import save_checkpoint
from tinygpt.common import TinyGPTError
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.export import HF_FAMILIES, CardInfo, export_hf
from tinygpt.generate import generate_ids
from tinygpt.model import FAMILIES, GPT
from tinygpt.run import Run
from tinygpt.tokenizers import SentencePieceTokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sue", "Max"]
THINGS = ["ball", "tree", "cat", "red kite", "big box", "little bird"]
CORPUS = [
    f"Once upon a time, {n} found a {t}. {n} said, \"Look at my {t}!\"\n\nThey played all day; it was {i} o'clock."
    for i, (n, t) in enumerate((n, t) for n in NAMES for t in THINGS)
]


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32, **overrides)


@pytest.fixture(scope="module")
def char_tokenizer():
    return train_tokenizer("char", CORPUS, 0)


def trained(cfg: ModelConfig, tokenizer) -> GPT:
    """A model 40 Adam steps into the corpus: every weight has moved (zero biases too) and greedy text varies."""
    torch.manual_seed(0)
    model = GPT(cfg)
    data = torch.tensor(tokenizer.encode("".join(CORPUS)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        starts = torch.randint(0, len(data) - cfg.block_size - 1, (8,))
        x = torch.stack([data[s : s + cfg.block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + cfg.block_size + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


MODELS = {
    "gpt2-gelu-tied": ({"family": "gpt2"}, "GPT2LMHeadModel"),
    "gpt2-relu-untied-no-biases": (
        {"family": "gpt2", "activation": "relu", "bias_qkv": False, "bias_proj": False, "bias_mlp": False,
         "tie_weights": False},
        "GPT2LMHeadModel",
    ),
    "llama-tied": ({"family": "llama"}, "LlamaForCausalLM"),
    "llama-gqa-untied-wide-heads": (
        {"family": "llama", "n_kv_head": 2, "head_size": 16, "mlp_hidden": 48, "tie_weights": False},
        "LlamaForCausalLM",
    ),
    "gpt2-relu2-zero-init": ({"family": "gpt2", "activation": "relu2", "zero_init_proj": True}, "GPT2LMHeadModel"),
    "llama-relu2-untied": ({"family": "llama", "activation": "relu2", "tie_weights": False}, "LlamaForCausalLM"),
}


def test_every_model_family_has_a_hugging_face_class():
    assert set(HF_FAMILIES) == set(FAMILIES)
    assert {name: HF_FAMILIES[overrides["family"]].architecture for name, (overrides, _) in MODELS.items()} == {
        name: architecture for name, (_, architecture) in MODELS.items()
    }


@pytest.mark.parametrize("name", MODELS)
def test_transformers_gives_our_logits_and_greedy_text(name, char_tokenizer, tmp_path):
    overrides, architecture = MODELS[name]
    cfg = tiny_config(char_tokenizer.vocab_size, **overrides)
    model = trained(cfg, char_tokenizer)
    out = export_hf(model, cfg, char_tokenizer, tmp_path / "hf")

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == architecture
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids)[0], atol=1e-4, rtol=0)

    prompt = torch.tensor([[char_tokenizer.eot_id, *char_tokenizer.encode("Once")]])  # as `tinygpt sample` encodes it
    new = cfg.block_size - prompt.size(1)  # stay inside the context window
    ours = list(generate_ids(model, prompt[0].tolist(), max_new_tokens=new, temperature=0, stop_at_eot=False))
    if char_tokenizer.eot_id in ours:  # transformers stops after the end-of-text token
        ours = ours[: ours.index(char_tokenizer.eot_id) + 1]
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False)
    assert theirs[0, prompt.size(1) :].tolist() == ours

    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        names = f.keys()
    assert ("lm_head.weight" in names) == (not cfg.tie_weights)  # a tied matrix is written once


@pytest.mark.parametrize(("kind", "vocab_size"), [("bpe", 300), ("sentencepiece", 400), ("char", 0)])
def test_transformers_tokenizer_gives_our_ids(kind, vocab_size, tmp_path, parity_texts):
    tokenizer = train_tokenizer(kind, CORPUS, vocab_size)
    cfg = tiny_config(tokenizer.vocab_size)
    out = export_hf(GPT(cfg), cfg, tokenizer, tmp_path / "hf")

    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.eos_token_id == tokenizer.eot_id and hf.convert_ids_to_tokens(tokenizer.eot_id) == "<|endoftext|>"
    for text in [*parity_texts, "".join(CORPUS)]:
        ids = tokenizer.encode(text)
        assert hf(text)["input_ids"] == ids, text  # no start token added, literal <|endoftext|> not matched
        # the char tokenizer's unknown id reads "<unk>" there and U+FFFD here
        assert hf.decode(ids) == tokenizer.decode(ids).replace("\ufffd", "<unk>" if kind == "char" else "\ufffd")
    if isinstance(tokenizer, SentencePieceTokenizer):
        assert (out / "tokenizer.model").read_bytes() == tokenizer._bytes


def test_refuses_what_gpt2lmheadmodel_cannot_express(char_tokenizer, tmp_path):
    seed_shaped = ModelConfig(family="gpt2", vocab_size=char_tokenizer.vocab_size, block_size=64, n_embd=64,
                              n_layer=1, n_head=6, head_size=64)
    with pytest.raises(TinyGPTError, match="6 heads of 64 on a 64-wide embedding"):
        export_hf(GPT(seed_shaped), seed_shaped, char_tokenizer, tmp_path / "seed")
    with_head_bias = tiny_config(char_tokenizer.vocab_size, bias_head=True, tie_weights=False)
    with pytest.raises(TinyGPTError, match="lm_head has no bias"):
        export_hf(GPT(with_head_bias), with_head_bias, char_tokenizer, tmp_path / "bias")
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("option", ["qk_norm", "embed_skip"])
def test_refuses_the_options_no_stock_class_computes(family, option, char_tokenizer, tmp_path):
    cfg = tiny_config(char_tokenizer.vocab_size, family=family, **{option: True})
    with pytest.raises(TinyGPTError, match=rf"^cannot export to \w+: it has no model\.{option} \("):
        export_hf(GPT(cfg), cfg, char_tokenizer, tmp_path / "out")
    assert not any(tmp_path.iterdir())


def test_refuses_a_tokenizer_of_another_size(char_tokenizer, tmp_path):
    cfg = tiny_config(char_tokenizer.vocab_size + 1)
    with pytest.raises(TinyGPTError, match="token ids but the tokenizer"):
        export_hf(GPT(cfg), cfg, char_tokenizer, tmp_path / "hf")


def test_replaces_only_an_earlier_export(char_tokenizer, tmp_path):
    cfg = tiny_config(char_tokenizer.vocab_size)
    model, out = GPT(cfg), tmp_path / "hf"
    export_hf(model, cfg, char_tokenizer, out)
    with pytest.raises(TinyGPTError, match="not empty"):
        export_hf(model, cfg, char_tokenizer, out)
    export_hf(model, cfg, char_tokenizer, out, CardInfo(name="second"), overwrite=True)
    assert "# second" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left behind
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TinyGPTError, match="notes.txt"):
        export_hf(model, cfg, char_tokenizer, out, overwrite=True)


def test_model_card_names_the_data_its_licence_and_the_result(char_tokenizer, tmp_path):
    cfg = tiny_config(char_tokenizer.vocab_size, family="llama", n_kv_head=2)
    info = CardInfo(name="tiny llama", dataset="tinystories", steps=1234, tokens=5_000_000, val_bpb=1.2345)
    out = export_hf(GPT(cfg), cfg, char_tokenizer, tmp_path / "hf", info)
    card = (out / "README.md").read_text()
    for fact in ("LlamaForCausalLM", "4 query, 2 key/value, 8 wide", "1,234", "5,000,000", "1.2345",
                 "roneneldan/TinyStories", "CDLA-Sharing-1.0", "Eldan", "arXiv:2305.07759"):
        assert fact in card, fact
    assert "not recorded" in (export_hf(GPT(cfg), cfg, char_tokenizer, tmp_path / "bare") / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["eos_token_id"] == char_tokenizer.eot_id


# ---------------------------------------------------------------- the command line


def save_run(run, model: GPT, tokenizer) -> None:
    """A run folder as training leaves it, reduced to its best/ checkpoint."""
    tokenizer.save(run / "tokenizer")
    progress = {"step": 40, "tokens": 10_240, "best_val_bpb": 2.345, "data": str(run / "data")}
    config = Config(model=model.cfg, tokenizer=TokenizerConfig(kind=tokenizer.kind))
    save_checkpoint(Run(run).best, {"model": model.state_dict(), "progress": progress}, dump_toml(config), run / "tokenizer")


def test_cli_exports_a_run(char_tokenizer, tmp_path, tinygpt_command):
    cfg = tiny_config(char_tokenizer.vocab_size, family="llama", n_kv_head=2)
    model = trained(cfg, char_tokenizer)
    save_run(tmp_path / "run", model, char_tokenizer)

    result = tinygpt_command.run("export", tmp_path / "run", "--format", "hf", tmp_path / "hf", "--dataset", "tinystories")
    assert result.returncode == 0, result.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, cfg.vocab_size, (1, cfg.block_size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids)[0], atol=1e-4, rtol=0)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| training steps | 40 |" in card and "| validation bits per byte | 2.3450 |" in card and "CDLA" in card


def test_the_card_names_the_data_recorded_by_prepare(char_tokenizer, tmp_path):
    from tinygpt.cli import main

    model = GPT(tiny_config(char_tokenizer.vocab_size, family="gpt2"))
    save_run(tmp_path / "run", model, char_tokenizer)
    (tmp_path / "run" / "data").mkdir()
    (tmp_path / "run" / "data" / "manifest.json").write_text('{"format_version": 1, "source": "tinystories"}')
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "CDLA-Sharing-1.0" in (tmp_path / "hf" / "README.md").read_text()


def test_cli_refuses_the_seed_model_in_one_line(char_tokenizer, tmp_path, tinygpt_command):
    seed_shaped = ModelConfig(family="gpt2", vocab_size=char_tokenizer.vocab_size, block_size=64, n_embd=64,
                              n_layer=1, n_head=6, head_size=64, bias_head=True, tie_weights=False)
    save_run(tmp_path / "run", GPT(seed_shaped), char_tokenizer)

    result = tinygpt_command.run("export", tmp_path / "run", "--format", "hf", tmp_path / "hf")
    assert result.returncode == 2
    assert result.stderr.startswith("tinygpt export: error: cannot export to GPT2LMHeadModel") and result.stderr.count("\n") == 1
    assert not (tmp_path / "hf").exists()
