"""bench/train_speed.py compares like with like: NanoGPTLlama, the plain twin of a Llama preset,
computes our model's loss and gradients from copied weights, and the seed recipe run in-process
trains the model our `seed` preset builds. No timing here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from tinygpt.config import load_config
from tinygpt.model import GPT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import train_speed  # a bench script, beside the baseline.py it imports


def small_cpu_10min(dropout: float = 0.0):
    """The cpu-10min preset's model, shrunk: every option it sets, small sizes."""
    cfg = load_config("cpu-10min").model
    return dataclasses.replace(cfg, vocab_size=97, block_size=24, n_layer=2, n_embd=64, n_head=4, dropout=dropout)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (3, 24), generator=g), torch.randint(0, 97, (3, 24), generator=g)


def test_nanogpt_twin_computes_our_loss_and_gradients():
    torch.manual_seed(0)
    ours = GPT(small_cpu_10min())
    twin = train_speed.twin_of(ours)
    x, y = batch(1)
    logits, loss = ours(x)[0], ours(x, y)[1]
    twin_logits, twin_loss = twin(x, y)
    torch.testing.assert_close(twin_logits, logits)
    torch.testing.assert_close(twin_loss, loss)
    assert abs(loss.item() - 4.57) < 0.2  # near log(97): an untrained model, not two equal wrong ones
    loss.backward()
    twin_loss.backward()
    twin_params = dict(twin.named_parameters())
    grads = {}  # ours, under the twin's names
    for name, p in ours.named_parameters():
        for theirs, twin_name in train_speed.TWIN_NAMES:
            name = name.replace(theirs, twin_name)
        grads[name] = p.grad
    for i in range(len(ours.model.layers)):  # our q, k and v are the twin's one c_attn
        p = f"transformer.h.{i}.self_attn."
        grads[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([grads.pop(p + f"{part}_proj.weight") for part in "qkv"])
    assert grads.keys() == twin_params.keys()  # tied: one matrix on both sides
    for name, grad in grads.items():
        torch.testing.assert_close(twin_params[name].grad, grad, msg=name)


def test_nanogpt_twin_under_bfloat16_autocast_and_dropout():
    torch.manual_seed(0)
    ours = GPT(small_cpu_10min(dropout=0.1))
    twin = train_speed.twin_of(ours)
    x, y = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, twin_loss = ours.eval()(x, y)[1], twin.eval()(x, y)[1]
        assert twin_loss.dtype == loss.dtype == torch.float32
        assert abs(twin_loss.item() - loss.item()) < 0.02  # bfloat16 products, rounded in different orders
        train_loss, twin_train_loss = ours.train()(x, y)[1], twin.train()(x, y)[1]
    assert train_loss != loss and twin_train_loss != twin_loss  # dropout on, on both sides


def test_nanogpt_twin_refuses_options_it_does_not_write():
    with pytest.raises(ValueError, match="qk_norm"):
        train_speed.NanoGPTLlama(dataclasses.replace(small_cpu_10min(), qk_norm=True))


def test_seed_recipe_in_process_trains_the_seed_presets_model():
    recipe = train_speed.seed_recipe(threads=1, flops_per_token=0)
    vocab = recipe.model.tok.num_embeddings  # the characters of train.txt
    ours = GPT(dataclasses.replace(load_config("seed").model, vocab_size=vocab))
    assert sum(p.numel() for p in recipe.model.parameters()) == ours.num_params()
    assert recipe.tokens_per_step == 32 * 64
    before = recipe.model.head.weight.detach().clone()
    recipe.step()
    assert not torch.equal(recipe.model.head.weight, before)  # one AdamW step taken
