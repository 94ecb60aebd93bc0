"""The project's one definition of bits per byte, and the evaluation pass that measures it.

A model's loss is in nats per token, and a token means different amounts of text to
different tokenizers (one character, or a whole word). Bits per byte divides that out:

    bpb = (sum over target tokens of -log2 p(token)) / (UTF-8 bytes those target tokens stand for)

The bytes of a token come from `Tokenizer.token_bytes()`; the end-of-text token stands for
the separator line "<|endoftext|>\\n" (14 bytes). The sums run over every target token, so a
shorter last window weighs exactly as much as its tokens, not as much as a full window.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch.nn import functional as F

from .distributed import all_reduce_sum
from .loader import ShardSet, eval_windows


def bits_per_byte(loss_nats_sum: float, n_bytes: float) -> float:
    """Summed cross-entropy in nats over some tokens -> bits per byte of the text they stand for."""
    return loss_nats_sum / math.log(2) / n_bytes


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    shards: ShardSet,
    token_bytes: torch.Tensor,
    block_size: int,
    batch_size: int,
    max_windows: int = 0,
    device: str = "cpu",
    autocast=None,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Loss (nats per token) and bits per byte over the evaluation windows of `shards`.

    `max_windows` > 0 takes the same fixed prefix of windows every time, so successive
    evaluations are comparable. The pass uses no randomness (the model runs in eval mode,
    dropout off), so it cannot disturb the training run's random streams. Under DDP, rank r
    takes batches r, r + world_size, ... and the sums are added over all ranks.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss in nats, target tokens, bytes
    for i, (x, y) in enumerate(eval_windows(shards, block_size, batch_size, max_windows)):
        if i % world_size != rank:
            continue
        sums[1] += y.numel()
        sums[2] += int(token_bytes[y].sum())
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            logits, _ = model(x)
        sums[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
    model.train(was_training)
    loss_sum, tokens, n_bytes = all_reduce_sum(sums).tolist()
    return {
        "loss": loss_sum / tokens,
        "bpb": bits_per_byte(loss_sum, n_bytes),
        "tokens": int(tokens),
        "bytes": int(n_bytes),
    }
