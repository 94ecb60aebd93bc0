"""The ten-minute CPU speedrun: train for a fixed wall-clock time, then bits per byte over ALL of valid.

usage: python bench/speedrun.py [--minutes 10 | --tokens N] [--only seed,cpu-10min,recipe] [--threads 2]
                                [--nproc 1] [--workdir DIR] [--tag NAME] [--set KEY=VALUE ...]

For each preset asked for (`seed`, `cpu-10min`):
  1. `tinygpt prepare train.txt --val valid.txt --config PRESET` (the preset's tokenizer);
  2. `tinygpt train --config PRESET --max-time Nm --train.threads T`: the budget covers
     everything the trainer does (its calibration, periodic evaluations and checkpoints);
  3. the final checkpoint (not best/, which was picked on validation data) evaluated with
     tinygpt.evaluate.evaluate(max_windows=0): bits summed over every target token of the
     validation shards / the UTF-8 bytes those tokens stand for. With the char tokenizer the
     handful of validation characters missing from train.txt are <unk>, one byte each.
`recipe` runs ../shared/baselines/seed_recipe.py --seconds 60*N and takes its own val_bpb (its
timed loop excludes its data preparation and its final evaluation).
--set KEY=VALUE passes config overrides to the tinygpt presets (for research runs).
--tokens N trains the presets for a fixed number of tokens instead (train.max_tokens): recipes
compared at a token budget are compared whatever the machine's load, which decides only how
long they take (tokens/s and the load average are reported beside the figure). --tag NAME
names the run folder (run-PRESET-NAME), so tries can share a --workdir and its prepared data.
--nproc N trains the presets in N processes of --threads threads each, launched by torchrun
(DDP over gloo): train.batch_size is per process, so a step takes N times its tokens. On a
2-core CPU two one-thread processes run a step faster than one two-thread process.
Parts run one after another, never side by side: on 2 cores they would slow each other down.
Prints JSON lines: one per part, then a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline import TRAIN, VALID, emit, run_seed_recipe
from tinygpt.shards import is_prepared

PARTS = ("seed", "cpu-10min", "recipe")


def tinygpt(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """Runs `tinygpt ARGS` (through torchrun in nproc processes when nproc > 1); exits on failure."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    command = [sys.executable, *launcher, "-m", "tinygpt", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # failures reported below
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result


def exact_bpb(run_dir: Path, data_dir: Path) -> dict:
    """Bits per byte of the run's last checkpoint over every validation token."""
    import torch

    from tinygpt.evaluate import evaluate
    from tinygpt.run import Run, load_model
    from tinygpt.shards import ShardSet

    final = Run(run_dir).latest()
    model, tokenizer = load_model(final)
    token_bytes = torch.from_numpy(tokenizer.token_bytes())
    result = evaluate(model, ShardSet(data_dir, "val"), token_bytes, model.cfg.block_size, batch_size=64, max_windows=0)
    return {"checkpoint": final.name, **result}


def run_preset(
    name: str,
    minutes: float,
    threads: int,
    workdir: Path,
    overrides: list[str],
    tokens: int = 0,
    tag: str = "",
    nproc: int = 1,
) -> dict:
    sets = [arg for kv in overrides for arg in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    tokenizer_sets = "".join(f"-{kv}" for kv in overrides if kv.startswith("tokenizer."))  # data made with them
    data, run = workdir / f"data-{name}{tokenizer_sets}", workdir / f"run-{name}{'-' + tag if tag else ''}"
    budget = ["--train.max_tokens", str(tokens), "--train.max_time", ""] if tokens else ["--max-time", f"{minutes * 60:g}s"]
    load_before = os.getloadavg()[0]
    if not is_prepared(data):
        tinygpt("prepare", str(TRAIN), "--val", str(VALID), "--out", str(data), "--config", name, *sets)
    start = time.perf_counter()
    tinygpt(
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--config",
        name,
        *budget,
        "--train.threads",
        str(threads),
        "--train.sample_tokens",
        "0",
        *sets,
        nproc=nproc,
    )
    wall_s = time.perf_counter() - start  # includes start-up and the end-of-run plot, outside the budget
    train_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in train_rows if r["kind"] == "train"]
    load_after = os.getloadavg()[0]
    result = exact_bpb(run, data)
    return {
        "part": name,
        "tag": tag,
        "minutes": None if tokens else minutes,
        "threads": threads,
        "nproc": nproc,
        "overrides": overrides,
        "steps": train_rows[-1]["step"],
        "tokens": train_rows[-1]["tokens"],
        "wall_s": round(wall_s, 1),
        "tokens_per_s": round(sorted(r["tokens_per_s"] for r in train_rows)[len(train_rows) // 2]),  # median
        "load_1min": [round(load_before, 1), round(load_after, 1)],  # at the start and the end of training
        "val_bpb": round(result["bpb"], 4),
        "val_tokens": result["tokens"],
        "val_bytes": result["bytes"],
    }


def run_recipe(minutes: float, threads: int) -> dict:
    final = run_seed_recipe(minutes * 60, threads)
    return {
        "part": "recipe",
        "minutes": minutes,
        "threads": threads,
        "steps": final["iters"],
        "tokens": final["iters"] * 32 * 64,
        "tokens_per_s": final["tokens_per_s"],
        "val_bpb": final["val_bpb"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--tokens", type=int, default=0, help="a token budget for the presets instead of --minutes")
    p.add_argument("--tag", default="", help="names the run folders: run-PRESET-TAG")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {', '.join(PARTS)}")
    p.add_argument("--threads", type=int, default=2, help="threads per training process")
    p.add_argument("--nproc", type=int, default=1, help="training processes for the presets (torchrun, gloo)")
    p.add_argument("--workdir", help="where data and runs go (default: a temporary folder, removed at the end)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the tinygpt presets, e.g. --set model.dropout=0.1",
    )
    args = p.parse_args()
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"--only: unknown parts {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        summary = {"summary": "speedrun", "minutes": args.minutes, "threads": args.threads, "nproc": args.nproc}
        for part in parts:
            if part == "recipe":
                record = run_recipe(args.minutes, args.threads)
            else:
                record = run_preset(part, args.minutes, args.threads, workdir, args.set, args.tokens, args.tag, args.nproc)
            emit(record)
            summary[f"{part}_val_bpb"] = record["val_bpb"]
        emit(summary)


if __name__ == "__main__":
    main()
