"""What a training step costs a token, for variants of a preset, taking turns in one process.

usage: python bench/step_cost.py --data FOLDER [--preset cpu-10min] [--threads 2] [--steps 4] [--rounds 3]
                                 [VARIANT ...]

A VARIANT is config overrides joined by commas (`train.dtype=float32,model.n_embd=192`); the
empty string is the preset as it is, and with no VARIANT only the preset runs. The first
variant is the baseline: every other's figure is also given as a ratio to it, measured in the
same run. Each variant gets a Trainer (Trainer.train_step: forward, backward, optimizer, the
schedule's bookkeeping) on the prepared data in FOLDER, two warm-up steps, then the variants
take turns for --rounds rounds of --steps steps, so load from other work on the machine falls on
all of them alike. A curriculum's variants (train.short_block_size) time its short windows
unless `short=0` is given in the variant (then its full windows): the two kinds of step can cost
differently (BENCHMARKS.md, issue 13, ninth session). This is how the fixed-token tries of issue
13 scale a try's token budget by its cost (budget = the preset's tokens / ratio).

Prints JSON lines: one per variant (wall-clock ms per token, the median over rounds, and each
round's), then a summary with the 1-minute load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinygpt.config import load_config
from tinygpt.train import Trainer


def parse_variant(text: str) -> tuple[dict[str, str], bool]:
    """'k=v,k=v' -> (config overrides, whether to time short windows); 'short=0' picks full windows."""
    overrides = dict(item.split("=", 1) for item in text.split(",") if item)
    short = overrides.pop("short", "1") != "0"
    return overrides, short


def make_trainer(preset: str, data: Path, threads: int, variant: str, folder: Path) -> Trainer:
    overrides, short = parse_variant(variant)
    cfg = load_config(preset, {"train.threads": str(threads), "train.device": "cpu", "train.compile": "off", **overrides})
    trainer = Trainer(cfg, data, folder)
    trainer.max_steps = 10**9  # the schedule needs a horizon; a step's cost does not depend on it
    trainer.decay_start = None if short else 0  # a curriculum trains short windows until the decay starts
    return trainer


def measure(trainers: list[Trainer], steps: int, rounds: int) -> list[list[float]]:
    """Wall ms per token of each trainer's steps, one figure per round, the trainers taking turns."""
    for trainer in trainers:
        for _ in range(2):
            trainer.train_step()
    figures: list[list[float]] = [[] for _ in trainers]
    for _ in range(rounds):
        for trainer, mine in zip(trainers, figures):
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            mine.append(1000 * (time.perf_counter() - start) / (steps * trainer.tokens_per_step))
    return figures


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="*", default=[""])
    parser.add_argument("--data", type=Path, required=True, help="a prepared data folder (tinygpt prepare)")
    parser.add_argument("--preset", default="cpu-10min")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        trainers = [
            make_trainer(args.preset, args.data, args.threads, variant, Path(work) / f"run-{i}")
            for i, variant in enumerate(args.variants)
        ]
        figures = measure(trainers, args.steps, args.rounds)
    rows = []
    for variant, trainer, mine in zip(args.variants, trainers, figures):
        median = statistics.median(mine)
        rows.append(
            {
                "variant": variant,
                "tokens_per_step": trainer.tokens_per_step,
                "dtype": str(trainer.dtype).removeprefix("torch."),
                "ms_per_token": round(median, 5),
                "ratio": round(median / statistics.median(figures[0]), 3),
                "rounds": [round(x, 5) for x in mine],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {"summary": "step_cost", "preset": args.preset, "threads": args.threads}
    print(json.dumps({**summary, "load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}))
    return rows


if __name__ == "__main__":
    main()
