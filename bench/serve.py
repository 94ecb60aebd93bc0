"""Serving speed: requests per second and time to first token under concurrent clients, and
what streaming over HTTP costs against calling the sampler directly.

For each shape, a checkpoint with random weights is written to a temporary folder (speed
does not depend on training) and measured three ways. Every request is the same prompt, 64
tokens at temperature 0.8 with its own seed; the direct and 1-client runs send the same
seeds, and the bench checks that they generate the same text.

  direct     Sampler.from_path(checkpoint).stream(...), one request after another, on a worker
             thread as the server runs it
  1 client   `python -m tinygpt serve checkpoint`, one streaming client, one request after another
  N clients  the same server, N concurrent streaming clients for each N of --clients (the
             engine decodes up to --max-batch of them together)

The tokenizer is a stand-in char tokenizer of the shape's vocabulary size (ASCII, then CJK
characters): it makes a 32,000-token vocabulary without training one, and costs what any
tokenizer costs per token here. The clients run in this process, on the same cores as the server.

The machine may be shared, so wall-clock figures are the fastest of --repeat interleaved runs
(every run's tokens/s is listed too), and the overhead is also given in CPU time, which other
jobs disturb far less: CPU milliseconds per token of the server process against those of the
direct sampler. torch runs on one thread in both processes (--threads): with a 2-thread pool
on 2 busy cores, per-token times swung several-fold from one run to the next.

    python bench/serve.py                     # tiny and 15M; 1, 4 and 16 clients x 2 requests, 64 tokens each
    python bench/serve.py --shapes tiny --repeat 1

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import torch

from tinygpt.checkpoint import save_checkpoint
from tinygpt.config import Config, ModelConfig, TokenizerConfig, dump_toml
from tinygpt.generate import Sampler
from tinygpt.model import GPT
from tinygpt.run import Run as RunFolder
from tinygpt.tokenizers import CharTokenizer

SHAPES = {
    # the `tiny` preset's model
    "tiny": ModelConfig(family="gpt2", vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32),
    # llama2.c's stories15M: width 288, 6 layers, 6 heads, 32,000 tokens, context 256
    "15M": ModelConfig(family="llama", vocab_size=32_000, block_size=256, n_layer=6, n_head=6, n_embd=288),
}
PROMPT = "Once upon a time"


def write_checkpoint(cfg: ModelConfig, folder: Path) -> Path:
    """A random-weights checkpoint of shape cfg, with a char tokenizer of its vocabulary size."""
    ascii_chars = "".join(map(chr, range(32, 127))) + "\n"
    chars = ascii_chars + "".join(chr(0x4E00 + i) for i in range(cfg.vocab_size - 2 - len(ascii_chars)))
    tokenizer = CharTokenizer(chars)
    tokenizer.save(folder / "tokenizer")
    torch.manual_seed(0)
    model = GPT(cfg)
    config = dump_toml(Config(model=cfg, tokenizer=TokenizerConfig(kind="char")))
    return save_checkpoint(RunFolder(folder).step_folder(1), {"model": model.state_dict(), "progress": {"step": 1}}, config, folder / "tokenizer")


@dataclass
class Reply:
    ttft: float  # seconds from sending the request to its first text
    tokens: int
    text: str


@dataclass
class Run:
    seconds: float
    cpu_here: float  # CPU seconds of this process: the direct sampler, or the HTTP clients
    cpu_server: float  # CPU seconds of the server process
    replies: list[Reply]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.replies)


def timed(work: Callable[[], list[Reply]], server: psutil.Process) -> Run:
    def cpu(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    wall, here, there = time.perf_counter(), time.process_time(), cpu(server)
    replies = work()
    return Run(time.perf_counter() - wall, time.process_time() - here, cpu(server) - there, replies)


def direct(sampler: Sampler, seeds: list[int], tokens: int) -> list[Reply]:
    """The requests through Sampler.stream on a worker thread, one after another."""
    threads = torch.get_num_threads()

    def one(seed: int) -> Reply:
        torch.set_num_threads(threads)  # per thread: a new one starts with torch's default, and sums differ in the last bits
        start, first, parts = time.perf_counter(), None, []
        for piece in sampler.stream(PROMPT, max_new_tokens=tokens, temperature=0.8, seed=seed):
            first = first or time.perf_counter() - start
            parts.append(piece)
        text = "".join(parts)
        return Reply(first, len(sampler.tokenizer.encode(text)), text)  # char tokenizer: a token per character

    with ThreadPoolExecutor(1) as worker:
        return list(worker.map(one, seeds))


async def one_request(client: httpx.AsyncClient, seed: int, tokens: int) -> Reply:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    start, first, parts, count = time.perf_counter(), None, [], 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
            elif chunk["choices"][0]["text"]:
                first = first or time.perf_counter() - start
                parts.append(chunk["choices"][0]["text"])
    return Reply(first, count, "".join(parts))


def clients(url: str, n: int, seeds: list[int], tokens: int) -> list[Reply]:
    """The requests from n concurrent streaming clients, each taking the next request when done with one."""
    todo = list(enumerate(seeds))
    replies: list = [None] * len(seeds)

    async def client_loop(client):
        while todo:
            i, seed = todo.pop(0)
            replies[i] = await one_request(client, seed, tokens)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(n)))

    asyncio.run(main())
    return replies


def start_server(checkpoint: Path, threads: int, *flags: str) -> tuple[subprocess.Popen, str]:
    """`python -m tinygpt serve checkpoint` on a free port, with more flags if given; the process and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tinygpt", "serve", str(checkpoint), "--port", "0", "--device", "cpu", *flags],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},  # torch's default thread count
    )
    for line in process.stdout:
        if match := re.search(r"http://[^ ]+/", line):
            return process, match.group(0)
    raise SystemExit(f"tinygpt serve exited with {process.wait()} before printing its URL")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def report(shape: str, mode: str, runs: list[Run], direct_runs: list[Run] | None = None, dtype: str = "auto") -> dict:
    """The fastest run's figures, every run's tokens/s, and CPU ms per token (median over runs)."""
    best = min(runs, key=lambda run: run.seconds)
    ttft = sorted(r.ttft for r in best.replies)
    out = {
        "shape": shape,
        "mode": mode,
        "requests": len(best.replies),
        "tokens": best.tokens,
        "requests_per_s": round(len(best.replies) / best.seconds, 2),
        "tokens_per_s": round(best.tokens / best.seconds, 1),
        "tokens_per_s_runs": [round(run.tokens / run.seconds, 1) for run in runs],
        "ttft_ms_median": ms(statistics.median(ttft)),
        "ttft_ms_p95": ms(ttft[round(0.95 * (len(ttft) - 1))]),
    }
    if direct_runs is None:
        out["cpu_ms_per_token"] = ms(statistics.median(run.cpu_here / run.tokens for run in runs))
    else:
        direct_best = max(run.tokens / run.seconds for run in direct_runs)
        direct_cpu = statistics.median(run.cpu_here / run.tokens for run in direct_runs)
        server_cpu = statistics.median(run.cpu_server / run.tokens for run in runs)
        out |= {
            "cpu_ms_per_token": ms(server_cpu),
            "client_cpu_ms_per_token": ms(statistics.median(run.cpu_here / run.tokens for run in runs)),
            "overhead_wall": round(direct_best / (best.tokens / best.seconds), 3),  # direct tokens/s over the server's
            "overhead_cpu": round(server_cpu / direct_cpu, 3),
        }
    return out | {"dtype": dtype, "threads": torch.get_num_threads(), "load_1m": round(os.getloadavg()[0], 2)}


def bench_shape(shape: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(SHAPES[shape], Path(tmp))
        sampler = Sampler.from_path(checkpoint, "cpu", args.dtype)
        process, url = start_server(checkpoint, args.threads, "--dtype", args.dtype)
        server = psutil.Process(process.pid)
        try:
            sequential = list(range(args.sequential))
            direct(sampler, [0, 1], args.tokens)  # warm-up: allocator, kernels, connections
            clients(url, 1, [0, 1], args.tokens)
            alone, one, many = [], [], {n: [] for n in args.clients if n > 1}
            for _ in range(args.repeat):  # interleaved: a burst of load from elsewhere falls on all alike
                alone.append(timed(lambda: direct(sampler, sequential, args.tokens), server))
                one.append(timed(lambda: clients(url, 1, sequential, args.tokens), server))
                assert [r.text for r in one[-1].replies] == [r.text for r in alone[-1].replies], "server and sampler differ"
                for n, runs in many.items():
                    concurrent = list(range(1000, 1000 + n * args.requests_per_client))
                    runs.append(timed(lambda: clients(url, n, concurrent, args.tokens), server))  # noqa: B023 (called at once)
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps(report(shape, "direct", alone, dtype=args.dtype)), flush=True)
    print(json.dumps(report(shape, "server, 1 client", one, alone, dtype=args.dtype)), flush=True)
    for n, runs in many.items():
        print(json.dumps(report(shape, f"server, {n} clients", runs, alone, dtype=args.dtype)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES), help="model shapes (default: all)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per request (default: 64)")
    parser.add_argument("--clients", type=lambda s: [int(n) for n in s.split(",")], default=[4, 16],
                        help="numbers of concurrent clients, besides the 1-client run (default: 4,16)")
    parser.add_argument("--dtype", default="auto", help="decoding weights, here and in the server (default: auto)")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each concurrent client sends (default: 2)")
    parser.add_argument("--sequential", type=int, default=8, help="requests for the direct and 1-client runs (default: 8)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, here and in the server (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes:
        bench_shape(shape, args)


if __name__ == "__main__":
    main()
