"""bench/step_cost.py builds each variant from its own overrides, times a curriculum's short or
full windows as asked, and gives ratios to the first variant. No timing asserted."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from tinygpt.loader import TrainLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step_cost  # a bench script


def test_each_variant_trains_its_own_shape_and_is_compared_with_the_first(char_data, capsys, monkeypatch):
    shapes = Counter()
    next_batch = TrainLoader.next_batch

    def recording(self, short=False):
        x, y = next_batch(self, short)
        shapes[tuple(x.shape)] += 1
        return x, y

    monkeypatch.setattr(TrainLoader, "next_batch", recording)
    curriculum = "train.schedule=wsd,train.short_block_size=16"
    variants = ["", "train.batch_size=4", curriculum, curriculum + ",short=0"]
    argv = ["--data", str(char_data), "--preset", "tiny", "--threads", "1", "--steps", "1", "--rounds", "2"]
    rows = step_cost.main([*argv, *variants])
    # tiny: batch 16 x context 64; each variant takes 2 warm-up steps and 1 step in each of 2 rounds
    assert shapes == {(16, 64): 8, (4, 64): 4, (64, 16): 4}  # the last variant's full windows, as the first's
    assert [r["variant"] for r in rows] == variants
    assert [r["tokens_per_step"] for r in rows] == [1024, 256, 1024, 1024]
    assert rows[0]["ratio"] == 1.0 and all(r["dtype"] == "float32" and len(r["rounds"]) == 2 for r in rows)
    assert all(r["ms_per_token"] > 0 and r["ratio"] > 0 for r in rows)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[:-1] == rows and lines[-1]["summary"] == "step_cost" and len(lines[-1]["load_1min"]) == 2
