"""What the training benchmarks share: the shared TinyStories text, the seed recipe baseline, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN = SHARED / "data" / "tinystories" / "train.txt"
VALID = SHARED / "data" / "tinystories" / "valid.txt"
SEED_RECIPE = SHARED / "baselines" / "seed_recipe.py"


def emit(record: dict) -> None:
    """One JSON line, with the load average: other work on the machine slows every side."""
    record["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(record), flush=True)


def run_seed_recipe(seconds: float, threads: int) -> dict:
    """The seed recipe in its own process for `seconds` of training; its final JSON line
    (iters, train_s, tokens_per_s, val_bpb over all of valid.txt)."""
    command = [sys.executable, str(SEED_RECIPE), str(TRAIN), str(VALID), "--seconds", str(seconds),
               "--iters", "1000000000", "--threads", str(threads)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return next(json.loads(line) for line in out.splitlines() if line.startswith("{") and '"final"' in line)
