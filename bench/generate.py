"""Generation speed: the KV-cached sampler against re-running the cropped context every step.

The baseline is what nanoGPT's `generate` does: each new token runs the whole context (up
to block_size tokens) through the model again. Both paths sample with the same function,
so the difference is the cache alone. Random weights: speed does not depend on training.

    python bench/generate.py                 # llama2.c's 15M shape, 1,000 tokens, both paths
    python bench/generate.py --tokens 200    # quicker

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator

import torch

from tinygpt.config import ModelConfig
from tinygpt.generate import generate_ids, sample_next
from tinygpt.model import GPT

SHAPES = {
    # llama2.c's stories15M: width 288, 6 layers, 6 heads, 32,000 SentencePiece tokens, context 256
    "15M": ModelConfig(family="llama", vocab_size=32_000, block_size=256, n_layer=6, n_head=6, n_embd=288),
    # the original write-up's model (the `seed` preset): 6 heads of 64 on a 64-wide embedding, char vocabulary
    "seed": ModelConfig(
        family="gpt2", vocab_size=100, block_size=64, n_layer=6, n_head=6, n_embd=64, head_size=64, activation="relu"
    ),
}


@torch.inference_mode()
def recompute_ids(model: GPT, idx: torch.Tensor, tokens: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """nanoGPT's generate: every step runs the whole cropped context through the model again."""
    block_size = model.cfg.block_size
    for _ in range(tokens):
        logits, _ = model(idx[:, -block_size:])
        nxt = sample_next(logits[:, -1], 0.8, generator=generator)
        idx = torch.cat((idx, nxt), dim=1)
        yield nxt


def measure(shape: str, path: str, steps: Iterator[torch.Tensor]) -> dict:
    """Time each step of a token iterator: wall clock, and this process's CPU time, which
    other processes on the same cores inflate much less (with one thread)."""
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
        "load_1m": round(os.getloadavg()[0], 2),  # other processes on the same cores slow both paths
    }


def run(shape: str, model: GPT, path: str, tokens: int) -> dict:
    """Generate `tokens` tokens after one end-of-text token (a new story) on one path, timed."""
    make = generate_ids if path == "kv_cache" else recompute_ids
    prompt = torch.zeros((1, 1), dtype=torch.long)
    return measure(shape, path, make(model, prompt, tokens, generator=torch.Generator().manual_seed(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="new tokens per measurement (default: 1000)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's choice (default: 1)")
    parser.add_argument("--skip-uncached", action="store_true", help="measure only the cached path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for shape, cfg in SHAPES.items():
        model = GPT(cfg).eval()
        run(shape, model, "kv_cache", 20)  # warm-up: allocator, kernels
        cached = run(shape, model, "kv_cache", args.tokens)
        print(json.dumps(cached), flush=True)
        if shape == "15M" and not args.skip_uncached:
            uncached = run(shape, model, "recompute", args.tokens)
            uncached["cache_speedup"] = round(cached["tokens_per_s"] / uncached["tokens_per_s"], 2)
            uncached["cache_speedup_cpu"] = round(cached["tokens_per_cpu_s"] / uncached["tokens_per_cpu_s"], 2)
            print(json.dumps(uncached), flush=True)


if __name__ == "__main__":
    main()
