"""The project's one definition of bits per byte, and the evaluation pass that measures it.

A model's loss is in nats per token, and a token means different amounts of text to
different tokenizers (one character, or a whole word). Bits per byte divides that out, by
this definition, exact on any file:

    For a text file, let t1 ... tn be the tokens the reader produces from it: its documents,
    and one end-of-text token for each separator line present in the file (none invented;
    empty documents kept as their tokens), and t0 = end-of-text (a text is always preceded by
    it, as a document in the training stream is). Then

        bits = sum over i = 1 .. n of -log2 p(t_i | t_0 ... t_{i-1}),

    scored in non-overlapping context windows over the one stream t0 ... tn, whatever the
    shards, and bpb = bits / S, where S is the number of source bytes the reader consumed,
    counted by the reader (a \\r\\n that became \\n counts 2, a dropped byte-order mark 3, a
    replaced byte its own size): S is the file's size. For .jsonl/.json, S is the UTF-8 bytes
    of the text fields plus 14 per end-of-text token (the size of the same documents written
    as a separator-delimited .txt).

A prepared folder holds each split as such a stream and records its S (prepare.py); a pass
over the whole split divides by it. A partial pass (training's periodic evaluation of
train.eval_windows windows spread evenly over the split) divides by the bytes its target tokens stand for
(`Tokenizer.token_bytes()`: the end-of-text token 14, a char tokenizer's <unk> 1), an
estimate, and says so. The sums run over every target token, so a shorter last window
weighs exactly as much as its tokens. `logprobs_and_bits` is the one place logits become bits.
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
from .loader import count_eval_windows, eval_windows
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
    """Loss (nats per token), bits per byte and total bits over the evaluation windows of `shards`
    (loader.eval_windows).

    `token_bytes` (vocab_size,) int64: the bytes each id stands for, the denominator of a partial
    pass. `max_windows` > 0 takes the same fixed, evenly spread sample of windows every time, so
    successive evaluations are comparable. The pass uses no randomness (the model runs in eval
    mode, dropout off), so it cannot disturb the training run's random streams. Under DDP, rank
    r takes batches r, r + world_size, ... and the sums are added over all ranks.

    Returns {"loss": nats per target token, "bpb": bits per byte, "bits", "tokens": target tokens
    scored, "bytes": the denominator, "exact": whether the pass covered the whole split (then
    bytes = S, the split's source bytes), "windows": windows scored}.
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
    windows = count_eval_windows(shards, block_size)
    exact = not max_windows or max_windows >= windows
    n_bytes = shards.source_bytes if exact else n_bytes
    return {
        "loss": bits * math.log(2) / tokens,
        "bpb": bits / n_bytes,
        "bits": bits,
        "tokens": int(tokens),
        "bytes": int(n_bytes),
        "exact": exact,
        "windows": windows if exact else max_windows,
    }


# ---------------------------------------------------------------- `tinygpt eval`


@contextlib.contextmanager
def eval_data(
    data: str | Path, split: str | None, tokenizer, checkpoint: str | Path | None, *, errors: str = "strict",
    text_field: str = "text",
) -> Iterator[ShardSet]:
    """The shards `tinygpt eval` scores: a prepared folder's split (default val), or raw text
    (.txt/.jsonl/.json, a folder or a glob) read as `prepare` reads it (`errors`, `text_field` as
    data.errors and data.text_field) and encoded with the checkpoint's tokenizer into a temporary
    prepared folder (streaming, bounded memory) that lives while the block runs: the one stream
    t0 ... tn of the bits-per-byte definition, with S its source bytes.

    Raises TinyGPTError for bad input, as `prepare` does, for a prepared folder made with another
    tokenizer, and for data with no token to score.
    """
    from .common import TinyGPTError
    from .config import load_config
    from .prepare import prepare

    data_path = Path(data)
    with tempfile.TemporaryDirectory(prefix="tinygpt-eval-") as tmp:
        if not is_prepared(data_path):
            reading = {"data.errors": errors, "data.text_field": text_field, "data.val_fraction": "0"}
            cfg = load_config(None, {"tokenizer.kind": tokenizer.kind, **reading})
            prepare([str(data)], Path(tmp) / "data", cfg, tokenizer_from=str(checkpoint), progress=False)
            data_path, split = Path(tmp) / "data", "train"
        shards = ShardSet(data_path, split or "val")
        if shards.manifest["tokenizer_hash"] != tokenizer.hash:
            raise TinyGPTError(
                f"{data_path} was prepared with another tokenizer ({shards.manifest['tokenizer_hash']}) "
                f"than the checkpoint's ({tokenizer.hash}): evaluate the raw text instead"
            )
        if shards.tokens < 2:
            raise TinyGPTError(f"{data} holds no text to score")
        yield shards


def add_reading_arguments(p) -> None:
    """How raw text is read, as `prepare` reads it (data.errors, data.text_field): for eval and inspect."""
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="undecodable raw text (not UTF-8, lone surrogates): an error (strict, the default) or U+FFFD")
    p.add_argument("--text-field", default="text", metavar="NAME", help="the text field of .jsonl/.json records (default: text)")


def evaluate_path(
    checkpoint_path: str,
    data: str,
    split: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    *,
    errors: str = "strict",
    text_field: str = "text",
) -> dict:
    """Exact bits per byte of a checkpoint over raw text (.txt/.jsonl/.json) or prepared shards (see eval_data)."""
    from .common import autodetect_device
    from .run import find_checkpoint, load_model

    folder = find_checkpoint(checkpoint_path)
    model, tokenizer = load_model(folder)
    device = autodetect_device(device)
    with eval_data(data, split, tokenizer, folder, errors=errors, text_field=text_field) as shards:
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
    add_reading_arguments(p)
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    p.epilog = (
        "An exact pass over every token, in non-overlapping windows of the model's context. Bits per byte: "
        "bits over every token of the text, each predicted from what precedes it (the first from the "
        "end-of-text token) / the bytes of the file (for JSON: of its text fields, plus 14 per record), "
        "so models with different tokenizers compare fairly."
    )


def run_eval(args) -> int:
    import json

    from .common import TinyGPTError

    if args.batch_size < 1:
        raise TinyGPTError("--batch-size must be at least 1")
    result = evaluate_path(
        args.checkpoint, args.data, args.split, args.batch_size, args.device, errors=args.errors, text_field=args.text_field
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['checkpoint']}: loss {result['loss']:.4f} nats/token, perplexity {result['perplexity']:.2f}, "
            f"{result['bpb']:.4f} bits per byte over {result['tokens']:,} tokens ({result['bytes']:,} bytes)"
        )
    return 0
