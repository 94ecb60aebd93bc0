"""The project's one definition of bits per byte, and the evaluation pass that measures it.

A model's loss is in nats per token, and a token means different amounts of text to
different tokenizers (one character, or a whole word). Bits per byte divides that out:

    bpb = (sum over target tokens of -log2 p(token)) / (UTF-8 bytes those target tokens stand for)

The bytes of a token come from `Tokenizer.token_bytes()`; the end-of-text token stands for
the separator line "<|endoftext|>\\n" (14 bytes). The sums run over every target token, so a
shorter last window weighs exactly as much as its tokens, not as much as a full window.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F

from .distributed import all_reduce_sum
from .loader import eval_windows
from .shards import ShardSet, is_prepared


def bits_per_byte(loss_nats_sum: float, n_bytes: float) -> float:
    """Summed cross-entropy in nats over some tokens -> bits per byte of the text they stand for."""
    return loss_nats_sum / math.log(2) / n_bytes


def logprobs_and_bits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits (..., V) and the tokens that came (...) -> (log-probabilities, surprisal).

    logprobs (..., V): log_softmax in nats, computed in float32 (a bf16 log-softmax over a
    large vocabulary is too coarse). bits (...): each target's surprisal -log2 p(target), the
    cross-entropy of that one token in bits. The one place logits become probabilities for
    `tinygpt eval`, `tinygpt inspect` and the API.
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    bits = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) / -math.log(2)
    return logprobs, bits


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
    """Loss (nats per token), bits per byte and total bits over the evaluation windows of `shards`.

    `max_windows` > 0 takes the same fixed prefix of windows every time, so successive
    evaluations are comparable. The pass uses no randomness (the model runs in eval mode,
    dropout off), so it cannot disturb the training run's random streams. Under DDP, rank r
    takes batches r, r + world_size, ... and the sums are added over all ranks.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # bits, target tokens, bytes
    for i, (x, y) in enumerate(eval_windows(shards, block_size, batch_size, max_windows)):
        if i % world_size != rank:
            continue
        sums[1] += y.numel()
        sums[2] += int(token_bytes[y].sum())
        x, y = x.to(device), y.to(device)
        with autocast or nullcontext():
            logits, _ = model(x)
        sums[0] += logprobs_and_bits(logits, y)[1].sum(dtype=torch.float64)
    model.train(was_training)
    bits, tokens, n_bytes = all_reduce_sum(sums).tolist()
    return {
        "loss": bits * math.log(2) / tokens,
        "bpb": bits / n_bytes,
        "bits": bits,
        "tokens": int(tokens),
        "bytes": int(n_bytes),
    }


# ---------------------------------------------------------------- `tinygpt eval`


@contextlib.contextmanager
def eval_data(data: str | Path, split: str | None, tokenizer, checkpoint: str | Path | None) -> Iterator[ShardSet]:
    """The shards `tinygpt eval` scores: a prepared folder's split (default val), or raw text
    (.txt/.jsonl/.json) encoded with the checkpoint's tokenizer into a temporary prepared folder
    (streaming, bounded memory) that lives while the block runs.

    Raises TinyGPTError when a prepared folder was made with another tokenizer.
    """
    from .common import TinyGPTError
    from .config import Config
    from .prepare import prepare

    data_path = Path(data)
    with tempfile.TemporaryDirectory(prefix="tinygpt-eval-") as tmp:
        if not is_prepared(data_path):
            cfg = Config()
            cfg.tokenizer.kind, cfg.data.val_fraction = tokenizer.kind, 0.0
            prepare([str(data)], Path(tmp) / "data", cfg, tokenizer_from=str(checkpoint), progress=False)
            data_path, split = Path(tmp) / "data", "train"
        shards = ShardSet(data_path, split or "val")
        if shards.manifest["tokenizer_hash"] != tokenizer.hash:
            raise TinyGPTError(
                f"{data_path} was prepared with another tokenizer ({shards.manifest['tokenizer_hash']}) "
                f"than the checkpoint's ({tokenizer.hash}): evaluate the raw text instead"
            )
        yield shards


def evaluate_path(checkpoint_path: str, data: str, split: str | None = None, batch_size: int = 16, device: str = "auto") -> dict:
    """Exact bits per byte of a checkpoint over raw text (.txt/.jsonl/.json) or prepared shards (see eval_data)."""
    from .common import autodetect_device
    from .run import find_checkpoint, load_model

    folder = find_checkpoint(checkpoint_path)
    model, tokenizer = load_model(folder)
    device = autodetect_device(device)
    with eval_data(data, split, tokenizer, folder) as shards:
        token_bytes = torch.from_numpy(tokenizer.token_bytes())
        result = evaluate(model.to(device), shards, token_bytes, model.cfg.block_size, batch_size, device=device)
    result["perplexity"] = math.exp(result["loss"])
    result["checkpoint"] = str(folder)
    return result


def add_eval_arguments(p) -> None:
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best checkpoint) or a checkpoint folder")
    p.add_argument("--data", required=True, metavar="FILE_OR_SHARDS", help="raw text (.txt/.jsonl/.json) or a prepared folder")
    p.add_argument("--split", choices=["train", "val"], help="split of a prepared folder (default: val)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per forward pass (default: 16)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    p.epilog = (
        "An exact pass over every token, in non-overlapping windows of the model's context. Bits per byte: "
        "bits over every target token / UTF-8 bytes of the text they stand for (the end-of-text token stands "
        "for its separator line), so models with different tokenizers compare fairly."
    )


def run_eval(args) -> int:
    import json

    from .common import TinyGPTError

    if args.batch_size < 1:
        raise TinyGPTError("--batch-size must be at least 1")
    result = evaluate_path(args.checkpoint, args.data, args.split, args.batch_size, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['checkpoint']}: loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}, "
            f"{result['bpb']:.4f} bits per byte over {result['tokens']:,} tokens ({result['bytes']:,} bytes)"
        )
    return 0
