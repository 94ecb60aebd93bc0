"""The GPT language model, both families, in one file meant to be read top to bottom.

- "gpt2": learned position embeddings, LayerNorm, a GELU (tanh form) or ReLU MLP, biases
  chosen per part. Heads may be wider than n_embd / n_head: the seed model used 6 heads of
  64 channels on a 64-wide embedding.
- "llama": rotary position embeddings (Hugging Face's rotate-half layout), RMSNorm computed
  in float32, a SwiGLU MLP, no biases, optional grouped-query attention.

Dropout (training only) sits in the same four places in both families, as in llama2.c:
the embeddings (unless model.embd_dropout is off, as in the seed), the attention weights, the
attention output and the MLP output.

Initialisation (model.init): "gpt2" draws every Linear and Embedding weight from N(0, 0.02), the
projections that write into the residual stream from N(0, 0.02/sqrt(2 * n_layer)) (GPT-2 paper),
biases 0; "pytorch" keeps torch's defaults, as the seed model had them: Linear weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), Embedding N(0, 1), norm gains 1 and biases 0.

Options from recent small-model training (modded-nanogpt, Jordan et al. 2024), each off by
default and in every preset that does not set it: qk_norm (queries and keys scaled to unit RMS
per head, Henry et al. 2020, "Query-Key Normalization for Transformers"; Dehghani et al. 2023),
activation "relu2" (ReLU squared, So et al. 2021, "Primer"), zero_init_proj (the projections
into the residual stream start at zero) and embed_skip (every block's input adds a learned
multiple of the embeddings, x0). Not every exporter can express them: see export.py.

Each family is one class (GPT2Model, LlamaModel: its parts, chosen once) and one entry in
FAMILIES; GPT asks the family for what differs and never tests the name. Its config rules
are in config.FAMILY_RULES, which needs no torch.

Parameter names are Hugging Face's (GPT2LMHeadModel, LlamaForCausalLM), so export is a
rename plus one layout change: GPT-2's Conv1D stores weights transposed. (Llama keeps q_proj,
k_proj and v_proj apart, as Hugging Face does, so that Muon orthogonalises each on its own; its
forward multiplies by the three as one matrix.)

The model keeps no decoding state. Generation passes a view of the decoding engine's KV cache
(engine.CacheBatch) to forward(idx, cache=...): each row of the batch sits at its own position
(the view's `pos`, (B, T)), writes its new keys and values into its own cache row and attends
to that row's past. When a row's cache is full, rotary positions let the engine slide it
(RotaryPositions.turn_back); learned ones cannot, and the row's last tokens run again instead
(GPT.cache_past_context says which).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from .common import TinyGPTError
from .config import ModelConfig

if TYPE_CHECKING:
    from .engine import CacheBatch


def dropout_mask(shape: torch.Size, p: float, device, dtype) -> torch.Tensor:
    """Dropout's multiplier: 0 with probability p, else 1 / (1 - p), so its expected value is 1.

    torch's own dropout on CPU draws one random number per element through a generic, one at a
    time path (MKL's fast path is for Intel CPUs only); on the seed model that was a fifth of a
    training step. Here each 32-bit random word gives two 15-bit numbers (its two halves,
    masked), about three times faster; p is rounded to a multiple of 1/32768. The words come
    from torch's default generator, whose state every checkpoint saves.
    """
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()  # uniform on [0, 2^31)
    numbers = words.view(torch.int16)[:n].view(shape) & 0x7FFF  # uniform on [0, 32768)
    keep = numbers >= round(p * 32768)
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


class CrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits.float(), targets, ignore_index=-1), a chunk of rows at a time.

    The loss is taken in float32 whatever the logits' dtype, as before, but each chunk of a few
    mebibytes of float32 logits is made, used and dropped while it is in cache: no float32 copy
    of all the logits, no full log-softmax kept for the backward pass, no zero-filled gradient
    for it. Forward: loss = mean over the targets that are not -1 of logsumexp(row) - row[target].
    Backward: each row's gradient is softmax(row) - onehot(target) (0 for an ignored row), times
    the incoming gradient / the number of counted rows, in the logits' dtype. On the cpu-10min
    model (2048 rows of 4096 logits in bfloat16) a third of the time of the plain form.
    """

    CHUNK = 2**20  # float32 elements of logits per chunk (4 MiB): few chunks, few ops

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits (N, V) of any float dtype, targets (N,) int64 in [0, V) or -1 -> the mean loss, float32, in nats."""
        rows = max(1, CrossEntropy.CHUNK // logits.size(1))
        lse = torch.empty(logits.size(0), dtype=torch.float32, device=logits.device)  # (N,) log of each row's softmax denominator
        for start in range(0, logits.size(0), rows):
            lse[start : start + rows] = torch.logsumexp(logits[start : start + rows].float(), dim=-1)
        counted = targets != -1
        picked = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1).float()  # (N,) each row's target logit
        ctx.save_for_backward(logits, targets, lse, counted)
        ctx.rows = rows
        return ((lse - picked) * counted).sum() / counted.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse, counted = ctx.saved_tensors
        scale = grad / counted.sum()
        out = torch.empty_like(logits)
        ones = torch.ones(logits.size(0), 1, dtype=torch.float32, device=logits.device)
        for start in range(0, logits.size(0), ctx.rows):
            end = start + ctx.rows
            probs = (logits[start:end].float() - lse[start:end, None]).exp_()  # (rows, V) softmax
            probs.scatter_add_(1, targets[start:end].clamp(min=0).unsqueeze(1), -ones[start:end])
            out[start:end] = probs.mul_(scale * counted[start:end, None])
        return out, None


class Dropout(nn.Module):
    """nn.Dropout, with dropout_mask's cheaper random numbers on CPU (torch's fused kernels elsewhere)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * dropout_mask(x.shape, self.p, x.device, x.dtype)


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain (no bias, no mean).

    The statistics are taken in float32 and the result cast back, as Hugging Face's Llama
    does: squares of bf16/fp16 activations lose precision or overflow.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the same numbers from one fused op: a third of a decoding step's norm cost
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cache(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of the rotary angles for positions [0, length), each (length, hs).

    Rotate-half layout: channel i and channel i + hs/2 form a pair, turned by the angle
    position * theta^(-2i/hs). Meta's original code pairs neighbours (2i, 2i+1) instead;
    using Hugging Face's layout means exported q/k weights need no permutation. The sines
    of the first half are negated (-sin, sin), the signs of rotate-half's (-x2, x1), so that
    apply_rope turns with one roll instead of split, negate and concatenate.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, hs/2)
    sin = angles.sin()
    angles = torch.cat((angles, angles), dim=-1)  # (length, hs): both channels of a pair share an angle
    return angles.cos(), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair of x (B, nh, T, hs) by its position's angle; cos and rope_cache's
    signed sin are (T, hs) or (B, 1, T, hs).

    x * cos + (-x2, x1) * sin, with (-x2, x1) * sin spelled (x2, x1) * (-sin, sin): the same
    products, bit for bit, in fewer operations (a step of decoding runs this once per layer).
    After rotation q.k depends only on the distance between the two positions.
    """
    return (x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin).to(x.dtype)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal attention weights softmax(q k^T / sqrt(hs)) (B, nh, T, S) for queries q (B, nh, T, hs)
    at the last T of the S positions of the keys k (B, nh, S, hs); T = S in training.

    Row i holds how much query i takes from each key it may see; each row sums to 1 (Vaswani et
    al. 2017, eq. 1). scaled_dot_product_attention computes the same without keeping them.
    """
    T, S = q.size(2), k.size(2)
    att = q @ k.transpose(-2, -1)  # (B, nh, T, S)
    causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    # in place: the product's backward needs q and k, not its output; one (B, nh, T, S) tensor, not three
    return att.mul_(1.0 / math.sqrt(q.size(-1))).masked_fill_(~causal, float("-inf")).softmax(dim=-1)


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention on scaled_dot_product_attention, optionally through a KV cache.

    Queries, keys and values come from one product (`qkv`), in that order along its output.
    Key/value heads may be fewer than query heads (grouped-query attention): each one then
    serves n_head // n_kv_head consecutive query heads. The two families subclass this
    only to give the projections their Hugging Face names (and, for Llama, to rotate q, k).
    `layer` is the block's index: its slice of a KV cache.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.kv_dim = self.n_kv_head * self.head_dim
        self.qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.out_dim = self.n_head * self.head_dim  # may differ from n_embd: the output projection maps it back
        self.dropout = cfg.dropout
        self.qk_norm, self.norm_eps = cfg.qk_norm, cfg.norm_eps
        self.attn_dropout = Dropout(cfg.dropout)  # on the attention weights: attend_with_dropout
        self.resid_dropout = Dropout(cfg.dropout)
        self.layer = 0  # set by GPT: which layer of a KV cache is this one's

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, (nh + 2*nkv) * hs) -> q (B, nh, T, hs), k and v (B, nkv, T, hs); with qk_norm,
        each head's q and k scaled to unit root-mean-square (no learned gain)."""
        B, T, _ = qkv.size()
        q, k, v = qkv.split([self.out_dim, self.kv_dim, self.kv_dim], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.head_dim,), eps=self.norm_eps), F.rms_norm(k, (self.head_dim,), eps=self.norm_eps)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: CacheBatch | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs)) v over the causal past; returns (B, T, nh * hs).

        cache None: q and k cover the same T positions. Otherwise each row's chunk sits at its
        positions cache.pos and is written into its cache row first; its queries then see that
        row's keys up to their own position (cache.mask, None when every key is visible).
        """
        B, _, T, _ = q.size()
        gqa = self.n_kv_head != self.n_head
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nkv, S, hs): each row's past and this chunk
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask, is_causal=cache.causal, enable_gqa=gqa)
        else:
            if gqa:
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, T, hs)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            dropout_p = self.dropout if self.training else 0.0
            if dropout_p > 0 and q.device.type == "cpu":
                y = self.attend_with_dropout(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return y.transpose(1, 2).reshape(B, T, self.out_dim)  # (B, nh, T, hs) -> (B, T, nh * hs)

    def attend_with_dropout(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Training attention on CPU, spelled out so the weights take Dropout's cheaper masks.

        The same computation as scaled_dot_product_attention(is_causal=True, dropout_p=p), whose
        CPU kernel draws torch's own dropout numbers (the slow path described in dropout_mask).
        """
        return self.attn_dropout(attention_weights(q, k)) @ v  # (B, nh, T, hs)


class GPT2Attention(CausalSelfAttention):
    """GPT-2 names: c_attn makes q, k, v (one matrix); c_proj maps the heads back to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.c_attn = nn.Linear(cfg.n_embd, self.qkv_dim, bias=cfg.bias_qkv)
        self.c_proj = nn.Linear(self.out_dim, cfg.n_embd, bias=cfg.bias_proj)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> q, k and v side by side (B, T, (nh + 2*nkv) * hs)."""
        return self.c_attn(x)

    def forward(self, x: torch.Tensor, cache: CacheBatch | None = None) -> torch.Tensor:
        q, k, v = self.split_heads(self.qkv(x))
        return self.resid_dropout(self.c_proj(self.attend(q, k, v, cache)))


class LlamaAttention(CausalSelfAttention):
    """Llama names (q_proj, k_proj, v_proj, o_proj), no biases, rotary positions on q and k.

    q, k and v are three matrices, as in Hugging Face's LlamaAttention, so that Muon
    orthogonalises each on its own (as modded-nanogpt does): at a fixed token budget this scored
    0.0064 bits per byte better than one fused matrix (BENCHMARKS.md). The forward still makes
    them in one product (`qkv`). Checkpoints written with one fused `qkv_proj.weight` still load
    (GPT.upgraded splits it).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.q_proj = nn.Linear(cfg.n_embd, self.out_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, self.kv_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, self.kv_dim, bias=False)
        self.o_proj = nn.Linear(self.out_dim, cfg.n_embd, bias=False)

    def qkv_weight(self) -> torch.Tensor:
        """q_proj, k_proj and v_proj's weights stacked: ((nh + 2*nkv) * hs, C)."""
        return torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> q, k and v side by side (B, T, (nh + 2*nkv) * hs), one product."""
        return F.linear(x, self.qkv_weight())

    def split_fused_qkv(self, state_dict: dict[str, torch.Tensor], prefix: str) -> None:
        """A checkpoint from before q, k and v were apart holds one fused `qkv_proj.weight`: split it, in
        place, when it is exactly the three stacked and they are not there as well; otherwise it is
        left as it is, for checkpoint.check_weights to refuse by name."""
        names = [prefix + f"{part}_proj.weight" for part in "qkv"]
        fused = state_dict.get(prefix + "qkv_proj.weight")
        if fused is None or fused.shape != self.qkv_weight().shape or any(name in state_dict for name in names):
            return
        del state_dict[prefix + "qkv_proj.weight"]
        state_dict.update(zip(names, fused.split([self.out_dim, self.kv_dim, self.kv_dim])))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache: CacheBatch | None = None):
        q, k, v = self.turned_heads(self.qkv(x), rope)
        return self.resid_dropout(self.o_proj(self.attend(q, k, v, cache)))

    def turned_heads(self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """qkv's output (B, T, (nh + 2*nkv) * hs) -> q (B, nh, T, hs) and k (B, nkv, T, hs)
        turned by rope (with qk_norm: scaled to unit RMS first), and v (B, nkv, T, hs)."""
        B, T, _ = qkv.size()
        heads = qkv.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh + 2*nkv, T, hs)
        turned = self.n_head + self.n_kv_head
        qk = heads[:, :turned]
        if self.qk_norm:
            qk = F.rms_norm(qk, (self.head_dim,), eps=self.norm_eps)
        q, k = apply_rope(qk, *rope).split([self.n_head, self.n_kv_head], dim=1)  # q and k in one turn
        return q, k, heads[:, turned:]


class ReLUSquared(nn.Module):
    """max(0, x)^2 (Primer, So et al. 2021), as transformers' ACT2FN["relu2"]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    """GPT-2 feed-forward: widen, GELU (tanh form, as GPT-2 was trained), ReLU or ReLU squared, narrow."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.hidden_dim, bias=cfg.bias_mlp)
        self.act = {"gelu": nn.GELU(approximate="tanh"), "relu": nn.ReLU(), "relu2": ReLUSquared()}[cfg.activation]
        self.c_proj = nn.Linear(cfg.hidden_dim, cfg.n_embd, bias=cfg.bias_mlp)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Llama feed-forward: a SiLU-gated product of two projections, then back down
    (activation "relu2": the gate goes through ReLU squared instead)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.n_embd, bias=False)
        self.act = ReLUSquared() if cfg.activation == "relu2" else nn.SiLU()
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    """GPT-2 block: pre-norm attention then pre-norm MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: CacheBatch | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class LlamaBlock(nn.Module):
    """Llama block: the same residual shape as GPT-2's, with RMSNorm, RoPE attention and SwiGLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, rope, cache: CacheBatch | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class LearnedPositions(nn.Embedding):
    """GPT-2's position encoding: a learned vector per position, (block_size, C), added to the token embeddings.

    The table ends at block_size, and the positions enter with the first layer's input, which
    no later change to the cache can undo: a KV cache can neither outgrow block_size nor slide.
    Past the context, generation runs the last tokens again from position 0.
    """

    cache_past_context = "reprefill"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.block_size, cfg.n_embd)

    # forward(pos): position ids (T,) or (B, T) -> their vectors (T, C) or (B, T, C), nn.Embedding's own

    def reserve(self, max_len: int) -> None:
        """Refuse a KV cache for positions past the table."""
        if max_len > self.num_embeddings:
            raise TinyGPTError(f"a GPT-2 KV cache cannot outgrow block_size={self.num_embeddings} (asked for {max_len})")

    def turn_back(self, k: torch.Tensor, n: int) -> torch.Tensor:
        raise TinyGPTError("a GPT-2 KV cache cannot slide (learned positions): re-prefill the last window")


class RotaryPositions(nn.Module):
    """Llama's position encoding: nothing learned; attention turns q and k by each position's angles.

    The cos and sin tables (buffers, never in a state_dict) cover block_size positions and are
    extended on demand, so a KV cache may run past block_size. And since a query's score with a
    key depends only on their distance, a full cache slides: see slide().
    """

    cache_past_context = "slide"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim, self.theta = cfg.head_dim, cfg.rope_theta
        cos, sin = rope_cache(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (block_size, hs)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids (T,) -> cos, sin (T, hs), or per row (B, T) -> (B, 1, T, hs): the rotation at each position, for apply_rope."""
        cos, sin = F.embedding(pos, self.cos), F.embedding(pos, self.sin)  # a row lookup, cheaper than indexing
        return (cos, sin) if pos.dim() == 1 else (cos.unsqueeze(1), sin.unsqueeze(1))

    def reserve(self, max_len: int) -> None:
        """Extend the tables to cover positions [0, max_len)."""
        if max_len > self.cos.size(0):
            cos, sin = rope_cache(self.head_dim, max_len, self.theta)
            self.cos, self.sin = cos.to(self.cos), sin.to(self.sin)

    def turn_back(self, k: torch.Tensor, n: int) -> torch.Tensor:
        """Keys (..., S, hs) as if each sat n positions earlier: turned by the angle -n*theta_i.

        This is what lets a full KV cache slide: a query's score with a key depends only on
        their distance, so keys moved n slots down and turned back n positions score as before.
        """
        return apply_rope(k, self.cos[n], -self.sin[n])  # cos(-a) = cos(a), sin(-a) = -sin(a)


class EmbedSkip(nn.Module):
    """embed_skip: before block l, x += weight[l] * x0, the embeddings (B, T, C); weights start at 0."""

    def __init__(self, n_layer: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layer))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, layer: int) -> torch.Tensor:
        return x + self.weight[layer].to(x.dtype) * x0


class Family(nn.Module):
    """A model family: its trunk, everything between the token ids and the output layer.

    Each subclass chooses the family's parts once (token embedding, position encoding, block,
    final norm) under Hugging Face's names, so that state dicts map 1:1, and FAMILIES below
    names it. GPT asks it for what differs and never tests model.family. A subclass gives:
    - prefix: its attribute in Hugging Face's model, so the first part of its parameter names
    - the attribute names of its token embedding, position encoding, blocks and final norm
      (tokens, positions, blocks, final_norm: what tinygpt.analysis looks inside through)
    - head_bias: whether the output layer has a bias
    - forward(idx (B, T), pos position ids (T,) or per row (B, T), cache) -> hidden states (B, T, C)
    """

    prefix: str
    tokens_name: str
    positions_name: str
    blocks_name: str
    norm_name: str
    head_bias: bool

    @property
    def tokens(self) -> nn.Embedding:
        """The token embedding (V, C), which model.tie_weights shares with the output layer."""
        return getattr(self, self.tokens_name)

    @property
    def positions(self) -> LearnedPositions | RotaryPositions:
        """The position encoding, which also decides how a KV cache goes on past the context."""
        return getattr(self, self.positions_name)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, first to last; each maps the residual stream (B, T, C) to its next state."""
        return getattr(self, self.blocks_name)

    @property
    def final_norm(self) -> nn.Module:
        """The norm between the last block and the output layer."""
        return getattr(self, self.norm_name)


class GPT2Model(Family):
    """gpt2: token plus learned position embeddings, GPT-2 blocks, a final LayerNorm (Hugging Face's GPT2Model)."""

    prefix, tokens_name, positions_name = "transformer", "wte", "wpe"  # GPT2LMHeadModel.transformer.wte
    blocks_name, norm_name = "h", "ln_f"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embeddings
        self.wpe = LearnedPositions(cfg)
        self.drop = Dropout(cfg.dropout if cfg.embd_dropout else 0.0)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.embed_skip = EmbedSkip(cfg.n_layer) if cfg.embed_skip else None
        self.head_bias = cfg.bias_head

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, cache: CacheBatch | None = None) -> torch.Tensor:
        x = x0 = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(self.embed_skip(x, x0, i) if self.embed_skip else x, cache)
        return self.ln_f(x)


class LlamaModel(Family):
    """llama: token embeddings, Llama blocks turning q and k by rotary positions, a final RMSNorm (Hugging Face's LlamaModel)."""

    prefix, tokens_name, positions_name = "model", "embed_tokens", "rotary_emb"  # LlamaForCausalLM.model.embed_tokens
    blocks_name, norm_name = "layers", "norm"
    head_bias = False  # no biases anywhere: model.bias_* do not apply

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.rotary_emb = RotaryPositions(cfg)
        self.drop = Dropout(cfg.dropout if cfg.embd_dropout else 0.0)
        self.layers = nn.ModuleList([LlamaBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.embed_skip = EmbedSkip(cfg.n_layer) if cfg.embed_skip else None

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, cache: CacheBatch | None = None) -> torch.Tensor:
        rope = self.rotary_emb(pos)  # cos, sin (T, hs) or (B, 1, T, hs)
        x = x0 = self.drop(self.embed_tokens(idx))  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(self.embed_skip(x, x0, i) if self.embed_skip else x, rope, cache)
        return self.norm(x)


FAMILIES: dict[str, type[Family]] = {"gpt2": GPT2Model, "llama": LlamaModel}  # config.FAMILY_RULES: their config rules


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, V), or given targets the loss alone (see forward)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise TinyGPTError("config: model.vocab_size must be positive (set it from the tokenizer)")
        self.cfg = cfg

        trunk = FAMILIES[cfg.family](cfg)
        self.add_module(trunk.prefix, trunk)  # self.transformer or self.model, as in Hugging Face's classes
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=trunk.head_bias)
        if cfg.tie_weights:
            self.lm_head.weight = trunk.tokens.weight  # one matrix reads tokens in and scores them out
        for i, attn in enumerate(m for m in self.modules() if isinstance(m, CausalSelfAttention)):
            attn.layer = i

        if cfg.init == "gpt2":  # "pytorch": the modules have initialised themselves
            self.apply(self._init_weights)
        # Projections that write into the residual stream are scaled down so that its variance
        # does not grow with depth (GPT-2 paper: 2 such writes per layer), or start at zero
        # (zero_init_proj), so that every block starts as the identity.
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "o_proj.weight", "down_proj.weight")):
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)
                elif cfg.init == "gpt2":
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @property
    def trunk(self) -> Family:
        """The family's modules between token ids and lm_head (self.transformer or self.model)."""
        return getattr(self, FAMILIES[self.cfg.family].prefix)

    @property
    def cache_past_context(self) -> str:
        """How decoding goes on once the KV cache is full, the family's position encoding decides:
        "slide" (positions.turn_back: nothing runs again) or "reprefill" (run the last tokens again from 0)."""
        return self.trunk.positions.cache_past_context

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: CacheBatch | None = None,
        last_only: bool = False,
    ):
        """idx (B, T) token ids -> (logits (B, T, V), None), or (None, loss) given targets.

        targets (B, T): mean cross-entropy over positions whose target is not -1. Training needs
        only the loss; returned from a compiled graph, the logits would be a view of an
        intermediate, which torch (2.11 and 2.13 seen) rebuilds with garbage sizes when
        torch.compile's AOTAutograd cache is warm from an earlier run (RuntimeError "invalid shape").
        cache: a view of a decoding engine's KV cache (see hidden_states).
        last_only: logits (B, 1, V) for the last position only, all that predicting the next
        token needs; the output layer is the largest product of a short pass.
        """
        x = self.hidden_states(idx, cache)  # (B, T, C)
        logits = self.lm_head(x[:, -1:] if last_only else x)  # (B, T, V)
        if targets is None:
            return logits, None
        # float32 math: a bf16 log-softmax over a large vocabulary is too coarse
        return None, CrossEntropy.apply(logits.view(-1, logits.size(-1)), targets.view(-1))

    def hidden_states(self, idx: torch.Tensor, cache: CacheBatch | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final norm's output (B, T, C), what lm_head scores.

        Without a cache the tokens sit at positions [0, T), T <= block_size. With one, row b's
        tokens sit at positions cache.pos[b] (B, T) and attend to that row's cached past too;
        the engine that owns the cache keeps the positions inside what the family allows.
        """
        T = idx.size(1)
        if cache is None:
            if T > self.cfg.block_size:
                raise TinyGPTError(f"sequence of {T} tokens is longer than the model's block_size={self.cfg.block_size}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,) position ids
        else:
            pos = cache.pos  # (B, T)
        return self.trunk(idx, pos, cache)

    def upgraded(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's tensors named as this code names them: those an older tinygpt wrote with
        Llama's fused `qkv_proj.weight` get it split into q_proj, k_proj and v_proj. Others as they are."""
        tensors = dict(tensors)
        for name, module in self.named_modules():
            if isinstance(module, LlamaAttention):
                module.split_fused_qkv(tensors, f"{name}.")
        return tensors

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, a tied matrix counted once.

        non_embedding: leave out lookup tables (position embeddings, and the token embedding
        unless it is tied to lm_head, where it does a matmul), as in the scaling-law papers.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            tables = [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]
            n -= sum(w.numel() for w in tables if w is not self.lm_head.weight)
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, forward and backward (PaLM appendix B, nanoGPT's estimate_mfu).

        6 per matmul weight (2 forward, 4 backward), plus 12 per layer, head, head channel and
        context position for the attention scores and their weighted sum at full block_size.
        """
        cfg = self.cfg
        attention = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
        return 6 * self.num_params(non_embedding=True) + attention
