"""Batches from token shards: random windows for training, an ordered pass for evaluation.

Shards are opened with numpy.memmap (shards.ShardSet), so memory use does not depend on the corpus size.
Training windows come from one explicit torch.Generator whose state is saved in every
checkpoint: a resumed run draws exactly the batches the uninterrupted run would have.
Under DDP every rank draws the same global batch and keeps its own slice, so N ranks see
exactly the batches of one process with an N-times batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .common import TinyGPTError
from .shards import ShardSet


class TrainLoader:
    """Random windows of block_size + 1 tokens (inputs and shifted targets), from one generator.

    short_block_size (0: unused) is a shorter window for the first steps of a short-to-long
    curriculum (train.short_block_size): `next_batch(short=True)` draws windows of that length,
    batch_size * block_size / short_block_size of them, the same tokens a step. Both kinds of
    batch come from the one generator, so a resumed run draws what the straight run drew.
    """

    def __init__(
        self,
        shards: ShardSet,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        short_block_size: int = 0,
    ):
        self.shards = shards
        self.block_size = block_size
        self.batch_size = batch_size  # per rank
        self.rank, self.world_size = rank, world_size
        self.short_block_size = short_block_size or block_size
        self.counts = {T: self._window_counts(T) for T in (block_size, self.short_block_size)}
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def _window_counts(self, block_size: int) -> np.ndarray:
        """Cumulative count of the windows of block_size + 1 tokens, shard by shard; raises
        TinyGPTError when no shard holds one."""
        counts = self.shards.windows_starts(block_size + 1)
        if counts[-1] == 0:
            longest = max(len(s) for s in self.shards.shards)
            raise TinyGPTError(
                f"block_size {block_size} needs shards of at least {block_size + 1} tokens; "
                f"the longest {self.shards.split} shard has {longest}: use a smaller --model.block_size or more data"
            )
        return counts

    def shape(self, short: bool = False) -> tuple[int, int]:
        """(rows, tokens a row) of this rank's batches: short ones keep the tokens of a full one."""
        T = self.short_block_size if short else self.block_size
        return self.batch_size * self.block_size // T, T

    def next_batch(self, short: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (batch_size, block_size) int64 on the CPU: this rank's slice of the global
        batch; with `short`, (batch_size * block_size // short_block_size, short_block_size).

        Raises TinyGPTError for a token id past the vocabulary (a damaged shard: ShardSet.read)."""
        batch_size, T = self.shape(short)
        counts = self.counts[T]
        global_batch = batch_size * self.world_size
        picks = torch.randint(int(counts[-1]), (global_batch,), generator=self.generator).numpy()
        picks = picks[self.rank * batch_size : (self.rank + 1) * batch_size]
        shard_of = np.searchsorted(counts, picks, side="right")
        offsets = picks - np.concatenate([[0], counts])[shard_of]
        rows = [self.shards.read(s, o, T + 1) for s, o in zip(shard_of, offsets)]
        self.batches_drawn += 1
        return _pair(rows)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches_drawn = int(state["batches_drawn"])


def count_eval_windows(shards: ShardSet, block_size: int) -> int:
    """How many windows `eval_windows` yields with max_windows=0: all of them."""
    return len(_starts(shards.tokens, block_size))


def eval_windows(
    shards: ShardSet, block_size: int, batch_size: int, max_windows: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches (x, y) of evaluation windows over the split's one stream, in order, whatever the shards:
    window i holds tokens [i*T, i*T + T] (T = block_size), so consecutive windows share one token
    (the last target of one is the first input of the next), and the stream's tail shorter than a
    window becomes one final, shorter window. Every token but the stream's first is a target once.

    max_windows 0 (or at least the number of windows): all of them, the exact evaluation pass.
    Otherwise a fixed sample of max_windows spread evenly over the whole split: of N windows,
    those numbered floor(i * N / max_windows), i = 0 .. max_windows - 1, the same every time, so
    that no part of the split (one shard, its first stories) stands for all of it. A shorter
    window starts a batch of its own.
    Raises TinyGPTError for a token id past the vocabulary (a damaged shard: ShardSet.read).
    """
    starts = _starts(shards.tokens, block_size)
    if 0 < max_windows < len(starts):
        starts = [starts[i * len(starts) // max_windows] for i in range(max_windows)]
    batch: list[np.ndarray] = []
    for start in starts:
        row = shards.span(start, min(block_size + 1, shards.tokens - start))
        if batch and (len(row) != len(batch[0]) or len(batch) == batch_size):
            yield _pair(batch)
            batch = []
        batch.append(row)
    if batch:
        yield _pair(batch)


def sequence_windows(tokens: np.ndarray, block_size: int) -> Iterator[np.ndarray]:
    """The evaluation windows of one token sequence: rows tokens[i*T : i*T + T + 1] (int64) for T =
    block_size, each input block_size tokens and its targets shifted by one; the last may be shorter.
    Every token but the first is a target exactly once."""
    for start in _starts(len(tokens), block_size):
        yield _window(tokens, start, block_size)


def _starts(n_tokens: int, block_size: int) -> range:
    """First tokens of the evaluation windows of a sequence of n_tokens."""
    return range(0, n_tokens - 1, block_size)


def _window(tokens: np.ndarray, start: int, block_size: int) -> np.ndarray:
    """Tokens [start, start + block_size] (fewer at the end) as int64: one window's inputs and targets."""
    return np.asarray(tokens[start : start + block_size + 1], dtype=np.int64)


def _pair(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of n + 1 tokens -> inputs (the first n) and targets (the last n), each contiguous."""
    data = np.stack(rows)
    return torch.from_numpy(np.ascontiguousarray(data[:, :-1])), torch.from_numpy(np.ascontiguousarray(data[:, 1:]))
