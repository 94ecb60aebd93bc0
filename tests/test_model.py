"""Tests for tinygpt.model: sizes, Hugging Face naming, a from-scratch reference forward,
causality, RoPE layout, RMSNorm precision, init and a tiny overfit."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from tinygpt.common import TinyGPTError
from tinygpt.config import FAMILY_RULES, ModelConfig
from tinygpt.model import FAMILIES as FAMILY_CLASSES
from tinygpt.model import GPT, CrossEntropy, RMSNorm, RotaryPositions, apply_rope, dropout_mask, rope_cache

V = 48


def tiny(family: str = "gpt2", **overrides) -> ModelConfig:
    cfg = {"family": family, "vocab_size": V, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32}
    return ModelConfig(**(cfg | overrides))


def seed_config(vocab_size: int) -> ModelConfig:
    """The original seed model: 6 heads of 64 channels on a 64-wide embedding."""
    return ModelConfig(
        family="gpt2", vocab_size=vocab_size, block_size=64, n_embd=64, n_layer=6, n_head=6, head_size=64,
        activation="relu", bias_qkv=False, bias_proj=True, bias_mlp=True, bias_head=True, tie_weights=False,
        dropout=0.2,
    )


def make(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


FAMILIES = {
    "gpt2": tiny("gpt2"),
    "gpt2-wide-heads-relu": tiny("gpt2", head_size=16, activation="relu", bias_qkv=False, bias_head=True,
                                 tie_weights=False),
    "llama": tiny("llama"),
    "llama-gqa-wide-heads": tiny("llama", n_kv_head=2, head_size=12, tie_weights=False),
    # the training options of issue 13, all at once
    "gpt2-qknorm-relu2-skip": tiny("gpt2", qk_norm=True, activation="relu2", embed_skip=True, zero_init_proj=True),
    "llama-qknorm-relu2-skip": tiny("llama", qk_norm=True, activation="relu2", embed_skip=True, tie_weights=False),
}


# ----------------------------------------------------------------------------- sizes and names


@pytest.mark.parametrize("vocab_size", [65, 236, 4096])
def test_seed_model_parameter_count(vocab_size):
    model = GPT(seed_config(vocab_size))
    assert model.num_params() == 794_496 + 129 * vocab_size
    attn = model.transformer.h[0].attn
    assert attn.c_attn.weight.shape == (3 * 384, 64) and attn.c_attn.bias is None
    assert attn.c_proj.weight.shape == (64, 384)


def test_seed_model_flops_per_token():
    model = GPT(seed_config(65))
    matmul_params = 794_496 + 129 * 65 - 64 * 64 - 64 * 65  # without wpe and the untied wte
    assert model.num_params(non_embedding=True) == matmul_params
    assert model.flops_per_token() == 6 * matmul_params + 12 * 6 * 6 * 64 * 64


def test_parameter_names_follow_hugging_face():
    gpt2 = GPT(tiny("gpt2", n_layer=1, tie_weights=False, bias_head=True))
    assert sorted(gpt2.state_dict()) == sorted([
        "transformer.wte.weight", "transformer.wpe.weight",
        "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
        "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
        "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
        "transformer.ln_f.weight", "transformer.ln_f.bias",
        "lm_head.weight", "lm_head.bias",
    ])
    llama = GPT(tiny("llama", n_layer=1, n_kv_head=2))  # bias_* default to True: llama ignores them
    assert sorted(llama.state_dict()) == sorted([
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.norm.weight", "lm_head.weight",
    ])
    hs = 32 // 4
    attn = llama.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (4 * hs, 32) and attn.k_proj.weight.shape == attn.v_proj.weight.shape == (2 * hs, 32)
    assert attn.qkv_weight().shape == ((4 + 2 * 2) * hs, 32)
    assert llama.model.layers[0].mlp.gate_proj.weight.shape == (96, 32)  # 2/3 * 4 * 32 rounded up to 32


def test_each_family_is_one_registered_class_that_its_config_rules_describe():
    assert set(FAMILY_CLASSES) == set(FAMILY_RULES) == {"gpt2", "llama"}
    gpt2, llama = GPT(tiny("gpt2")), GPT(tiny("llama"))
    assert gpt2.trunk is gpt2.transformer and llama.trunk is llama.model  # Hugging Face's names
    assert (gpt2.cache_past_context, llama.cache_past_context) == ("reprefill", "slide")
    for model in (gpt2, llama):  # config checks the even head size that rotary positions need
        assert FAMILY_RULES[model.cfg.family].rotary == isinstance(model.trunk.positions, RotaryPositions)


def test_bad_config_and_too_long_sequence():
    with pytest.raises(TinyGPTError, match="vocab_size"):
        GPT(tiny(vocab_size=0))
    model = make(tiny())
    with pytest.raises(TinyGPTError, match="block_size=16"):
        model(tokens(1, 17))


# ----------------------------------------------------------------------------- forward values


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """A straight-line forward from the state dict alone, written the way Hugging Face's
    GPT2LMHeadModel / LlamaForCausalLM compute it (per-head loops, explicit masks, RoPE as
    complex rotation of channel pairs (j, j + hs/2))."""
    cfg, sd = model.cfg, model.state_dict()
    nh, nkv, hs, C = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_embd
    B, T = idx.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def linear(x, name):
        bias = sd.get(name + ".bias")
        return x @ sd[name + ".weight"].T + (0 if bias is None else bias)

    def attention(q, k, v):  # (B, T, nh*hs), (B, T, nkv*hs), (B, T, nkv*hs)
        heads = []
        for h in range(nh):
            g = h // (nh // nkv)  # the key/value head this query head shares
            qh, kh, vh = q[..., h * hs:(h + 1) * hs], k[..., g * hs:(g + 1) * hs], v[..., g * hs:(g + 1) * hs]
            if cfg.qk_norm and cfg.family == "gpt2":  # llama's are normalised before the rotation
                qh, kh = unit_rms(qh), unit_rms(kh)
            scores = (qh @ kh.transpose(1, 2) / math.sqrt(hs)).masked_fill(~causal, float("-inf"))
            heads.append(scores.softmax(-1) @ vh)
        return torch.cat(heads, -1)

    def unit_rms(t):  # one head's vectors (..., hs)
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)

    def skip(x, x0, prefix, i):
        return x + sd[prefix + "embed_skip.weight"][i] * x0 if cfg.embed_skip else x

    relu2 = lambda x: F.relu(x) ** 2
    if cfg.family == "gpt2":
        act = {"gelu": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "relu2": relu2}[cfg.activation]
        def ln(x, name):
            return F.layer_norm(x, (C,), sd[name + ".weight"], sd[name + ".bias"], cfg.norm_eps)
        x = x0 = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
        for i in range(cfg.n_layer):
            x = skip(x, x0, "transformer.", i)
            p = f"transformer.h.{i}."
            q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(nh * hs, -1)
            x = x + linear(attention(q, k, v), p + "attn.c_proj")
            x = x + linear(act(linear(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
        x = ln(x, "transformer.ln_f")
    else:
        def rms(x, name):
            return sd[name + ".weight"] * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
        def rotate(t):
            heads = t.view(B, T, -1, hs).transpose(1, 2)
            heads = unit_rms(heads) if cfg.qk_norm else heads
            return complex_rope(heads, cfg.rope_theta).transpose(1, 2).reshape(B, T, -1)
        gate = relu2 if cfg.activation == "relu2" else F.silu
        x = x0 = sd["model.embed_tokens.weight"][idx]
        for i in range(cfg.n_layer):
            x = skip(x, x0, "model.", i)
            p = f"model.layers.{i}."
            h = rms(x, p + "input_layernorm")
            q, k, v = (linear(h, p + f"self_attn.{part}_proj") for part in "qkv")
            x = x + linear(attention(rotate(q), rotate(k), v), p + "self_attn.o_proj")
            h = rms(x, p + "post_attention_layernorm")
            x = x + linear(gate(linear(h, p + "mlp.gate_proj")) * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = rms(x, "model.norm")
    return linear(x, "lm_head")


def complex_rope(x: torch.Tensor, theta: float, start: int = 0) -> torch.Tensor:
    """x (..., T, hs): channels j and j + hs/2 as one complex number, turned by (start + t) * theta^(-2j/hs)."""
    T, hs = x.shape[-2:]
    freqs = theta ** (-torch.arange(0, hs // 2, dtype=torch.float64) * 2 / hs)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * freqs  # (T, hs/2)
    z = torch.complex(x[..., : hs // 2].double(), x[..., hs // 2:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_matches_reference(name):
    model = make(FAMILIES[name])
    with torch.no_grad():
        for p in model.parameters():  # move norms and biases off their trivial init
            p.add_(0.05 * torch.randn_like(p))
    idx = tokens(2, 16)
    logits, loss = model(idx)
    assert loss is None
    torch.testing.assert_close(logits, reference_logits(model, idx), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zero_init_projections_make_every_block_the_identity(family):
    model = make(tiny(family, zero_init_proj=True))
    idx = tokens(2, 16)
    trunk = model.trunk
    x = trunk.tokens(idx) + (trunk.wpe(torch.arange(16)) if family == "gpt2" else 0)
    final_norm = trunk.ln_f if family == "gpt2" else trunk.norm
    torch.testing.assert_close(model(idx)[0], model.lm_head(final_norm(x)))
    assert not torch.equal(make(tiny(family))(idx)[0], model(idx)[0])  # off: the blocks do change it


@pytest.mark.parametrize("name", FAMILIES)
def test_shapes_and_initial_loss(name):
    model = make(FAMILIES[name])
    idx = tokens(3, 16)
    logits, loss = model(idx, targets=tokens(3, 16, seed=2))
    assert logits is None and model(idx)[0].shape == (3, 16, V)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert abs(loss.item() - math.log(V)) < 0.1  # small init: nearly uniform predictions
    assert model(idx[:, :5])[0].shape == (3, 5, V)


def test_loss_ignores_minus_one_targets():
    model = make(tiny())
    idx, targets = tokens(2, 8), tokens(2, 8, seed=3)
    masked = targets.clone()
    masked[:, 4:] = -1
    logits, loss = model(idx)[0], model(idx, masked)[1]
    expected = F.cross_entropy(logits[:, :4].reshape(-1, V), targets[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_torch_loss_and_gradient(dtype, monkeypatch):
    monkeypatch.setattr(CrossEntropy, "CHUNK", 3 * 500)  # 3 rows of 500 logits a chunk: 37 rows make 13 chunks
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(37, 500, generator=g)).to(dtype)
    targets = torch.randint(0, 500, (37,), generator=g)
    targets[[0, 5, 36]] = -1
    ours, plain = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = CrossEntropy.apply(ours, targets)
    expected = F.cross_entropy(plain.float(), targets, ignore_index=-1)
    (3 * loss).backward()
    (3 * expected).backward()
    assert loss.dtype == torch.float32 and ours.grad.dtype == dtype
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours.grad, plain.grad)
    assert ours.grad[[0, 5, 36]].abs().max() == 0  # ignored rows get no gradient
    assert CrossEntropy.apply(logits, torch.full((37,), -1)).isnan()  # nothing counted: 0 / 0, as torch's


@pytest.mark.parametrize("name", FAMILIES)
def test_causality(name):
    model = make(FAMILIES[name])
    idx = tokens(2, 16)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % V
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=0, rtol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().amax() > 1e-4


def test_dropout_only_while_training():
    model = make(tiny(dropout=0.5))
    idx = tokens(2, 16)
    torch.testing.assert_close(model(idx)[0], model(idx)[0], atol=0, rtol=0)
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_dropout_mask_keeps_one_minus_p_and_has_mean_one():
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([500, 401]), 0.2, "cpu", torch.float32)  # odd count: half a word left over
    kept = mask > 0
    assert set(mask.unique().tolist()) == {0.0, 1.25}
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    assert abs(kept[:, 0::2].float().mean().item() - kept[:, 1::2].float().mean().item()) < 0.01  # both halves
    assert abs(mask.mean().item() - 1.0) < 0.01


def test_spelled_out_training_attention_matches_sdpa():
    model = make(tiny(dropout=0.1))
    attn = model.transformer.h[0].attn
    q, k, v = torch.randn(3, 2, 4, 16, 8).unbind(0)  # (B, nh, T, hs) each
    attn.attn_dropout.eval()  # dropout off: the rest of the computation must be SDPA's
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attn.attend_with_dropout(q, k, v), expected)


# ----------------------------------------------------------------------------- parts


def test_rope_is_rotate_half():
    hs, T = 8, 12
    x = torch.randn(2, 3, T, hs)
    cos, sin = rope_cache(hs, 20, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos[:T], sin[:T]), complex_rope(x, 10000.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apply_rope(x, cos[5:5 + T], sin[5:5 + T]), complex_rope(x, 10000.0, start=5),
                               atol=1e-5, rtol=1e-5)

    # the score of a rotated query and key depends only on how far apart they are
    q, k = torch.randn(hs), torch.randn(hs)
    def score(m, n):
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])
    torch.testing.assert_close(score(7, 3), score(15, 11), atol=1e-5, rtol=1e-5)
    assert abs(score(7, 3) - score(7, 4)) > 1e-3


def test_rmsnorm_computes_in_float32():
    norm = RMSNorm(64, eps=1e-5).to(torch.bfloat16)  # a model cast to bf16, as Hugging Face would run it
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 64))
    x = (torch.randn(4, 64) * 3).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    # squares of half-precision values overflow in half precision, not in float32
    big = torch.full((1, 64), 1000.0, dtype=torch.float16)
    torch.testing.assert_close(RMSNorm(64, eps=1e-5).half()(big), torch.ones(1, 64, dtype=torch.float16))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weight_tying_shares_storage(family):
    tied, untied = GPT(tiny(family, tie_weights=True)), GPT(tiny(family, tie_weights=False))
    embedding = tied.transformer.wte if family == "gpt2" else tied.model.embed_tokens
    assert tied.lm_head.weight is embedding.weight
    assert tied.lm_head.weight.data_ptr() == embedding.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == V * 32  # counted once
    assert "lm_head.weight" in tied.state_dict()
    tied(tokens(1, 8), tokens(1, 8, seed=2))[1].backward()
    assert embedding.weight.grad is not None  # both uses feed one gradient


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_init_std(family):
    n_layer = 8
    model = make(tiny(family, n_layer=n_layer, n_embd=64, tie_weights=False))
    def std(suffixes):
        return torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(suffixes)]).std().item()
    residual = std(("attn.c_proj.weight", "mlp.c_proj.weight", "o_proj.weight", "down_proj.weight"))
    assert residual == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.05)
    assert std(("c_fc.weight", "c_attn.weight", "q_proj.weight", "up_proj.weight", "lm_head.weight")) == \
        pytest.approx(0.02, rel=0.05)
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith(".bias") and "ln_" not in n)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tiny_model_overfits_one_batch(family):
    model = make(tiny(family)).train()
    idx, targets = tokens(4, 16), tokens(4, 16, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        loss = model(idx, targets)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model(idx, targets)[1].item() < 0.25 * math.log(V)


@pytest.mark.slow
def test_a_compiled_training_step_runs_again_from_a_warm_compile_cache(tmp_path):
    """The second torch.compile of the same model reads what the first wrote to the AOTAutograd cache.
    When forward returned the logits beside the loss, torch rebuilt that view of an intermediate
    there with garbage sizes (RuntimeError "invalid shape"): every second `--train.compile on` run
    on a machine failed, seen first on a GPU."""
    script = """
import torch
from tinygpt.config import ModelConfig
from tinygpt.model import GPT
torch.manual_seed(0)
model = GPT(ModelConfig(family="llama", vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
for _ in range(2):
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = torch.compile(model)(x, y)
    loss.backward()
    print(logits, loss.item())
"""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[result.stderr.rfind("Traceback") :][-3000:]
    first, second = result.stdout.splitlines()
    assert first == second and first.startswith("None ") and math.isfinite(float(first.split()[1]))
