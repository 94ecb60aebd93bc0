"""Inspection speed and answer size: what `POST /v1/inspect` costs on llama2.c's 15M shape.

The first answer (surprisal, rank, entropy, top-5 and every layer's logit-lens rank and
probability of each token) for 256 tokens, and the answer about one position (attention from it
in every layer and head, the logit lens there, the nearest tokens by embedding), each timed from
the token ids to the JSON text the server sends, on one thread, the model already loaded.
Random weights (speed and size do not depend on training) and a stand-in char tokenizer of
32,000 characters (one-character pieces; the size with 8-character pieces, longer than
SentencePiece's average, is given too).

    python bench/inspection.py                  # = --repeats 7 --threads 1
    python bench/inspection.py --hot-paths      # training-step and sampling speed, for comparing checkouts

--hot-paths times what inspection must not slow down: a training step of the `seed` preset's model
(dropout on, the CPU attention path that now calls model.attention_weights) and 300 sampled tokens
of the 15M shape. Run it with PYTHONPATH pointing at each checkout in turn.

Prints one JSON line per measurement.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path, and this file would stand in for the
# standard library's `inspect` (dataclasses and torch import it): move the folder to the end.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

import argparse
import json
import statistics
import time

import numpy as np
import torch

from baseline import emit
from tinygpt.config import ModelConfig
from tinygpt.model import GPT

SHAPE_15M = ModelConfig(family="llama", vocab_size=32_000, block_size=256, n_layer=6, n_head=6, n_embd=288)
SEED = ModelConfig(family="gpt2", vocab_size=100, block_size=64, n_layer=6, n_head=6, n_embd=64, head_size=64,
                   activation="relu", dropout=0.2)
TOKENS = 256
PIECE_CHARS = 8  # a pessimistic piece length for the size estimate


def timed(work, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and CPU seconds of `repeats` calls (after one warm-up call), and the last result."""
    result = work()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus, result


def ms(seconds: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(seconds), 1), "min_ms": round(1000 * min(seconds), 1)}


def served_json(answer: dict) -> str:
    """The answer as Starlette's JSONResponse writes it."""
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":"))


def padded_size(text: str) -> int:
    """Bytes of the JSON were every token piece PIECE_CHARS characters long (pieces here are one character)."""
    pieces = text.count('"text":') + text.count('"bytes":')
    return len(text.encode()) + pieces * (PIECE_CHARS - 1)


def inspection(repeats: int) -> None:
    from tinygpt.analysis import Inspector
    from tinygpt.tokenizers import CharTokenizer

    ascii_chars = "".join(map(chr, range(32, 127))) + "\n"
    chars = ascii_chars + "".join(chr(0x4E00 + i) for i in range(SHAPE_15M.vocab_size - 2 - len(ascii_chars)))
    torch.manual_seed(0)
    inspector = Inspector(GPT(SHAPE_15M), CharTokenizer(chars))
    inspector.piece(0)  # the piece table is built once, when the model is loaded
    ids = np.concatenate([[inspector.tokenizer.eot_id], np.random.default_rng(0).integers(2, SHAPE_15M.vocab_size, TOKENS)])

    def first():
        return served_json(inspector.scores_json(inspector.score(ids, 5, lens=True)))

    def score_only():
        return inspector.score(ids, 5, lens=True)

    walls, cpus, text = timed(first, repeats)
    _, score_cpus, _ = timed(score_only, repeats)
    emit({"answer": "first", "tokens": TOKENS, "threads": torch.get_num_threads(), "cpu": ms(cpus), "wall": ms(walls), "cpu_model_and_stats": ms(score_cpus),
          "json_bytes": len(text.encode()), "json_bytes_8_char_pieces": padded_size(text)})

    for position in (0, 127, 254, 255):  # 255, the last token, is alone in a second window (its own position is 256)
        walls, cpus, text = timed(lambda p=position: served_json(inspector.position_json(ids, p)), repeats)
        emit({"answer": "position", "position": position, "keys": len(json.loads(text)["keys"]), "cpu": ms(cpus),
              "wall": ms(walls), "json_bytes": len(text.encode()), "json_bytes_8_char_pieces": padded_size(text)})


def hot_paths(repeats: int) -> None:
    from tinygpt.generate import generate_ids

    torch.manual_seed(0)
    model = GPT(SEED).train()
    x = torch.randint(0, SEED.vocab_size, (32, SEED.block_size))

    def step():
        _, loss = model(x, x)
        loss.backward()

    walls, cpus, _ = timed(lambda: [step() for _ in range(10)], repeats)
    emit({"path": "train step, seed preset model (batch 32, dropout 0.2)", "cpu_per_step": ms([c / 10 for c in cpus]),
          "wall_per_step": ms([w / 10 for w in walls])})

    sampler_model = GPT(SHAPE_15M).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)

    def sample():
        for _ in generate_ids(sampler_model, prompt, 300, generator=torch.Generator().manual_seed(1)):
            pass

    walls, cpus, _ = timed(sample, max(1, repeats // 2))
    emit({"path": "sampling, 15M shape, 300 tokens", "tokens_per_cpu_s": round(300 / statistics.median(cpus), 1),
          "tokens_per_s": round(300 / statistics.median(walls), 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement, after one warm-up (default: 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--hot-paths", action="store_true", help="time a training step and sampling instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (hot_paths if args.hot_paths else inspection)(args.repeats)


if __name__ == "__main__":
    main()
