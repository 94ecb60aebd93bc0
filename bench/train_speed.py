"""Benchmark training speed: a preset in our Trainer against the same model written the plain way.

usage: python bench/train_speed.py [--preset seed|cpu-10min] [--seconds 20] [--repeats 3] [--threads 1]
                                   [--compile] [--profile] [--workdir DIR]

Two pairs, each the same model, data, dtype and optimizer on both sides:
  --preset seed       our `seed` preset (float32) against the seed recipe itself,
                      ../shared/baselines/seed_recipe.py: its own code up to its training loop is run
                      in this process (model, AdamW, data as a Python-built int64 tensor), and its loop
                      body is the step: get_batch, forward, zero_grad, backward, step.
  --preset cpu-10min  our `cpu-10min` preset (Llama 4 x 128, its autocast dtype, fused AdamW, clipping
                      at 1.0) against NanoGPTLlama below: the same model written the way nanoGPT and
                      llama2.c write it (nn.Linear, nn.RMSNorm, rotary turns, SwiGLU, nn.Dropout and
                      scaled_dot_product_attention's own dropout), the same weights, the same
                      optimizer (optim.make_optimizer), the same autocast, the same loss.
Ours is Trainer.train_step, everything included (learning rate, loss and byte bookkeeping,
gradient norm). With --compile, a third side: ours with train.compile = "on".

All sides live in one process and take turns: each round runs every side for --seconds of
steps (after 3 warm-up steps in the first round), so load from other work on the machine falls
on all of them alike. Each run records wall-clock tokens/s and tokens per CPU-second (process
CPU time: on one thread other jobs barely change it; with more threads it counts the threads'
waiting too), and the 1-minute load average; the warm-up line says how many tensor ops one
step dispatches (forward, backward, optimizer), which decides how often threads wait for each other. The figures are medians of the per-round ratios
ours / baseline. Our Trainer sets glibc's malloc to keep freed memory (common.keep_freed_memory);
that is process-wide, so the baselines run with it too: the ratios compare the steps' code, not
how often each side's allocations fault in fresh pages. Achieved GFLOP/s = tokens/s x training FLOPs per token (GPT.flops_per_token).

Prints JSON lines: one per run, one summary; with --profile, torch.profiler's table of the top
ops (self CPU time) of each side's steps after the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from baseline import SEED_RECIPE, TRAIN, VALID, emit
from step_cost import make_trainer
from tinygpt.config import ModelConfig
from tinygpt.optim import make_optimizer
from tinygpt.shards import is_prepared
from tinygpt.train import Trainer

WARMUP_STEPS = 3
BASELINES = {"seed": "recipe", "cpu-10min": "nanogpt"}


# ---------------------------------------------------------------- the nanoGPT-style twin of a Llama preset


class NanoGPTAttention(nn.Module):
    """nanoGPT's CausalSelfAttention with rotary positions: one c_attn, split, heads, SDPA (its dropout too)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rotate-half rotary turn of x (B, nh, T, hs), cast back as llama2.c does."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


class NanoGPTSwiGLU(nn.Module):
    """llama2.c's FeedForward: w2(silu(w1(x)) * w3(x)), then dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.n_embd, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.n_embd, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, cfg.hidden_dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class NanoGPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps), nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn, self.mlp = NanoGPTAttention(cfg), NanoGPTSwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class NanoGPTLlama(nn.Module):
    """A Llama model config written the plain way: token ids (B, T) -> (logits (B, T, V), loss).

    Only what the cpu-10min preset uses: tied embeddings, as many key/value heads as query heads,
    SiLU gates, no qk_norm or embedding skips (ValueError otherwise). The loss is taken on
    float32 logits, as ours is.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        unsupported = {
            "family": cfg.family != "llama",
            "n_kv_head": cfg.kv_heads != cfg.n_head,
            "head_size": cfg.head_dim * cfg.n_head != cfg.n_embd,
            "activation": cfg.activation == "relu2",  # every other value gates with SiLU in llama
            "tie_weights": not cfg.tie_weights,
            "qk_norm": cfg.qk_norm,
            "embed_skip": cfg.embed_skip,
        }
        if any(unsupported.values()):
            raise ValueError(f"NanoGPTLlama does not write {[k for k, v in unsupported.items() if v]}")
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout if cfg.embd_dropout else 0.0),
                "h": nn.ModuleList([NanoGPTBlock(cfg) for _ in range(cfg.n_layer)]),
                "ln_f": nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        # Hugging Face's rotary tables, written out here: both channels of a pair share an angle
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
        angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float32), inv_freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)  # (block_size, hs)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.size(1)
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.transformer.drop(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x, cos, sin)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


TWIN_NAMES = [  # ours -> NanoGPTLlama's parameter names
    ("model.embed_tokens.", "transformer.wte."),
    ("model.layers.", "transformer.h."),
    ("model.norm.", "transformer.ln_f."),
    ("input_layernorm.", "ln_1."),
    ("post_attention_layernorm.", "ln_2."),
    ("self_attn.o_proj.", "attn.c_proj."),
    ("mlp.gate_proj.", "mlp.w1."),
    ("mlp.up_proj.", "mlp.w3."),
    ("mlp.down_proj.", "mlp.w2."),
]


def twin_of(model: nn.Module) -> NanoGPTLlama:
    """A NanoGPTLlama holding copies of a tinygpt Llama model's weights."""
    twin = NanoGPTLlama(model.cfg)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            continue  # nanoGPT fuses them: c_attn, below
        for ours, theirs in TWIN_NAMES:
            name = name.replace(ours, theirs)
        state[name] = tensor.clone()
    for i, layer in enumerate(model.model.layers):
        state[f"transformer.h.{i}.attn.c_attn.weight"] = layer.self_attn.qkv_weight().detach().clone()
    twin.load_state_dict(state)
    return twin


# ---------------------------------------------------------------- the sides


@dataclass
class Side:
    """One way of training: step() runs one optimizer step of tokens_per_step tokens of `model`."""

    name: str
    step: Callable[[], None]
    tokens_per_step: int
    flops_per_token: int
    model: nn.Module


def ours(preset: str, data: Path, threads: int, compile_: bool, run_dir: Path) -> tuple[Side, Trainer]:
    # full windows every step, as the twin's (a curriculum's short ones cost less)
    variant = f"train.compile={'on' if compile_ else 'off'},train.short_block_size=0"
    trainer = make_trainer(preset, data, threads, variant, run_dir)
    name = "compiled" if compile_ else "ours"
    side = Side(name, trainer.train_step, trainer.tokens_per_step, trainer.model.flops_per_token(), trainer.model)
    return side, trainer


def seed_recipe(threads: int, flops_per_token: int) -> Side:
    """The seed recipe's own code up to its training loop, run here; its loop body as the step."""
    source = SEED_RECIPE.read_text(encoding="utf-8")
    setup, loop, _ = source.partition("\nt1 = time.time()")
    if not loop:
        raise SystemExit(f"{SEED_RECIPE}: its training loop no longer starts with 't1 = time.time()'")
    recipe = {"__name__": "seed_recipe"}
    argv, sys.argv = sys.argv, [str(SEED_RECIPE), str(TRAIN), str(VALID), "--threads", str(threads)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its JSON lines about data and parameters
            exec(compile(setup, str(SEED_RECIPE), "exec"), recipe)  # noqa: S102 (the shared baseline, run as it is)
    finally:
        sys.argv = argv
    m, opt, get_batch, data = recipe["m"], recipe["opt"], recipe["get_batch"], recipe["data"]

    def step() -> None:
        xb, yb = get_batch(data)
        _, loss = m(xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Side("recipe", step, recipe["batch_size"] * recipe["block_size"], flops_per_token, m)


def nanogpt(trainer: Trainer) -> Side:
    """The preset's model as NanoGPTLlama (the same weights), its optimizer, autocast, clipping and data."""
    twin = twin_of(trainer.model).train()
    t = trainer.cfg.train
    optimizer = make_optimizer(twin, t, "cpu")
    optimizer.set_lr(t.lr)
    loader = trainer.loader

    def step() -> None:
        x, y = loader.next_batch()
        with trainer.autocast:
            _, loss = twin(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), t.grad_clip)
        optimizer.step(trainer.scaler)
        optimizer.zero_grad(set_to_none=True)

    return Side("nanogpt", step, trainer.tokens_per_step, trainer.model.flops_per_token(), twin)


# ---------------------------------------------------------------- timing


def timed(side: Side, seconds: float) -> dict:
    """Steps for `seconds` of wall clock: tokens per wall second and per CPU second."""
    steps, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        side.step()
        steps += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tokens = steps * side.tokens_per_step
    return {
        "steps": steps,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_s": round(tokens / wall),
        "tokens_per_cpu_s": round(tokens / cpu),
        "cpu_ms_per_step": round(1000 * cpu / steps, 1),
    }


class OpCounter(TorchDispatchMode):
    """Counts the tensor ops that reach a kernel (forward, backward and optimizer), views left out."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        return func(*args, **(kwargs or {}))


def ops_per_step(side: Side) -> int:
    """How many ops one step dispatches: on a busy machine each multi-threaded op waits for its slowest thread."""
    with OpCounter() as counter:
        side.step()
    return counter.ops


def profile(side: Side, steps: int = 10) -> str:
    """torch.profiler's table of a side's top ops by self CPU time over `steps` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            side.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def prepare(workdir: Path, preset: str) -> Path:
    """TinyStories train/valid prepared with the preset's tokenizer, once per workdir."""
    data = workdir / preset
    if not is_prepared(data):
        command = [sys.executable, "-m", "tinygpt", "prepare", str(TRAIN), "--val", str(VALID), "--out", str(data),
                   "--config", preset]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(BASELINES), default="seed", help="which pair to time")
    p.add_argument("--seconds", type=float, default=20, help="timed training seconds per side per round")
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating runs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time ours with train.compile = on")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of each side's step")
    p.add_argument("--workdir", help="where the data is prepared (default: a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(args.workdir or tmp), args.preset)
        ours_side, trainer = ours(args.preset, data, args.threads, False, Path(tmp) / "ours")
        if args.preset == "seed":
            baseline = seed_recipe(args.threads, ours_side.flops_per_token)
        else:
            baseline = nanogpt(trainer)
        sides = [baseline, ours_side]
        if args.compile:
            sides.append(ours(args.preset, data, args.threads, True, Path(tmp) / "compiled")[0])
        for side in sides:
            start = time.perf_counter()
            for _ in range(WARMUP_STEPS):
                side.step()
            warmup_s = round(time.perf_counter() - start, 1)
            params = sum(p.numel() for p in side.model.parameters())  # the same model on every side
            emit({"warmup": side.name, "steps": WARMUP_STEPS, "wall_s": warmup_s, "ops_per_step": ops_per_step(side),
                  "params": params})  # fmt: skip
        results: dict[str, list[dict]] = {side.name: [] for side in sides}
        for round_ in range(args.repeats):
            for side in sides:
                r = timed(side, args.seconds)
                results[side.name].append(r)
                emit({"run": side.name, "round": round_, "threads": args.threads, **r})
        summary = {
            "summary": "train_speed",
            "preset": args.preset,
            "threads": args.threads,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "flops_per_token": ours_side.flops_per_token,
        }
        for side in sides:
            tps = statistics.median(r["tokens_per_s"] for r in results[side.name])
            summary[f"{side.name}_tokens_per_s"] = round(tps)
            summary[f"{side.name}_gflops"] = round(tps * side.flops_per_token / 1e9, 2)
            summary[f"{side.name}_tokens_per_cpu_s"] = round(
                statistics.median(r["tokens_per_cpu_s"] for r in results[side.name])
            )
        for side in sides[1:]:
            for per in ("tokens_per_s", "tokens_per_cpu_s"):
                pairs = zip(results[side.name], results[baseline.name])
                ratios = [o[per] / b[per] for o, b in pairs]
                summary[f"{side.name}_{per}_ratios"] = [round(x, 3) for x in ratios]
                summary[f"{side.name}_{per}_ratio_median"] = round(statistics.median(ratios), 3)
        emit(summary)
        if args.profile:
            for side in sides:
                print(f"{side.name}:\n{profile(side)}", flush=True)


if __name__ == "__main__":
    main()
