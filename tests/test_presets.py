"""Every shipped preset parses through the real command line, and says what its name promises."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tinygpt.config import config_from_dict, load_config, preset_names, tomllib
from tinygpt.model import GPT

SHIPPED = ["tiny", "seed", "llama-15m", "llama-42m", "llama-110m", "cpu-10min"]


@pytest.fixture(scope="module")
def printed(tinygpt_command) -> dict[str, str]:
    """`python -m tinygpt presets NAME` for every preset, run side by side."""
    results = tinygpt_command.run_all({name: ["presets", name] for name in preset_names()})
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
    return {name: result.stdout for name, result in results.items()}


def test_configs_of_every_family_validate_without_torch():
    """`tinygpt prepare` validates the whole config, model section included, and never loads torch."""
    code = (
        "import sys\n"
        "from tinygpt.cli import build_parser\n"
        "from tinygpt.config import FAMILY_RULES, load_config, preset_names\n"
        "build_parser('prepare')\n"
        "configs = [load_config(name) for name in preset_names()]\n"
        "configs += [load_config('tiny', {'model.family': family}) for family in FAMILY_RULES]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(*sorted({cfg.model.family for cfg in configs}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["gpt2", "llama"]


def test_every_shipped_preset_is_there():
    assert set(SHIPPED) <= set(preset_names())


@pytest.mark.parametrize("name", SHIPPED)
def test_preset_prints_and_round_trips(printed, name):
    assert config_from_dict(tomllib.loads(printed[name])) == load_config(name)


def n_params(name: str, vocab_size: int) -> int:
    cfg = load_config(name).model
    cfg.vocab_size = vocab_size
    with torch.device("meta"):  # shapes only: no memory, no time
        return GPT(cfg).num_params()


def test_seed_is_the_original_recipe():
    cfg = load_config("seed")
    m, t = cfg.model, cfg.train
    assert cfg.tokenizer.kind == "char"
    assert (m.family, m.block_size, m.n_embd, m.n_layer, m.n_head, m.head_size) == ("gpt2", 64, 64, 6, 6, 64)
    assert (m.activation, m.hidden_dim, m.dropout, m.tie_weights) == ("relu", 256, 0.2, False)
    assert (m.bias_qkv, m.bias_proj, m.bias_mlp, m.bias_head) == (False, True, True, True)
    assert (t.batch_size, t.grad_accum, t.lr, t.schedule, t.warmup_iters) == (32, 1, 3e-4, "constant", 0)
    assert (t.weight_decay, t.decay_all, t.beta1, t.beta2, t.grad_clip) == (0.01, True, 0.9, 0.999, 0.0)
    assert (t.max_iters, t.max_tokens, t.max_time, t.ckpt_interval) == (5000, 0, "", 1000)
    assert n_params("seed", 65) == 794_496 + 129 * 65


@pytest.mark.parametrize(
    "name,dim,layers,context,params",
    [("llama-15m", 288, 6, 256, 15.2e6), ("llama-42m", 512, 8, 1024, 41.7e6), ("llama-110m", 768, 12, 1024, 109.5e6)],
)
def test_llama2c_presets(name, dim, layers, context, params):
    cfg = load_config(name)
    m, t = cfg.model, cfg.train
    assert (m.family, m.n_embd, m.n_layer, m.n_head, m.block_size) == ("llama", dim, layers, layers, context)
    assert (cfg.tokenizer.kind, cfg.tokenizer.vocab_size) == ("sentencepiece", 32000)
    assert (t.lr, t.warmup_iters, t.schedule, t.dtype, t.compile) == (5e-4, 1000, "cosine", "bfloat16", "on")
    assert n_params(name, 32000) == pytest.approx(params, rel=0.01)


def test_cpu_preset_is_a_ten_minute_budget():
    cfg = load_config("cpu-10min")
    assert cfg.train.max_time == "10m" and cfg.model.block_size == 128 and cfg.model.n_layer == 4
    assert cfg.tokenizer.kind == "bpe" and 1024 <= cfg.tokenizer.vocab_size <= 4096
    assert n_params("cpu-10min", cfg.tokenizer.vocab_size) < 2e6
    assert cfg.train.schedule == "wsd" and cfg.train.decay_frac == 0.2


@pytest.mark.parametrize("name", SHIPPED)
def test_presets_keep_the_new_training_options_off_and_stay_exportable(name):
    """qk_norm, relu2, zero-init projections, embedding skips and Muon are options to try, not defaults;
    and no preset uses one that `tinygpt export` refuses."""
    cfg = load_config(name)
    m = cfg.model
    assert not (m.qk_norm or m.embed_skip or m.zero_init_proj) and m.activation != "relu2"
    assert cfg.train.optimizer == "adamw"


def test_tiny_stays_tiny():
    cfg = load_config("tiny")
    assert n_params("tiny", cfg.tokenizer.vocab_size) < 100_000 and cfg.train.max_iters <= 200
