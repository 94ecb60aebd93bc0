"""The run folder's decisions: when to save, what is best, where to resume, which run a checkpoint is in;
and its start record."""

from __future__ import annotations

import json

import pytest

from tinygpt.common import TinyGPTError
from tinygpt.config import load_config
from tinygpt.run import Run, find_checkpoint, is_best, run_of


def test_a_checkpoint_every_interval_and_after_the_final_step():
    run = Run("r", ckpt_interval=10)
    assert [s for s in range(1, 36) if run.should_save(s, final=s == 35)] == [10, 20, 30, 35]
    assert run.should_save(7, final=True)  # a stop request saves at once
    assert [s for s in range(1, 36) if Run("r").should_save(s, final=s == 35)] == [35]  # interval 0: only the last


def test_best_is_the_lowest_score_after_step_0_and_is_saved_with_progress():
    run = Run("r")
    assert not run.update_best(0, 0.5)  # the untrained model is never the best, however it scores
    assert [run.update_best(step, bpb) for step, bpb in [(10, 3.0), (20, 2.5), (30, 2.7), (40, 2.5)]] == [
        True,
        True,
        False,
        False,  # a tie is not better: best/ keeps the earlier weights
    ]
    resumed = Run("r")
    resumed.load_state_dict(run.state_dict())
    assert resumed.best_val_bpb == 2.5 and not resumed.update_best(50, 2.6)


def test_resume_points(tmp_path):
    run = Run(tmp_path)
    assert run.resume_point("auto") is None  # nothing written yet: the run starts from the beginning
    half = run.step_folder(10)
    half.mkdir(parents=True)
    assert run.resume_point("auto") is None  # a folder without its marker does not count
    with pytest.raises(TinyGPTError, match="not a complete checkpoint"):
        run.resume_point(half)
    with pytest.raises(TinyGPTError, match="incomplete checkpoint"):
        find_checkpoint(half)


def test_the_run_a_checkpoint_belongs_to(tmp_path):
    run = Run(tmp_path / "stories")
    assert run_of(run.best) == run_of(run.step_folder(100)) == run.folder
    assert run_of(tmp_path / "elsewhere") is None
    assert Run.of_checkpoint(run.step_folder(100)).folder == run.folder
    assert Run.of_checkpoint(tmp_path / "elsewhere").folder == tmp_path  # a checkpoint outside a run
    assert is_best(run.best) and not is_best(run.step_folder(100))


def test_the_start_record_holds_what_the_run_was_asked_to_do(tmp_path):
    cfg = load_config("tiny", {"train.max_iters": "7"})
    run = Run(tmp_path / "new")
    run.record_start(cfg, tmp_path / "text.txt", None)
    record = json.loads(run.start.read_text())
    assert record["data"] == str(tmp_path / "text.txt") and record["init_from"] is None
    assert load_config(None, base=record["config"]) == cfg
