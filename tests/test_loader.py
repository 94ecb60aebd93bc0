"""The batch loader: resumable training windows, rank slices of one global batch, and an exact evaluation pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinygpt.common import TinyGPTError
from tinygpt.loader import TrainLoader, count_eval_windows, eval_windows
from tinygpt.shards import ShardSet


@pytest.fixture
def counting_shards(tmp_path):
    """Three shards of consecutive numbers (token i is i), so every window shows where it came from."""
    sizes = [1000, 37, 530]
    shards, start = [], 0
    for i, n in enumerate(sizes):
        np.arange(start, start + n, dtype=np.uint32).tofile(tmp_path / f"train_{i:06d}.bin")
        shards.append({"file": f"train_{i:06d}.bin", "tokens": n})
        start += n
    split = {"shards": shards, "tokens": sum(sizes), "documents": 3, "empty_documents": 0, "source_bytes": sum(sizes), "unknown": 0}
    manifest = {
        "format_version": 2,
        "dtype": "uint32",
        "vocab_size": start,
        "eot_id": 0,
        "tokenizer_kind": "char",
        "tokenizer_hash": "0",
        "input": {"files": 1, "bytes": start},
        "splits": {"train": split, "val": split},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return ShardSet(tmp_path, "train"), sizes


def test_windows_are_contiguous_and_targets_shifted(counting_shards):
    shards, _ = counting_shards
    x, y = TrainLoader(shards, block_size=16, batch_size=8, seed=0).next_batch()
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)  # consecutive numbers: no window crosses a shard boundary
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))


def test_resumed_loader_draws_the_same_batches(counting_shards):
    shards, _ = counting_shards
    straight = TrainLoader(shards, block_size=16, batch_size=4, seed=7)
    for _ in range(3):
        straight.next_batch()
    state = straight.state_dict()
    expected = [straight.next_batch() for _ in range(5)]

    resumed = TrainLoader(shards, block_size=16, batch_size=4, seed=12345)  # the seed no longer matters
    resumed.load_state_dict(state)
    for x_expected, _ in expected:
        x, _ = resumed.next_batch()
        assert torch.equal(x, x_expected)
    assert resumed.batches_drawn == straight.batches_drawn == 8


def test_short_windows_keep_the_tokens_of_a_batch_and_draw_from_the_one_generator(counting_shards):
    """A curriculum's short batches: 4 x 16 tokens become 8 x 8, contiguous windows that may start
    anywhere a window of 9 fits, drawn from the one generator: a loader resumed from the state after
    a short and a full batch draws the same next batches, whichever length they are."""
    shards, sizes = counting_shards
    loader = TrainLoader(shards, block_size=16, batch_size=4, seed=5, short_block_size=8)
    x, y = loader.next_batch(short=True)
    assert x.shape == y.shape == (8, 8) and torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 7, dtype=torch.int64))
    x, _ = loader.next_batch()
    assert x.shape == (4, 16)
    resumed = TrainLoader(shards, block_size=16, batch_size=4, seed=0, short_block_size=8)
    resumed.load_state_dict(loader.state_dict())
    for short in (True, False, True):
        assert torch.equal(resumed.next_batch(short)[0], loader.next_batch(short)[0])
    assert resumed.batches_drawn == loader.batches_drawn == 5
    # a short window fits where a long one does not: the 37-token shard holds 29 of 9 tokens, 21 of 17
    assert [int(c[-1]) for c in loader.counts.values()] == [sum(n - 16 for n in sizes), sum(n - 8 for n in sizes)]


def test_ranks_take_slices_of_one_global_batch(counting_shards):
    shards, _ = counting_shards
    single = TrainLoader(shards, block_size=16, batch_size=6, seed=3)
    ranks = [TrainLoader(shards, block_size=16, batch_size=2, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        x_all, y_all = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([x for x, _ in parts]), x_all)
        assert torch.equal(torch.cat([y for _, y in parts]), y_all)
        assert len({tuple(x[:, 0].tolist()) for x, _ in parts}) == 3  # each rank its own windows


def test_block_size_longer_than_every_shard_is_refused(counting_shards):
    shards, _ = counting_shards
    with pytest.raises(TinyGPTError, match="block_size 1000 needs shards of at least 1001 tokens"):
        TrainLoader(shards, block_size=1000, batch_size=1, seed=0)


@pytest.mark.parametrize("block_size,batch_size", [(16, 5), (37, 3), (64, 1), (1000, 2)])
def test_eval_windows_cover_every_target_once_across_shards(counting_shards, block_size, batch_size):
    shards, sizes = counting_shards
    targets, inputs = [], []
    for x, y in eval_windows(shards, block_size, batch_size):
        assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= block_size
        assert torch.equal(y, x + 1)  # windows run on over shard boundaries: one stream
        targets += y.flatten().tolist()
        inputs += x.flatten().tolist()
    # every token but the stream's first is a target exactly once, in order, whatever the shards
    assert targets == list(range(1, sum(sizes)))
    assert len(inputs) == len(targets)
    assert count_eval_windows(shards, block_size) == -(-(sum(sizes) - 1) // block_size)


def test_eval_windows_sample_is_spread_evenly_and_fixed(counting_shards):
    """98 windows of 16 over the stream of 1,567 tokens: a sample of 10 takes windows i * 98 // 10,
    reaching into the last shard, not the first 10 windows."""
    shards, _ = counting_shards
    assert count_eval_windows(shards, 16) == 98 == len(list(eval_windows(shards, 16, 1)))
    first = [x for x, _ in eval_windows(shards, 16, 4, max_windows=10)]
    again = [x for x, _ in eval_windows(shards, 16, 4, max_windows=10)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    starts = [int(row[0]) for x in first for row in x]
    assert starts == [16 * (i * 98 // 10) for i in range(10)] and starts[-1] > 1037  # shard 2 starts at token 1037
    assert len(list(eval_windows(shards, 16, 4, max_windows=1000))) == len(list(eval_windows(shards, 16, 4)))
