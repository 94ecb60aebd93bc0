"""Benchmark training speed: the `seed` preset in our Trainer against the seed recipe written the naive way.

usage: python bench/train_speed.py [--seconds 60] [--repeats 3] [--threads 2] [--compile] [--profile]
                                   [--workdir DIR]

Both sides train the same model (6 layers, 6 heads of 64 on a 64-wide embedding, context 64,
batch 32, dropout 0.2, AdamW lr 3e-4) on ../shared/data/tinystories/train.txt, on the same
cores, each in a fresh process:
  recipe    ../shared/baselines/seed_recipe.py --seconds S --threads T (its own timing of its loop)
  ours      tinygpt's Trainer.train_step on the `seed` preset (char tokens, prepared once into
            WORKDIR), timed the same way: S seconds of steps after 3 warm-up steps
  compiled  (--compile) the same with train.compile = "on" (torch.compile, inductor on CPU); its
            warm-up steps include the compilation, which is reported apart
Runs alternate recipe, ours[, compiled] --repeats times, so load from other work on the machine
falls on all sides alike; the figure is the median of the per-round ratios ours / recipe.
Achieved GFLOP/s = tokens/s x the model's training FLOPs per token (6 per weight + attention,
GPT.flops_per_token); both sides have the same weights, so the same FLOPs per token.

Prints JSON lines: one per run, one summary; with --profile, the torch.profiler table of the top
ops of our step (self CPU time) on stderr-free stdout after the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import TRAIN, VALID, emit, run_seed_recipe
from tinygpt.shards import is_prepared

WARMUP_STEPS = 3


def run_recipe(seconds: float, threads: int) -> dict:
    final = run_seed_recipe(seconds, threads)
    return {"tokens_per_s": final["tokens_per_s"], "steps": final["iters"], "train_s": final["train_s"]}


def run_ours(data: Path, seconds: float, threads: int, compile_: bool) -> dict:
    """Our Trainer in a fresh process (this script with --worker), as the recipe runs in one."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--data",
        str(data),
        "--seconds",
        str(seconds),
        "--threads",
        str(threads),
    ] + (["--compile"] if compile_ else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def trainer_for(data: Path, threads: int, compile_: bool, run_dir: Path):
    from tinygpt.config import load_config
    from tinygpt.train import Trainer

    cfg = load_config(
        "seed", {"train.threads": str(threads), "train.compile": "on" if compile_ else "off", "train.device": "cpu"}
    )
    trainer = Trainer(cfg, data, run_dir)
    trainer.max_steps = 10**9  # the schedule needs a horizon; the seed's is constant anyway
    return trainer


def worker(args) -> None:
    """Time Trainer.train_step for --seconds; print one JSON line."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = trainer_for(Path(args.data), args.threads, args.compile, Path(run_dir))
        start = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        warmup_s = time.perf_counter() - start
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            trainer.train_step()
            steps += 1
        train_s = time.perf_counter() - start
        tokens = steps * trainer.tokens_per_step
        print(
            json.dumps(
                {
                    "tokens_per_s": round(tokens / train_s),
                    "steps": steps,
                    "train_s": round(train_s, 1),
                    "warmup_s": round(warmup_s, 1),
                    "flops_per_token": trainer.model.flops_per_token(),
                }
            )
        )


def profile(data: Path, threads: int, steps: int = 20) -> str:
    """torch.profiler's table of our step's top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = trainer_for(data, threads, False, Path(run_dir))
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                trainer.train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def prepare_char(workdir: Path) -> Path:
    data = workdir / "seed-char"
    if not is_prepared(data):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tinygpt",
                "prepare",
                str(TRAIN),
                "--val",
                str(VALID),
                "--out",
                str(data),
                "--tokenizer",
                "char",
            ],
            check=True,
            capture_output=True,
        )
    return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60, help="timed training seconds per run")
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time ours with train.compile = on")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of our step")
    p.add_argument("--workdir", help="where the char-token data is prepared (default: a temporary folder)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_char(Path(args.workdir or tmp))
        sides = ["recipe", "ours"] + (["compiled"] if args.compile else [])
        results: dict[str, list[dict]] = {side: [] for side in sides}
        flops_per_token = None
        for round_ in range(args.repeats):
            for side in sides:
                if side == "recipe":
                    r = run_recipe(args.seconds, args.threads)
                else:
                    r = run_ours(data, args.seconds, args.threads, side == "compiled")
                    flops_per_token = r["flops_per_token"]
                results[side].append(r)
                emit({"run": side, "round": round_, "threads": args.threads, **r})
        summary = {
            "summary": "train_speed",
            "threads": args.threads,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "flops_per_token": flops_per_token,
        }
        for side in sides:
            tps = statistics.median(r["tokens_per_s"] for r in results[side])
            summary[f"{side}_tokens_per_s"] = round(tps)
            summary[f"{side}_gflops"] = round(tps * flops_per_token / 1e9, 2)
        for side in sides[1:]:
            ratios = [o["tokens_per_s"] / b["tokens_per_s"] for o, b in zip(results[side], results["recipe"])]
            summary[f"{side}_ratio_median"] = round(statistics.median(ratios), 3)
            summary[f"{side}_ratios"] = [round(x, 3) for x in ratios]
        emit(summary)
        if args.profile:
            print(profile(data, args.threads), flush=True)


if __name__ == "__main__":
    main()
