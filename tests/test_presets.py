"""Every shipped preset parses through the real command line, and says what its name promises."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import SHARED
from tinygpt.config import config_from_dict, load_config, preset_names, tomllib
from tinygpt.model import GPT, Dropout

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
    assert (m.init, m.embd_dropout) == ("pytorch", False)
    assert n_params("seed", 65) == 794_496 + 129 * 65


# ---------------------------------------------------------------- the seed model against the baseline's own


def baseline_model(vocab_size: int) -> nn.Module:
    """The model of ../shared/baselines/seed_recipe.py, built here from its source: its line of
    hyperparameters and its classes, without running the script (which reads and trains on files)."""
    tree = ast.parse((SHARED / "baselines" / "seed_recipe.py").read_text(encoding="utf-8"))
    hyperparameters = {"block_size", "n_embd", "n_head", "n_layer", "dropout", "head_size"}
    kept = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        or isinstance(node, ast.Assign) and hyperparameters & {n.id for n in ast.walk(node.targets[0]) if isinstance(n, ast.Name)}
    ]
    namespace = {"torch": torch, "nn": nn, "F": nn.functional, "vocab_size": vocab_size}
    exec(compile(ast.Module(body=kept, type_ignores=[]), "seed_recipe.py", "exec"), namespace)  # noqa: S102 (our own baseline)
    return namespace["GPT"]()


def baseline_names(name: str) -> list[str]:
    """The baseline's parameters that one of ours stands for (our c_attn holds every head's query, key and value)."""
    block = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)\.(weight|bias)", name)
    if block is None:
        top = {"transformer.wte": "tok", "transformer.wpe": "pos", "transformer.ln_f": "ln_f", "lm_head": "head"}
        module, param = name.rsplit(".", 1)
        return [f"{top[module]}.{param}"]
    i, module, param = block.groups()
    if module == "attn.c_attn":
        return [f"blocks.{i}.sa.heads.{h}.{p}.{param}" for p in ("query", "key", "value") for h in range(6)]
    parts = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_proj": "sa.proj", "mlp.c_fc": "ffwd.0", "mlp.c_proj": "ffwd.2"}
    return [f"blocks.{i}.{parts[module]}.{param}"]


def torch_default(baseline: nn.Module) -> dict[str, tuple[str, float]]:
    """What torch's default initialisation draws each baseline parameter from: Linear weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), Embedding N(0, 1), LayerNorm weight 1 and bias 0."""
    found = {}
    for prefix, module in baseline.named_modules():
        for param, _ in module.named_parameters(recurse=False):
            if isinstance(module, nn.Linear):
                found[f"{prefix}.{param}"] = ("uniform", 1 / math.sqrt(module.in_features))
            elif isinstance(module, nn.Embedding):
                found[f"{prefix}.{param}"] = ("normal", 1.0)
            else:
                found[f"{prefix}.{param}"] = ("constant", 1.0 if param == "weight" else 0.0)
    return found


def drawn_from(values: torch.Tensor, kind: str, scale: float) -> bool:
    """Whether the values fit the distribution within sampling error: a Kolmogorov-Smirnov test at
    significance 0.001 (critical distance 1.95 / sqrt(n)), and for a uniform, no value past its bound."""
    x = values.detach().flatten().double().sort().values
    n = x.numel()
    if kind == "constant":
        return bool((x == scale).all())
    if kind == "uniform":
        cdf = ((x + scale) / (2 * scale)).clamp(0, 1)
        if x.abs().max() > scale:
            return False
    else:
        cdf = 0.5 * (1 + torch.special.erf(x / (scale * math.sqrt(2))))
    rank = torch.arange(1, n + 1, dtype=torch.float64)
    distance = max((rank / n - cdf).max().item(), (cdf - (rank - 1) / n).max().item())
    return distance < 1.95 / math.sqrt(n)


def test_the_seed_model_starts_as_the_baseline_does():
    """Parameter by parameter, mapped by name: the same distribution (family and bounds) within sampling error."""
    vocab_size = 65
    torch.manual_seed(0)
    baseline = baseline_model(vocab_size)
    cfg = load_config("seed").model
    cfg.vocab_size = vocab_size
    torch.manual_seed(0)
    ours = GPT(cfg)
    theirs = dict(baseline.named_parameters())
    expected = torch_default(baseline)
    mapping = {name: baseline_names(name) for name, _ in ours.named_parameters()}
    assert sorted(b for names in mapping.values() for b in names) == sorted(theirs)  # each of theirs has one counterpart
    for name, p in ours.named_parameters():
        ((kind, scale),) = {expected[b] for b in mapping[name]}
        baseline_values = torch.cat([theirs[b].flatten() for b in mapping[name]])
        assert p.numel() == baseline_values.numel(), name
        assert drawn_from(baseline_values, kind, scale), f"the baseline's {mapping[name][0]} is not {kind} {scale}"
        assert drawn_from(p, kind, scale), f"{name} is not {kind} {scale} as the baseline's is"
    assert not drawn_from(GPT(load_config("seed", {"model.init": "gpt2", "model.vocab_size": "65"}).model).lm_head.weight, "uniform", 1 / 8)


def dropout_sites(model: nn.Module, sites: dict[str, str]) -> list[str]:
    """Where dropout with p > 0 acts in one training forward pass: (layer, site) names from `sites`,
    a pattern of module names (its first group the layer) for each site."""
    acting = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Dropout, Dropout)) and module.p > 0:
            (site,) = [(re.fullmatch(pattern, name).group(1), site) for site, pattern in sites.items() if re.fullmatch(pattern, name)]
            module.register_forward_hook(lambda m, inputs, output, site=site: acting.append(f"{site[1]} {site[0]}"))
    model.train()
    model(torch.randint(0, 65, (2, 64)))
    return sorted(set(acting))


def test_the_seed_model_drops_out_where_the_baseline_does():
    torch.manual_seed(0)
    ours = GPT(load_config("seed", {"model.vocab_size": "65"}).model)
    theirs = dropout_sites(baseline_model(65), {
        "attention weights": r"blocks\.(\d+)\.sa\.heads\.\d+\.dropout",
        "attention output": r"blocks\.(\d+)\.sa\.dropout",
        "MLP output": r"blocks\.(\d+)\.ffwd\.3",
    })  # fmt: skip
    assert len(theirs) == 3 * 6
    assert dropout_sites(ours, {
        "attention weights": r"transformer\.h\.(\d+)\.attn\.attn_dropout",
        "attention output": r"transformer\.h\.(\d+)\.attn\.resid_dropout",
        "MLP output": r"transformer\.h\.(\d+)\.mlp\.dropout",
        "embeddings": r"transformer\.(drop)",
    }) == theirs  # fmt: skip
    assert {m.p for m in ours.modules() if isinstance(m, Dropout) and m.p} == {0.2}


@pytest.mark.parametrize(
    "name,dim,layers,context,params",
    [("llama-15m", 288, 6, 256, 15.2e6), ("llama-42m", 512, 8, 1024, 41.7e6), ("llama-110m", 768, 12, 1024, 109.5e6)],
)
def test_llama2c_presets(name, dim, layers, context, params):
    cfg = load_config(name)
    m, t = cfg.model, cfg.train
    assert (m.family, m.n_embd, m.n_layer, m.n_head, m.block_size) == ("llama", dim, layers, layers, context)
    assert (cfg.tokenizer.kind, cfg.tokenizer.vocab_size) == ("sentencepiece", 32000)
    assert (t.lr, t.warmup_iters, t.schedule, t.dtype, t.compile) == (5e-4, 1000, "cosine", "auto", "on")
    assert n_params(name, 32000) == pytest.approx(params, rel=0.01)


def test_cpu_preset_is_a_ten_minute_budget():
    cfg = load_config("cpu-10min")
    assert cfg.train.max_time == "10m" and cfg.model.block_size == 256 and cfg.model.n_layer == 4
    assert cfg.train.short_block_size == 128 and cfg.train.schedule == "wsd"
    assert cfg.tokenizer.kind == "bpe" and 1024 <= cfg.tokenizer.vocab_size <= 4096
    assert n_params("cpu-10min", cfg.tokenizer.vocab_size) < 2e6
    assert cfg.train.schedule == "wsd" and cfg.train.decay_frac == 0.5


@pytest.mark.parametrize("name", SHIPPED)
def test_presets_keep_the_new_training_options_off_and_stay_exportable(name):
    """qk_norm, relu2, zero-init projections and embedding skips are options to try, not defaults;
    no preset uses one that `tinygpt export` refuses. Muon is the ten-minute recipe's optimizer
    (it won at the full budget, BENCHMARKS.md) and changes nothing an exporter sees."""
    cfg = load_config(name)
    m = cfg.model
    assert not (m.qk_norm or m.embed_skip or m.zero_init_proj) and m.activation != "relu2"
    assert cfg.train.optimizer == ("muon" if name == "cpu-10min" else "adamw")


def test_tiny_stays_tiny():
    cfg = load_config("tiny")
    assert n_params("tiny", cfg.tokenizer.vocab_size) < 100_000 and cfg.train.max_iters <= 200
