"""Checkpoint folders: what goes in comes back exactly, half-written folders never count, old ones are pruned."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinygpt import checkpoint as ckpt
from tinygpt.common import TinyGPTError
from tinygpt.config import ModelConfig, TrainConfig
from tinygpt.model import GPT
from tinygpt.optim import Optimizers, make_optimizer
from tinygpt.run import Run, find_checkpoint


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16, **overrides)
    return GPT(cfg)


def optimizers(model: GPT) -> Optimizers:
    """Muon for the hidden matrices and AdamW for the rest: two optimizers, one state dict."""
    return make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-2), "cpu")


def trained(model: GPT, steps: int = 2) -> Optimizers:
    opt = optimizers(model)
    for _ in range(steps):
        trained_step(model, opt, torch.randint(0, 50, (2, 16)))
    return opt


def save(folder, model, opt=None, step=1, tokenizer_dir=None, **progress):
    state = {"model": model.state_dict(), "progress": {"step": step, "world_size": 1, **progress}}
    if opt is not None:
        state["optimizer"] = opt.state_dict()
        state["ranks"] = [{"rng": ckpt.capture_rng("cpu"), "loader": {"batches_drawn": 3}}]
    return ckpt.save_checkpoint(folder, state, "[model]\nvocab_size = 50\n", tokenizer_dir)


@pytest.fixture
def tokenizer_dir(char_data):
    return char_data / "tokenizer"


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    model = tiny_model(tie_weights=True)
    ckpt.save_weights(model.state_dict(), tmp_path / "w.safetensors")
    stored = load_file(tmp_path / "w.safetensors")
    assert "lm_head.weight" not in stored and "transformer.wte.weight" in stored
    other = tiny_model(seed=1, tie_weights=True)
    other.load_state_dict(ckpt.read_weights(tmp_path / "w.safetensors"))
    assert other.lm_head.weight is other.transformer.wte.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name


def test_resumable_checkpoint_round_trip(tmp_path, tokenizer_dir):
    model = tiny_model()
    opt = trained(model)
    folder = save(tmp_path / "step-0000000002", model, opt, step=2, tokenizer_dir=tokenizer_dir)
    expected_rng = (random.random(), np.random.rand(), torch.rand(3))

    state = ckpt.read_training_state(folder, rank=0, world_size=1)
    assert state["progress"]["step"] == 2 and state["progress"]["format_version"] == ckpt.FORMAT_VERSION
    assert state["rank"]["loader"] == {"batches_drawn": 3}
    ckpt.restore_rng(state["rank"]["rng"], "cpu")
    assert (random.random(), np.random.rand()) == expected_rng[:2] and torch.equal(torch.rand(3), expected_rng[2])

    # a fresh model and optimizers take the saved state, then step exactly like the originals
    # (Muon's parameter groups have no betas; AdamW's come back as a tuple)
    model2 = tiny_model(seed=5)
    model2.load_state_dict(state["model"])
    opt2 = optimizers(model2)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.parts["adamw"].param_groups[0]["betas"] == (0.9, 0.95)
    assert opt2.parts["muon"].state  # its momentum buffers came back
    assert trained_step(model, opt) == trained_step(model2, opt2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def trained_step(model, opt: Optimizers, x: torch.Tensor | None = None) -> float:
    x = torch.arange(32).reshape(2, 16) % 50 if x is None else x
    loss = model(x, x)[1]
    loss.backward()
    opt.step(torch.amp.GradScaler("cpu", enabled=False))
    opt.zero_grad()
    return loss.item()


def test_checkpoint_holds_no_pickles(tmp_path, tokenizer_dir):
    model = tiny_model()
    folder = save(tmp_path / "c", model, trained(model), tokenizer_dir=tokenizer_dir)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "COMPLETE",
            "config.toml",
            "model.safetensors",
            "optimizer.safetensors",
            "rank-00000.safetensors",
            "state.json",
            "tokenizer",
        ]
    )


def test_incomplete_folders_are_ignored_and_old_ones_pruned(tmp_path, tokenizer_dir):
    model = tiny_model()
    for step in (10, 20, 30):
        save(Run(tmp_path).step_folder(step), model, tokenizer_dir=tokenizer_dir, step=step)
    half = Run(tmp_path).step_folder(40)
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half of a file")
    leftover = tmp_path / "checkpoints" / ".step-0000000050.tmp"
    leftover.mkdir()

    assert Run(tmp_path).latest() == Run(tmp_path).step_folder(30)
    assert find_checkpoint(tmp_path) == Run(tmp_path).step_folder(30)
    with pytest.raises(TinyGPTError, match="incomplete checkpoint"):
        find_checkpoint(half)

    Run(tmp_path, keep_last=2).prune()
    assert Run(tmp_path).checkpoints() == [Run(tmp_path).step_folder(20), Run(tmp_path).step_folder(30)]
    assert not leftover.exists()


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, tokenizer_dir, monkeypatch):
    model = tiny_model()
    opt = trained(model)
    good = save(Run(tmp_path).step_folder(10), model, opt, step=10, tokenizer_dir=tokenizer_dir)
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}

    def disk_full(path, tree):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt, "save_tree", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save(Run(tmp_path).step_folder(20), model, opt, step=20, tokenizer_dir=tokenizer_dir)
    assert Run(tmp_path).checkpoints() == [good]
    assert {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]  # no temporary folder left


def test_best_is_replaced_whole(tmp_path, tokenizer_dir):
    best = tmp_path / "best"
    save(best, tiny_model(seed=0), tokenizer_dir=tokenizer_dir, step=5)
    (tmp_path / ".best.0a1b2c3d.old").mkdir()  # a writer killed between its two renames left the old one aside
    save(best, tiny_model(seed=1), tokenizer_dir=tokenizer_dir, step=9)
    assert ckpt.read_progress(best)["step"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with pytest.raises(TinyGPTError, match="weights only"):
        ckpt.read_training_state(best, rank=0, world_size=1)


def test_resume_needs_the_same_number_of_processes(tmp_path, tokenizer_dir):
    model = tiny_model()
    folder = save(tmp_path / "c", model, trained(model), tokenizer_dir=tokenizer_dir)
    with pytest.raises(TinyGPTError, match="written by 1 process"):
        ckpt.read_training_state(folder, rank=0, world_size=2)


def test_architecture_changes_are_named():
    saved = ModelConfig(vocab_size=50, n_layer=2)
    ckpt.check_architecture(saved, ModelConfig(vocab_size=50, n_layer=2, dropout=0.3), "c")  # dropout may change
    with pytest.raises(TinyGPTError, match=r"model.n_layer 2 -> 4"):
        ckpt.check_architecture(saved, ModelConfig(vocab_size=50, n_layer=4), "c")


def test_corrupt_files_are_one_line_errors(tmp_path, tokenizer_dir):
    model = tiny_model()
    folder = save(tmp_path / "c", model, trained(model), tokenizer_dir=tokenizer_dir)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TinyGPTError, match="cannot read"):
        ckpt.load_weights(model, folder)
    (folder / "state.json").write_text('{"format_version": 99}')
    with pytest.raises(TinyGPTError, match="format 99"):
        ckpt.read_progress(folder)
