"""The decoding engine: token ids in, token ids out, for many sequences at once.

It owns what decoding needs and the model does not keep: the KV cache and each sequence's
place in it. Text, HTTP and the command line are other modules' business (generate.py,
serve.py); this one knows only token ids, as nanochat's engine does.

- `SamplingParams`: how one sequence is continued, validated once, wherever it comes from
  (the command line, the Python API, an HTTP request).
- `KVCache`: keys and values of up to `rows` sequences, each row at its own length;
  `CacheBatch` is the view of some rows that one forward pass reads and writes.
- `sample_rows`: the next id of each row of logits, each row with its own parameters and
  random generator, so a sequence draws the same tokens alone or in any batch.
- `Engine`: continuous batching. Sequences join and leave between steps; each step
  prefills prompts in chunks (a long prompt never stalls the others for more than one
  chunk) and then decodes one token for every row at once. Past the context a row slides
  (llama) or runs its last tokens again (gpt2), on its own.
- `Worker`: an engine on a thread of its own, for servers: other threads submit sequences,
  and jobs that must use the model between steps (scoring, inspection).
"""

from __future__ import annotations

import copy
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .common import TinyGPTError
from .evaluate import logprobs_and_bits
from .model import GPT, LlamaBlock

DEFAULT_TEMPERATURE = 0.8  # `tinygpt sample`'s, also written into the Ollama export's Modelfile
GREEDY_BELOW = 1e-4  # temperatures under this decode greedily: dividing logits by them overflows float32
SEED_LIMIT = 2**63  # seeds in [0, 2^63): what torch.Generator.manual_seed takes without wrapping around
MAX_LOGPROBS = 20  # alternatives per token; OpenAI's own limit is 5


# ---------------------------------------------------------------- sampling parameters


class SamplingError(TinyGPTError):
    """A sampling value that cannot work: `field` names it, `problem` says why ("must be ..., got ...").

    The command line turns the field into its flag and the server into its JSON name; both
    keep the problem as it is.
    """

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.field, self.problem = name, problem


def _integer(name: str, value, low: int, high: int | None = None, high_text: str = "") -> None:
    """Refuse anything but None or an integer in [low, high) (high None: no upper bound)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingError(name, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f"at least {low}" if high is None else f"in [{low}, {high_text or high})"
        raise SamplingError(name, f"must be {bound}, got {value}")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamplingError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SamplingError(name, f"must be a finite number, got {value}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How one sequence is continued; every value is checked here, once (SamplingError names the field).

    max_new_tokens: tokens to generate, >= 0 (0: none, e.g. to score a prompt alone).
    temperature: >= 0 and finite; below GREEDY_BELOW (1e-4), 0 included, decoding is greedy
        (the likeliest token, no random draw), since logits divided by so small a number
        overflow float32.
    top_k: None, or >= 1: draw among the k likeliest tokens only.
    top_p: None, or in (0, 1]: draw among the fewest likeliest tokens whose probabilities
        add up to top_p (the likeliest always stays). Both filters apply after temperature.
    seed: None (a fresh random one), or in [0, 2^63): the same seed gives the same tokens.
    stop_at_eot: end at the end-of-text token (which is still returned, as the last token),
        when the engine was told its id.
    logprobs: None, or 0 to MAX_LOGPROBS (20): return each token's log-probability in nats
        under the model's raw distribution (before temperature and filters), with that many
        likeliest alternatives.
    """

    max_new_tokens: int = 500
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_at_eot: bool = True
    logprobs: int | None = None

    def __post_init__(self):
        if self.max_new_tokens is None:
            raise SamplingError("max_new_tokens", "must be an integer, got None")
        _integer("max_new_tokens", self.max_new_tokens, 0)
        temperature = _real("temperature", self.temperature)
        if temperature < 0:
            raise SamplingError("temperature", f"must be 0 (greedy) or positive, got {self.temperature}")
        object.__setattr__(self, "temperature", temperature)
        _integer("top_k", self.top_k, 1)
        if self.top_p is not None:
            top_p = _real("top_p", self.top_p)
            if not 0 < top_p <= 1:
                raise SamplingError("top_p", f"must be in (0, 1], got {self.top_p}")
            object.__setattr__(self, "top_p", top_p)
        _integer("seed", self.seed, 0, SEED_LIMIT, "2**63")
        if not isinstance(self.stop_at_eot, bool):
            raise SamplingError("stop_at_eot", f"must be true or false, got {self.stop_at_eot!r}")
        _integer("logprobs", self.logprobs, 0, MAX_LOGPROBS + 1)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def seeded_generator(device: str | torch.device, seed: int | None) -> torch.Generator:
    """A random stream of one sequence's own: the same seed gives the same draws, whatever
    else uses torch's global generator or sits in the same batch; no seed, a fresh one."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> torch.Tensor:
    """Next ids (B,) from last-position logits (B, V), row i drawn with params[i] and generators[i].

    Greedy rows take the argmax and draw nothing. The others shift their logits so the
    largest is 0, divide by the temperature, keep their top_k / top_p tokens, and invert the
    cumulative distribution with one uniform number from their own generator: exact, and
    ten times cheaper than torch.multinomial over 32,000 tokens. Every operation works along
    a row, so a row gives the same id alone as in any batch (given the same logits).
    """
    drawn = [i for i, p in enumerate(params) if not p.greedy]
    if len(drawn) < len(params):
        ids = logits.argmax(dim=-1)  # (B,)
    if not drawn:
        return ids
    V = logits.size(-1)
    rows = (logits if len(drawn) == len(params) else logits[drawn]).float()
    ps = [params[i] for i in drawn]
    temperatures = {p.temperature for p in ps}
    temperature = temperatures.pop() if len(temperatures) == 1 else torch.tensor([[p.temperature] for p in ps], device=logits.device)
    z = rows.sub(rows.amax(dim=-1, keepdim=True)).div_(temperature)  # <= 0, the likeliest at 0: never overflows
    ks = [p.top_k if p.top_k is not None and p.top_k < V else V for p in ps]
    if min(ks) < V:
        kth = torch.topk(z, max(ks), dim=-1).values.gather(1, torch.tensor([[k - 1] for k in ks], device=z.device))
        kth[torch.tensor(ks, device=z.device) == V] = -math.inf  # rows without top_k keep everything
        z = z.masked_fill(z < kth, -math.inf)
    weights = z.exp_()  # unnormalised probabilities: the likeliest is 1 (in place, as the division: z is ours)
    u = torch.cat([1 - torch.rand(1, generator=generators[i], device=logits.device) for i in drawn])  # (B',) in (0, 1]
    nucleus = [j for j, p in enumerate(ps) if p.top_p is not None and p.top_p < 1]
    if not nucleus:
        picked = _invert_cdf(weights, u)
    else:
        picked = torch.empty(len(drawn), dtype=torch.long, device=logits.device)
        plain = [j for j in range(len(drawn)) if j not in set(nucleus)]
        if plain:
            picked[plain] = _invert_cdf(weights[plain], u[plain])
        top_p = torch.tensor([[ps[j].top_p] for j in nucleus], device=z.device)
        sorted_w, order = weights[nucleus].sort(dim=-1, descending=True)
        before = sorted_w.cumsum(dim=-1) - sorted_w  # mass of the likelier tokens
        sorted_w = sorted_w.masked_fill(before >= top_p * sorted_w.sum(dim=-1, keepdim=True), 0.0)
        picked[nucleus] = order.gather(-1, _invert_cdf(sorted_w, u[nucleus]).unsqueeze(1)).squeeze(1)
    if len(drawn) == len(params):
        return picked
    ids[drawn] = picked
    return ids


def _invert_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The first id whose cumulative weight reaches u (B,) in (0, 1] times the row's total: it
    always exists (u * total <= total) and has non-zero weight (u > 0)."""
    cdf = weights.cumsum(dim=-1)  # (B, V)
    return torch.searchsorted(cdf, u.unsqueeze(1) * cdf[:, -1:]).squeeze(1)


def context_keep(block_size: int) -> int:
    """Positions kept when a row's context is full: its cache slides (llama) or is rebuilt (gpt2) to this many.

    Three quarters: the model still sees most of the story, and the next quarter of the
    window is generated one cached position at a time before the row is full again, so the
    cost of making room is shared by a quarter of the window's tokens.
    """
    return block_size - max(1, block_size // 4)


# ---------------------------------------------------------------- the KV cache


class KVCache:
    """Keys and values of up to `rows` sequences, (n_layer, rows, n_kv_head, max_len, hs) each.

    Row r holds its sequence's positions [0, lengths[r]); slot i of a row is position i.
    Rows are independent: each has its own length, slides on its own (llama) and may be
    overwritten from 0 (gpt2's re-prefill, or a new sequence).
    """

    def __init__(self, model: GPT, rows: int, max_len: int | None = None):
        cfg = model.cfg
        self.max_len = max_len or cfg.block_size
        self.positions = model.trunk.positions
        self.positions.reserve(self.max_len)  # learned positions refuse a cache past block_size
        param = next(model.parameters())
        shape = (cfg.n_layer, rows, cfg.kv_heads, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.v = torch.zeros(shape, device=param.device, dtype=param.dtype)
        self.lengths = [0] * rows

    def batch(self, start: int, stop: int, T: int) -> CacheBatch:
        """The view for a forward pass of T new tokens in each of rows [start, stop), at their lengths."""
        return CacheBatch(self, start, self.lengths[start:stop], T)

    def move(self, src: int, dst: int) -> None:
        """Copy row src's positions into row dst (which it replaces)."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def slide(self, row: int, n: int) -> None:
        """Drop row's oldest n positions: [n, length) moves down to [0, length - n), its keys turned
        back n positions by the position encoding (only rotary ones can: see RotaryPositions.turn_back)."""
        length = self.lengths[row]
        if not 0 <= n <= length:
            raise TinyGPTError(f"cannot drop {n} positions from a KV cache row holding {length}")
        kept = length - n
        self.k[:, row, :, :kept] = self.positions.turn_back(self.k[:, row, :, n:length], n)
        self.v[:, row, :, :kept] = self.v[:, row, :, n:length].clone()  # clone: the two ranges overlap
        self.lengths[row] = kept


class CacheBatch:
    """What one forward pass needs of the cache: rows [start, start + B), each adding T tokens at its own length.

    pos (B, T): each new token's position. update(layer, k, v) writes the new keys and values
    and returns each row's keys and values so far, (B, nkv, S, hs) with S the longest row's
    new length. mask (B, 1, T, S) tells each query which of them it sees (its row's past and
    itself), or is None when a plain rule does: every key (all rows at one length, T = 1) or
    the causal triangle (`causal`: all rows empty before this pass).
    """

    def __init__(self, cache: KVCache, start: int, lengths: list[int], T: int):
        self.k, self.v = cache.k, cache.v
        B, first = len(lengths), lengths[0]
        device = cache.k.device
        self.rows = slice(start, start + B)
        self.end = max(lengths) + T
        if self.end > cache.max_len:
            raise TinyGPTError(f"position {self.end - 1} does not fit the KV cache of max_len={cache.max_len}")
        self.uniform = all(n == first for n in lengths)
        self.causal = self.uniform and first == 0 and T > 1
        self.seen_k, self.seen_v = cache.k[:, self.rows, :, : self.end], cache.v[:, self.rows, :, : self.end]  # views
        if self.uniform:
            self.new_k, self.new_v = cache.k[:, self.rows, :, first : first + T], cache.v[:, self.rows, :, first : first + T]
            self.pos = torch.arange(first, first + T, device=device).expand(B, T)
            self.mask = None if T == 1 or first == 0 else torch.ones(T, self.end, dtype=torch.bool, device=device).tril(first)
        else:
            self.pos = torch.tensor(lengths, device=device).unsqueeze(1) + torch.arange(T, device=device)  # (B, T)
            self.row_ids = torch.arange(start, start + B, device=device).unsqueeze(1)  # (B, 1)
            self.mask = (torch.arange(self.end, device=device) <= self.pos.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, S)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) at each row's new positions; return the rows' keys and values so far."""
        if self.uniform:  # views made once per pass, not per layer: a decoding step runs few and small operations
            self.new_k[layer].copy_(k)
            self.new_v[layer].copy_(v)
        else:  # index shapes (B, 1) and (B, T) around a slice: the values go (B, T, nkv, hs)
            self.k[layer][self.row_ids, :, self.pos] = k.transpose(1, 2)
            self.v[layer][self.row_ids, :, self.pos] = v.transpose(1, 2)
        K, V = self.seen_k[layer], self.seen_v[layer]  # (B, nkv, S, hs)
        # the cache may be kept in a wider dtype than the activations (autocast): hand back theirs
        return (K, V) if K.dtype == k.dtype else (K.to(k.dtype), V.to(v.dtype))


# ---------------------------------------------------------------- sequences


@dataclass(frozen=True)
class Token:
    """A token of a sequence: its id and, when asked for, its log-probability in nats and the
    likeliest alternatives at its position ((id, log-probability) pairs, likeliest first)."""

    id: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] | None = None


@dataclass(eq=False)
class Sequence:
    """A prompt (token ids, at least one) and its continuation as the engine decodes it.

    score_prompt: also give each prompt token after the first its log-probability given the
    tokens before it (prompt_scores), with params.logprobs alternatives (0 if None).
    The engine fills `tokens` as they are sampled, then sets `finish_reason` ("stop": the
    end-of-text token, "length": max_new_tokens, or what stop(reason) was given). Another
    thread may read both: a token is in `tokens` before the reason that follows it is set.
    """

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    score_prompt: bool = False
    tokens: list[Token] = field(default_factory=list)
    prompt_scores: list[Token] = field(default_factory=list)
    finish_reason: str | None = None
    stopping: str | None = None  # set by stop(): the engine ends the sequence before its next step
    # the engine's bookkeeping
    pending: list[int] = field(default_factory=list)  # ids to run through the model before the next draw
    context: list[int] = field(default_factory=list)  # the ids whose keys and values the row holds
    generator: torch.Generator | None = None

    def __post_init__(self):
        if not self.prompt:
            raise TinyGPTError("a sequence needs at least one prompt token (a text starts after the end-of-text token)")

    def stop(self, reason: str = "cancelled") -> None:
        """Ask the engine to end this sequence before its next step (safe from any thread)."""
        self.stopping = reason

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


# ---------------------------------------------------------------- the engine


DTYPES = ("auto", "float32", "float16", "int8")


PACK_FROM_PARAMS = 4_000_000  # "auto" packs weights from this size: 16 MB in float32, past a CPU's caches
INT8_IN_MULTIPLE = 16  # _weight_int8pack_mm's AVX-512 kernel reads the inputs 16 at a time: other widths give garbage


def decode_dtype(model: GPT, dtype: str = "auto") -> str:
    """The weights decoding uses: "float32" (the model's own, exact), "float16" (Float16Weight)
    or "int8" (Int8Weight, float16 for the layers it cannot take).

    "auto", for a float32 model of at least PACK_FROM_PARAMS parameters on a CPU that has FBGEMM
    (x86): int8 where torch's CPU kernels use AVX-512 (the 15M shape: 1.2 to 1.3x float16's tokens per
    CPU-second, BENCHMARKS.md; its AVX2 kernel is unmeasured), else float16 (1.4 to 1.6x float32).
    Otherwise float32: packing pays where reading the weights is what a step waits for, not for
    a model whose weights stay in the caches (the seed model, 0.8M parameters: 0.9x).
    Raises TinyGPTError for an unknown dtype, or float16 / int8 off an x86 CPU or for a model
    whose weights are not float32.
    """
    if dtype not in DTYPES:
        raise TinyGPTError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    param = next(model.parameters())
    x86_cpu = "fbgemm" in torch.backends.quantized.supported_engines and param.device.type == "cpu"
    if dtype in ("float16", "int8") and not x86_cpu:
        raise TinyGPTError(f"--dtype {dtype} needs an x86 CPU (FBGEMM); use --dtype float32")
    if dtype in ("float16", "int8") and param.dtype != torch.float32:
        raise TinyGPTError(f"--dtype {dtype} packs float32 weights, and this model's are {param.dtype}; use --dtype float32")
    if dtype == "auto":
        if not (x86_cpu and param.dtype == torch.float32 and model.num_params() >= PACK_FROM_PARAMS):
            return "float32"
        return "int8" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "float16"
    return dtype


class Float16Weight:
    """A linear layer's weight (out, in) and bias (out,) or None rounded to float16 and packed by
    FBGEMM; products in float32. Decoding a batch of a few rows reads every weight once per
    token and is bound by memory, not arithmetic: half the bytes, and FBGEMM's packed layout,
    made the 15M model's 31 products about 4x cheaper than float32 (BENCHMARKS.md). Lossy:
    each weight keeps 11 significant bits, and one beyond float16's range (+-65504) saturates.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        bias = None if bias is None else bias.detach().float()
        # a copy: FBGEMM's prepack saturates the float32 weight it is given in place, the model's own otherwise
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().to(torch.float32, copy=True), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 -> x W^T + b (..., out) float32."""
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)


class Int8Weight:
    """Weight-only int8 for one row at a time: each output row of a weight (out, in) stored as
    int8 times one scale, its largest magnitude / 127 (symmetric, per channel), and multiplied
    by PyTorch's CPU kernel for it, torch._weight_int8pack_mm (what gpt-fast's int8 mode and
    torchao's CPU int8 weight-only path run). The kernel takes bfloat16 activations and scales
    and accumulates in float32; the result comes back as float32. A quarter of float32's bytes:
    decoding one sequence of the 15M shape runs 1.2 to 1.3x faster than with Float16Weight, and the
    cpu-10min model's bits per byte on valid.txt moved by 0.00012 (BENCHMARKS.md).

    The kernel pays only for a single row: from 2 rows on (batched decoding, prefill) it was
    slower than FBGEMM's float16 (the 15M head at 16 rows: 6.1 against 3.5 ms), so those
    products run on a float16 copy kept beside it (Float16Weight's numbers exactly), and a
    sequence decoded in a batch gets float16's numbers, alone int8's.

    Raises ValueError when the kernel cannot take the weight: `in` not a multiple of
    INT8_IN_MULTIPLE, or a probe product off float32's by more than the rounding explains
    (pack_weight then keeps float16 for that layer).
    """

    max_rows = 1  # products of more rows run in float16; bench/generate.py --bpb raises it to score int8's numbers

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.detach().float()
        if w.size(1) % INT8_IN_MULTIPLE:
            raise ValueError(f"int8 products need in_features divisible by {INT8_IN_MULTIPLE}, got {w.size(1)}")
        self.scales = (w.abs().amax(dim=1).clamp(min=1e-30) / 127).to(torch.bfloat16)  # (out,)
        self.weight = torch.round(w / self.scales.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8).contiguous()
        self.bias = None if bias is None else bias.detach().float()
        self.float16 = Float16Weight(weight, bias)
        probe = torch.randn(1, w.size(1), generator=torch.Generator().manual_seed(0))
        # each term's error: bfloat16's rounding of x (2^-8 relative), half a step of the int8 grid, and
        # the result's bfloat16 rounding; twice that bound still tells a rounded product from garbage
        product = probe @ w.t()
        bound = (probe.abs() @ w.abs().t() + product.abs()) / 256 + probe.abs().sum(1, keepdim=True) * self.scales.float() / 2
        expected = product if self.bias is None else product + self.bias
        if not bool(((self(probe) - expected).abs() <= 2 * bound + 1e-6).all()):
            raise ValueError("the int8 kernel's product disagrees with float32's on this weight")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 -> x W^T + b (..., out) float32: int8 for one row, float16 for more."""
        if x.numel() > self.max_rows * x.size(-1):
            return self.float16(x)
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)).to(torch.bfloat16), self.weight, self.scales)
        y = y.float().view(*x.shape[:-1], self.weight.size(0))
        return y if self.bias is None else y + self.bias


def pack_weight(weight: torch.Tensor, bias: torch.Tensor | None, dtype: str) -> Float16Weight | Int8Weight:
    """A linear layer's weight (out, in) and bias for decoding in `dtype` ("float16" or "int8"):
    int8 falls back to float16 for a weight its kernel cannot take (Int8Weight)."""
    if dtype == "int8":
        try:
            return Int8Weight(weight, bias)
        except ValueError:
            pass
    return Float16Weight(weight, bias)


class PackedLinear(nn.Module):
    """nn.Linear for decoding on a CPU with packed weights (pack_weight)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: str):
        """weight (out, in) and bias (out,) or None, as nn.Linear's; dtype "float16" or "int8"."""
        super().__init__()
        self.product = pack_weight(weight, bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x)


class PackedLlamaBlock(nn.Module):
    """A Llama block as packed decoding runs it: LlamaBlock's computation in eval mode with its
    products on packed weights (pack_weight), bit for bit what the block gives with PackedLinear
    layers, in one forward. A decoding step is a few hundred small operations, and at batch 1
    calling the block's nine submodules (norms, projections, dropout, activation) cost about a
    tenth of it; here the products are direct calls, gate_proj and up_proj one product of twice
    the width, and the norms and attention run through their own methods. Eval only.
    """

    def __init__(self, block: LlamaBlock, dtype: str):
        super().__init__()
        attn, mlp = block.self_attn, block.mlp
        self.norm_1, self.attn, self.norm_2, self.act = block.input_layernorm, attn, block.post_attention_layernorm, mlp.act
        self.qkv, self.o = pack_weight(attn.qkv_weight(), None, dtype), pack_weight(attn.o_proj.weight, None, dtype)
        self.gate_up = pack_weight(torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)), None, dtype)  # (2 * hidden, C)
        self.down = pack_weight(mlp.down_proj.weight, None, dtype)

    def forward(self, x: torch.Tensor, rope, cache: CacheBatch | None = None) -> torch.Tensor:
        """The residual stream (B, T, C) -> its next state, as LlamaBlock.forward."""
        q, k, v = self.attn.turned_heads(self.qkv(self.norm_1.forward(x)), rope)
        x = x + self.o(self.attn.attend(q, k, v, cache))
        gate, up = self.gate_up(self.norm_2.forward(x)).chunk(2, dim=-1)
        return x + self.down(self.act.forward(gate) * up)


def decoding_model(model: GPT, dtype: str) -> GPT:
    """The model as decoding runs it: itself for "float32" (or when it is already packed); for
    "float16" or "int8", a copy sharing its parameters whose Llama blocks are PackedLlamaBlock
    and other linear layers PackedLinear (decode_dtype says which), for inference only (no
    dropout). Packing the 15M model takes about a second: build it once, then start engines on it."""
    if dtype == "float32" or isinstance(model.lm_head, PackedLinear):
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    packed = copy.deepcopy(model, shared)
    _pack(packed, dtype)
    return packed


def _pack(module: nn.Module, dtype: str) -> None:
    """Replace module's Llama blocks by PackedLlamaBlock and its other linear layers by PackedLinear, all the way down."""
    for name, child in module.named_children():
        if isinstance(child, LlamaBlock):
            setattr(module, name, PackedLlamaBlock(child, dtype))
        elif isinstance(child, nn.Linear):
            setattr(module, name, PackedLinear(child.weight, child.bias, dtype))
        else:
            _pack(child, dtype)


class TransposedHead:
    """The float32 output layer as decoding runs it: a contiguous (C, V) copy of lm_head's weight.

    One row against the (V, C) weight reads it across its rows; the (C, V) copy is read in
    order, about 3x faster on CPUs for the (288 x 32000) head of a 15M model.
    """

    def __init__(self, lm_head: nn.Linear):
        self.weight_t = lm_head.weight.detach().t().contiguous()  # (C, V)
        self.bias = None if lm_head.bias is None else lm_head.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> logits (..., V)."""
        logits = torch.matmul(x, self.weight_t)
        return logits if self.bias is None else logits + self.bias


class Engine:
    """Continuous batching over one model: add() sequences at any time, step() until they are done.

    Each step: sequences waiting for a row get one (up to max_batch rows); prompts run
    through the model in chunks of at most prefill_chunk tokens per step in all (all but
    their last token, which needs no logits); then every row with a token to feed decodes
    one position together, each row at its own length, and draws its next token with its
    own parameters and generator. Rows leave when their sequence is done, and the last row
    moves into the gap, so rows [0, n) are always the busy ones.

    A row whose cache is full makes room for the next quarter of the context first, keeping
    its last context_keep(block_size) positions: llama's rotary keys slide (turned back,
    nothing runs again); gpt2's learned positions end at block_size, so its last tokens run
    again from position 0. The model always sees between three quarters of and its whole
    context, and a prompt longer than the context is cut to its last block_size tokens.

    dtype: the weights it decodes with (decode_dtype): "float32", the exact path and the
    default here (the model's weights as they are, packed ones included), "float16", "int8" or "auto".
    """

    def __init__(
        self, model: GPT, eot_id: int | None = None, max_batch: int = 1, prefill_chunk: int = 128, dtype: str = "float32"
    ):
        if max_batch < 1 or prefill_chunk < 1:
            raise TinyGPTError(f"max_batch and prefill_chunk must be at least 1, got {max_batch} and {prefill_chunk}")
        self.dtype = decode_dtype(model, dtype)
        self.model = decoding_model(model, self.dtype)
        self.eot_id = eot_id  # where stop_at_eot stops
        self.block_size = model.cfg.block_size
        self.keep = context_keep(self.block_size)
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.device = next(model.parameters()).device
        self.cache = KVCache(model, max_batch)
        lm_head = self.model.lm_head
        self.head = lm_head if isinstance(lm_head, PackedLinear) else TransposedHead(lm_head)
        self.rows: list[Sequence] = []  # sequence i holds cache row i
        self.waiting: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> Sequence:
        """Queue a sequence; it gets a row at the next step with one free."""
        if seq.score_prompt and len(seq.prompt) > self.block_size:
            raise TinyGPTError(f"a prompt to score must fit the context: {len(seq.prompt)} tokens, block_size={self.block_size}")
        self.waiting.append(seq)
        return seq

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One scheduling step; returns the sequences that got a token or finished in it.

        The model runs in eval mode (no dropout) and is back in its own mode after: a trainer
        may sample between its steps and go on exactly as if it had not.
        """
        training = self.model.training
        if training:  # a walk over every module: only when there is something to change
            self.model.eval()
        try:
            touched = self._finish_stopped()
            self._admit()
            touched += self._prefill()
            touched += self._decode()
            touched += self._finish_stopped()
        finally:
            if training:
                self.model.train()
        return list(dict.fromkeys(touched))

    def _admit(self) -> None:
        while self.waiting and len(self.rows) < self.max_batch:
            seq = self.waiting.popleft()
            seq.generator = seeded_generator(self.device, seq.params.seed)
            seq.pending = list(seq.prompt[-self.block_size :])
            seq.context = []
            self.cache.lengths[len(self.rows)] = 0
            self.rows.append(seq)
            if seq.params.max_new_tokens == 0 and (not seq.score_prompt or len(seq.pending) == 1):
                seq.stop("length")  # nothing to generate, nothing (more) to score

    def _finish_stopped(self) -> list[Sequence]:
        """End the sequences told to stop: waiting ones leave the queue, running ones free their
        rows (the last row moves into each gap)."""
        ended = [seq for seq in self.waiting if seq.stopping]
        for seq in ended:
            self.waiting.remove(seq)
            seq.finish_reason = seq.stopping
        for seq in [s for s in self.rows if s.stopping]:
            row, last = self.rows.index(seq), len(self.rows) - 1
            if row != last:
                self.cache.move(last, row)
                self.rows[row] = self.rows[last]
            self.rows.pop()
            seq.finish_reason = seq.finish_reason or seq.stopping
            seq.generator = None
            ended.append(seq)
        return ended

    def _prefill(self) -> list[Sequence]:
        """Run up to prefill_chunk prompt tokens in all, in row order, of each row all but its last pending token."""
        budget, touched = self.prefill_chunk, []
        for row, seq in enumerate(self.rows):
            if budget == 0:
                break
            n = min(budget, len(seq.pending) - 1)
            if n <= 0:
                continue
            chunk, seq.pending = seq.pending[:n], seq.pending[n:]
            idx = torch.tensor([chunk], device=self.device)
            hidden = self.model.hidden_states(idx, self.cache.batch(row, row + 1, n))  # (1, n, C)
            self.cache.lengths[row] += n
            seq.context += chunk
            budget -= n
            if seq.score_prompt:  # position i predicts the id after it, which is pending or in this chunk
                targets = (chunk + seq.pending)[1 : n + 1]
                seq.prompt_scores += self._scored(self.head(hidden[0]), targets, seq.params.logprobs or 0)
                touched.append(seq)
            if len(seq.pending) == 1 and seq.score_prompt and seq.params.max_new_tokens == 0:
                seq.stop("length")  # the whole prompt is scored and nothing is to be generated
        return touched

    def _decode(self) -> list[Sequence]:
        """One position for every row: rows with one pending token draw their next; rows still
        prefilling feed a stand-in token at their length, whose key and value their next chunk
        overwrites (one batch over rows [0, n) costs less than gathering the ready ones)."""
        self._make_room()
        ready = [i for i, seq in enumerate(self.rows) if len(seq.pending) == 1 and not seq.stopping]
        if not ready:
            return []
        idx = torch.tensor([[seq.pending[0]] for seq in self.rows], device=self.device)  # (B, 1)
        hidden = self.model.hidden_states(idx, self.cache.batch(0, len(self.rows), 1))[:, -1]  # (B, C)
        logits = self.head(hidden if len(ready) == len(self.rows) else hidden[ready])  # (B', V)
        seqs = [self.rows[i] for i in ready]
        ids = sample_rows(logits, [s.params for s in seqs], [s.generator for s in seqs]).tolist()
        for j, (row, seq, token) in enumerate(zip(ready, seqs, ids, strict=True)):
            self.cache.lengths[row] += 1
            seq.context.append(seq.pending[0])
            if seq.params.logprobs is not None:
                seq.tokens.append(self._scored(logits[j : j + 1], [token], seq.params.logprobs)[0])
            else:
                seq.tokens.append(Token(token))
            seq.pending = [token]
            if seq.params.stop_at_eot and token == self.eot_id:
                seq.stop("stop")
            elif len(seq.tokens) >= seq.params.max_new_tokens:
                seq.stop("length")
        return seqs

    def _make_room(self) -> None:
        """Rows about to feed a token past the cache: slide (llama) or rebuild from their last tokens (gpt2)."""
        for row, seq in enumerate(self.rows):
            if self.cache.lengths[row] + len(seq.pending) <= self.cache.max_len:
                continue
            drop = self.cache.lengths[row] - self.keep
            if self.model.cache_past_context == "slide":
                self.cache.slide(row, drop)
                seq.context = seq.context[drop:]
            else:  # run the last tokens again from position 0
                seq.pending = (seq.context + seq.pending)[-self.keep :]
                seq.context = []
                self.cache.lengths[row] = 0

    @staticmethod
    def _scored(logits: torch.Tensor, targets: list[int], top: int) -> list[Token]:
        """Tokens with their log-probabilities under logits (N, V), and the `top` likeliest alternatives:
        from evaluate.logprobs_and_bits, where `tinygpt eval` gets its bits."""
        ids = torch.tensor(targets, device=logits.device)
        all_logprobs, _ = logprobs_and_bits(logits, ids)  # (N, V) nats
        logprobs = all_logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).tolist()
        if not top:
            return [Token(i, lp, ()) for i, lp in zip(targets, logprobs, strict=True)]
        best = all_logprobs.topk(top, dim=-1)
        alternatives = zip(best.indices.tolist(), best.values.tolist(), strict=True)
        return [
            Token(i, lp, tuple(zip(alt_ids, alt_lps, strict=True)))
            for i, lp, (alt_ids, alt_lps) in zip(targets, logprobs, alternatives, strict=True)
        ]


# ---------------------------------------------------------------- the worker thread


class Worker:
    """An engine stepping on a thread of its own while other threads hand it work.

    submit(seq, notify): the sequence joins the engine between two steps; notify(seq) is
    called on the worker thread whenever it got tokens or finished. call(fn): fn() runs on
    the worker thread between two steps, alone with the model (scoring, inspection, anything
    that must not run beside a step), and its Future holds the result. An exception in a
    step ends every sequence then in the engine with finish_reason "error: ..." and a fresh
    cache; the worker goes on.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._notify: dict[Sequence, Callable[[Sequence], Any]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="tinygpt-engine", daemon=True)
        self._thread.start()

    def submit(self, seq: Sequence, notify: Callable[[Sequence], Any]) -> None:
        self._inbox.put(("sequence", seq, notify))

    def call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._inbox.put(("call", fn, future))
        return future

    @property
    def running(self) -> int:
        return len(self.engine.rows)

    @property
    def waiting(self) -> int:
        return len(self.engine.waiting)

    def close(self) -> None:
        """Stop every sequence and the thread (it ends after its current step)."""
        self._closed = True
        self._inbox.put(("close", None, None))
        self._thread.join()

    def _loop(self) -> None:
        while not self._closed:
            self._take(block=not self.engine.busy)
            if self._closed or not self.engine.busy:
                continue
            try:
                touched = self.engine.step()
            except Exception as e:  # noqa: BLE001 (a bug or an exhausted device ends these sequences, never the worker)
                touched = self._fail(f"{type(e).__name__}: {e}")
            for seq in touched:
                notify = self._notify.pop(seq, None) if seq.done else self._notify.get(seq)
                if notify:
                    notify(seq)
        for seq in [*self.engine.rows, *self.engine.waiting]:
            seq.finish_reason = seq.finish_reason or "cancelled"

    def _take(self, block: bool) -> None:
        """Everything handed in since the last step (waiting for the first one when idle)."""
        while True:
            try:
                kind, item, extra = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if kind == "sequence":
                self._notify[item] = extra
                self.engine.add(item)
            elif kind == "call" and extra.set_running_or_notify_cancel():
                try:
                    extra.set_result(item())
                except Exception as e:  # noqa: BLE001 (handed to whoever waits on the future)
                    extra.set_exception(e)

    def _fail(self, message: str) -> list[Sequence]:
        engine = self.engine
        failed = [*engine.rows, *engine.waiting]
        for seq in failed:
            seq.finish_reason = f"error: {message}"
        engine.rows, engine.waiting = [], deque()
        engine.cache = KVCache(engine.model, engine.max_batch)  # whatever the failed step left in it
        return failed
