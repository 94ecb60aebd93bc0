"""Generation speed: the decoding engine at batch 1, per CPU-second, against the alternatives.

Paths, each generating after one end-of-text token (a new story) at temperature 0.8 with
random weights (speed does not depend on training), in the same process on the same cores:

  engine float32   tinygpt.engine.Engine, the exact path (`--dtype float32`)
  engine float16   the same with FBGEMM float16 weights (`--dtype float16`)
  engine int8      the same with weight-only int8 weights (`--dtype int8`, the default on AVX-512 CPUs)
  recompute        nanoGPT's generate: the whole cropped context again at every step
  llama2.c         --llama2c RUN: Karpathy's hand-written run.c (build it with gcc -Ofast),
                   on a random checkpoint of the same shape in its format; it stops at its
                   context (256 steps). Its CPU time is the child process's.

"Per CPU-second" divides by this process's CPU time (for llama2.c, the child's), which other
jobs on a shared machine inflate much less than the wall clock; every line records the
1-minute load average. Paths are interleaved over --repeat rounds.

    python bench/generate.py                              # 15M shape, 1,000 tokens, float32, float16 and int8
    python bench/generate.py --llama2c /tmp/llama2.c/run  # and run.c, same shape
    python bench/generate.py --profile float16            # torch.profiler table of one path instead
    python bench/generate.py --bpb RUN DATA               # the lossy dtypes' bits per byte, against float32's

--bpb checks the lossy path as the issue asks: the last checkpoint of RUN (the cpu-10min run
of bench/speedrun.py --workdir W: W/run-cpu-10min, W/data-cpu-10min) scored on every token
of DATA's validation shards with the weights decoding uses, float32, float16 and int8 (int8's
kernel on every row, as decoding one sequence runs it; batches of rows run its float16 copy).

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tinygpt.config import ModelConfig
from tinygpt.engine import Engine, Int8Weight, SamplingParams, Sequence, sample_rows
from tinygpt.generate import run as run_engine
from tinygpt.model import GPT

SHAPES = {
    # llama2.c's stories15M: width 288, 6 layers, 6 heads, 32,000 SentencePiece tokens, context 256
    "15M": ModelConfig(family="llama", vocab_size=32_000, block_size=256, n_layer=6, n_head=6, n_embd=288),
    # the original write-up's model (the `seed` preset): 6 heads of 64 on a 64-wide embedding, char vocabulary
    "seed": ModelConfig(
        family="gpt2", vocab_size=100, block_size=64, n_layer=6, n_head=6, n_embd=64, head_size=64, activation="relu"
    ),
}
PARAMS = SamplingParams(max_new_tokens=1000, temperature=0.8, seed=1, stop_at_eot=False)


def engine_tokens(engine: Engine, tokens: int) -> Iterator[int]:
    """The engine's tokens for one sequence, as they come."""
    seq = Sequence([0], SamplingParams(max_new_tokens=tokens, temperature=0.8, seed=1, stop_at_eot=False))
    seen = 0
    for _ in run_engine(engine, [seq]):
        yield from range(seen, len(seq.tokens))
        seen = len(seq.tokens)


@torch.inference_mode()
def recompute_tokens(model: GPT, tokens: int) -> Iterator[int]:
    """nanoGPT's generate: every step runs the whole cropped context through the model again."""
    block_size, idx = model.cfg.block_size, torch.zeros((1, 1), dtype=torch.long)
    generator = torch.Generator().manual_seed(1)
    for _ in range(tokens):
        logits, _ = model(idx[:, -block_size:])
        nxt = sample_rows(logits[:, -1], [PARAMS], [generator])
        idx = torch.cat((idx, nxt.view(1, 1)), dim=1)
        yield int(nxt)


def measure(shape: str, path: str, steps: Iterator[int]) -> dict:
    """Time each step of a token iterator: wall clock and this process's CPU time."""
    times, cpu, last = [], time.process_time(), time.perf_counter()
    for _ in steps:
        now = time.perf_counter()
        times.append(now - last)
        last = now
    cpu = time.process_time() - cpu
    ms = sorted(t * 1000 for t in times)
    return {
        "shape": shape,
        "path": path,
        "tokens": len(times),
        "tokens_per_s": round(len(times) / sum(times), 1),
        "tokens_per_cpu_s": round(len(times) / cpu, 1),
        "ms_per_token_median": round(statistics.median(ms), 2),
        "ms_per_token_p99": round(ms[int(0.99 * (len(ms) - 1))], 2),
        "threads": torch.get_num_threads(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------- llama2.c


def write_llama2c(cfg: ModelConfig, folder: Path) -> tuple[Path, Path]:
    """A random checkpoint of cfg's shape in llama2.c's legacy format, and a tokenizer.bin for its vocabulary.

    run.c's format (export.py, version 0): 7 int32 (dim, hidden_dim, n_layers, n_heads,
    n_kv_heads, vocab_size, seq_len), then float32 weights: token embedding, attention
    norms, wq, wk, wv, wo, MLP norms, w1, w2, w3, final norm, two unused RoPE tables; a
    positive vocab_size means the output layer shares the embedding.
    """
    rng = np.random.default_rng(0)
    C, H, L, V, T, hs = cfg.n_embd, cfg.hidden_dim, cfg.n_layer, cfg.vocab_size, cfg.block_size, cfg.head_dim
    kv = cfg.kv_heads * hs
    sizes = [V * C, L * C, L * C * C, L * C * kv, L * C * kv, L * C * C, L * C, L * H * C, L * C * H, L * H * C, C, T * hs]
    model = folder / "model.bin"
    with open(model, "wb") as f:
        f.write(struct.pack("7i", C, H, L, cfg.n_head, cfg.kv_heads, V, T))
        f.writelines((rng.standard_normal(n, dtype=np.float32) * 0.02).tobytes() for n in sizes)
    tokenizer = folder / "tokenizer.bin"
    with open(tokenizer, "wb") as f:
        f.write(struct.pack("i", 1))  # max_token_length
        f.writelines(struct.pack("fi", float(-i), 1) + b"a" for i in range(V))
    return model, tokenizer


def measure_llama2c(binary: str, cfg: ModelConfig) -> dict:
    """run.c at temperature 0.8 to its context length; CPU time from the child's resource usage."""
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = write_llama2c(cfg, Path(tmp))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        done = subprocess.run(
            [binary, str(model), "-z", str(tokenizer), "-t", "0.8", "-s", "1", "-n", str(cfg.block_size)],
            capture_output=True, text=True, check=True,
        )
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    reported = float(done.stderr.split("achieved tok/s:")[1].split()[0])
    steps = cfg.block_size
    return {
        "shape": "15M", "path": "llama2.c run.c", "tokens": steps, "tokens_per_s": round(steps / wall, 1),
        "tokens_per_cpu_s": round(steps / cpu, 1), "reported_tokens_per_s": round(reported, 1),
        "threads": 1, "load_1m": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------- profile


def profile(model: GPT, dtype: str, tokens: int) -> None:
    """torch.profiler over `tokens` decoding steps: each op's share of self CPU time and calls per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    engine = Engine(model, dtype=dtype)
    for _ in engine_tokens(engine, 20):
        pass
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in engine_tokens(engine, tokens):
            pass
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    print(json.dumps({"profile": dtype, "tokens": tokens, "ms_per_token": round(total / tokens / 1000, 2),
                      "load_1m": round(os.getloadavg()[0], 2)}))
    print("| op | share | calls per token | ms per token |\n| --- | ---: | ---: | ---: |")
    for e in rows[:15]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.0f}% | {e.count / tokens:.0f} | {e.self_cpu_time_total / tokens / 1000:.3f} |")


def bits_per_byte(run: str, data: str) -> None:
    """Exact bits per byte of RUN's last checkpoint over DATA's validation shards, decoding each dtype's weights."""
    from tinygpt.engine import decoding_model
    from tinygpt.evaluate import evaluate
    from tinygpt.run import Run, load_model
    from tinygpt.shards import ShardSet

    model, tokenizer = load_model(Run(run).latest())
    token_bytes = torch.from_numpy(tokenizer.token_bytes())
    Int8Weight.max_rows = sys.maxsize  # int8's numbers on every row, as decoding one sequence computes them
    for dtype in ("float32", "float16", "int8"):
        result = evaluate(decoding_model(model.eval(), dtype), ShardSet(data, "val"), token_bytes, model.cfg.block_size, 64)
        print(json.dumps({"bpb_check": dtype, **result, "load_1m": round(os.getloadavg()[0], 2)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="new tokens per measurement (default: 1000)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's choice (default: 1)")
    parser.add_argument("--dtypes", default="float32,float16,int8", help="engine paths to measure (default: float32,float16,int8)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (default: 2)")
    parser.add_argument("--recompute", action="store_true", help="also measure nanoGPT's recompute path (slow)")
    parser.add_argument("--llama2c", metavar="RUN", help="also measure llama2.c's run.c binary at this path (15M shape)")
    parser.add_argument("--profile", metavar="DTYPE", help="print a torch.profiler table of the 15M engine path instead")
    parser.add_argument("--bpb", nargs=2, metavar=("RUN", "DATA"), help="bits per byte of RUN on DATA's validation shards, float32, float16 and int8")
    args = parser.parse_args()
    if args.bpb:
        bits_per_byte(*args.bpb)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.profile:
        profile(GPT(SHAPES["15M"]).eval(), args.profile, args.tokens)
        return
    for shape, cfg in SHAPES.items():
        model = GPT(cfg).eval()
        engines = {dtype: Engine(model, dtype=dtype) for dtype in args.dtypes.split(",")}
        for engine in engines.values():
            for _ in engine_tokens(engine, 20):  # warm-up: allocator, kernels
                pass
        for _ in range(args.repeat):
            for dtype, engine in engines.items():
                print(json.dumps(measure(shape, f"engine {dtype}", engine_tokens(engine, args.tokens))), flush=True)
            if shape == "15M" and args.llama2c:
                print(json.dumps(measure_llama2c(args.llama2c, cfg)), flush=True)
        if shape == "15M" and args.recompute:
            print(json.dumps(measure(shape, "recompute", recompute_tokens(model, args.tokens))), flush=True)


if __name__ == "__main__":
    main()
