"""Sampling text from a trained model, in three layers that can each be used alone.

- `generate_ids` knows only a model and token ids: it runs the prompt once through the
  model's KV cache, then one new position per step, and yields each sampled id. Past the
  context window, a llama cache slides and a gpt2 one is rebuilt from the window's tail.
- `Sampler` adds the tokenizer and the checkpoint: prompt in, text pieces out, decoded
  so that a piece never ends inside a UTF-8 character.
- `tinygpt sample` is a thin command line over `Sampler` (a web server can be another).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn import functional as F

from .common import TinyGPTError, autodetect_device
from .documents import normalize_line_endings
from .model import GPT
from .run import load_model
from .tokenizers import Tokenizer

DEFAULT_TEMPERATURE = 0.8  # `tinygpt sample`'s, also written into the Ollama export's Modelfile

# ---------------------------------------------------------------- token ids


def context_keep(block_size: int) -> int:
    """Positions kept when the context is full: the cache slides (llama) or is rebuilt (gpt2) to this many.

    Three quarters: the model still sees most of the story, and the next quarter of the
    window is generated one cached position at a time before the cache is full again, so the
    cost of making room is shared by a quarter of the window's tokens.
    """
    return block_size - max(1, block_size // 4)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse values that have no meaning, naming the command-line flag."""
    if max_new_tokens < 1:
        raise TinyGPTError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also catches NaN
        raise TinyGPTError(f"--temperature must be 0 (greedy) or positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise TinyGPTError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TinyGPTError(f"--top-p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (B, 1) from last-position logits (B, V): argmax at temperature 0, else a draw.

    top_k keeps the k likeliest tokens; top_p keeps the fewest likeliest tokens whose
    probabilities add up to top_p (the likeliest always stays). Both apply after temperature.
    The draw inverts the cumulative distribution with one uniform number per row: exact,
    and ten times cheaper than torch.multinomial over a 32,000-token vocabulary.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, V)
    order = None
    if top_p is not None and top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the likelier tokens
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    # u in (0, total]: the first id whose cdf reaches u has non-zero probability and always exists
    u = (1 - torch.rand((probs.size(0), 1), generator=generator, device=probs.device)) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u)  # (B, 1)
    return ids if order is None else order.gather(-1, ids)


def seeded_generator(device: str | torch.device, seed: int | None) -> torch.Generator:
    """A random stream of one generation's own: the same seed gives the same draws, whatever
    else uses torch's global generator meanwhile; no seed, a fresh one."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()  # as a decorator it is on only while the generator runs, not between its steps
def generate_ids(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next ids (B, 1) for prompt ids idx (B, T) on the model's device, one step at a time.

    The prompt runs once through the KV cache (only its last block_size tokens if longer),
    then each step runs just the new token. When the context is full, room is made for the
    next quarter of the window, keeping the last `context_keep(block_size)` positions:
    - "slide" (llama's rotary positions, `GPT.cache_past_context`): the cache slides
      (`GPT.shift_cache`), nothing runs again, and the kept keys and values stay as they were
      computed, with the older context, as in a sliding window.
    - "reprefill" (gpt2's learned positions, which end at block_size): those last tokens run
      through the model again from position 0.
    So the model always sees between three quarters of and its whole context.

    Stop early by closing the iterator (or leaving a `for` loop over it); the cache is
    freed and the model's train/eval mode restored either way.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    block_size = model.cfg.block_size
    keep = context_keep(block_size)
    was_training = model.training
    model.eval()
    model.init_cache(idx.size(0))
    try:
        window = idx[:, -block_size:]  # the tokens the cache holds, plus the newest one
        chunk, start = window, 0  # what the next forward pass runs, and where it sits
        for _ in range(max_new_tokens):
            logits, _ = model(chunk, start_pos=start, last_only=True)
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
            yield nxt
            window = torch.cat((window, nxt), dim=1)
            if window.size(1) <= block_size:  # room for the new token
                chunk, start = nxt, window.size(1) - 1
            elif model.cache_past_context == "slide":  # full: slide the cache, keeping its last `keep` positions
                model.shift_cache(block_size - keep)
                window = window[:, -(keep + 1) :]
                chunk, start = nxt, keep
            else:  # full: rebuild from the tail
                window = window[:, -keep:]
                chunk, start = window, 0
    finally:
        model.clear_cache()
        model.train(was_training)


# ---------------------------------------------------------------- text


class TextStream:
    """Turns ids arriving one at a time into text pieces that never end inside a character.

    A byte-level token can hold part of a UTF-8 character (an emoji may take four byte
    tokens), and decoding it alone gives U+FFFD. Ids wait here until their text no longer
    ends in U+FFFD, then go out together. A U+FFFD that stays (invalid bytes from the model,
    or a char tokenizer's unknown) goes out once MAX_PENDING ids have waited: no character
    spans that many tokens.
    """

    MAX_PENDING = 8

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text


class Sampler:
    """A model and its tokenizer on one device: prompts in, text out.

    The KV cache lives in the model, so one Sampler serves one stream at a time.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, device: str = "cpu"):
        if model.cfg.vocab_size != tokenizer.vocab_size:
            raise TinyGPTError(
                f"the model has {model.cfg.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}"
            )
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto") -> Sampler:
        """Load a run folder (its best/ checkpoint, else its newest complete one) or one checkpoint folder."""
        device = autodetect_device(device)  # a misspelt device fails before the weights are read
        return cls(*load_model(path), device)

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids, its line endings read as documents' are; an empty prompt starts a new document, as after <|endoftext|>."""
        return self.tokenizer.encode_prompt(normalize_line_endings(prompt)) if prompt else [self.tokenizer.eot_id]

    def stream(
        self,
        prompt: str = "",
        max_new_tokens: int = 500,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eot: bool = True,
    ) -> Iterator[str]:
        """Yield the continuation of `prompt` (not the prompt itself) piece by piece as it is sampled.

        The same seed on the same device gives the same text; no seed draws a fresh one.
        stop_at_eot: end at <|endoftext|> (not yielded); otherwise it appears as its separator line.
        """
        steps = self.steps(self.encode(prompt), max_new_tokens, temperature, top_k, top_p, seed, stop_at_eot)
        for _, piece in steps:
            if piece:
                yield piece

    def steps(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | None,
        stop_at_eot: bool,
    ) -> Iterator[tuple[int | None, str]]:
        """Each sampled token with the text it completes ("" while a character is still partial),
        then (None, text held back) at the end: for callers that count tokens or stop early.

        With stop_at_eot, <|endoftext|> is the last token yielded, with no text.
        """
        idx = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        text = TextStream(self.tokenizer)
        generator = seeded_generator(self.device, seed)
        ids = generate_ids(self.model, idx, max_new_tokens, temperature, top_k, top_p, generator)
        with contextlib.closing(ids):
            for nxt in ids:
                token = int(nxt)
                if stop_at_eot and token == self.tokenizer.eot_id:
                    yield token, ""
                    break
                yield token, text.push(token)
        yield None, text.flush()

    def generate(self, prompt: str = "", **kwargs) -> str:
        """The whole continuation as one string; takes the keyword arguments of `stream`."""
        return "".join(self.stream(prompt, **kwargs))


# ---------------------------------------------------------------- `tinygpt sample`


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Continue a prompt with a trained model, streaming the text as it is generated.\n\n"
        "The prompt is run once through the model's key/value cache, then each new token costs\n"
        "one position. When the text outgrows the context window (block_size), the oldest\n"
        "quarter of the window is dropped, so the model always sees at least 3/4 of its context:\n"
        "- llama (rotary positions): the cache slides; the kept keys are turned back, nothing runs again.\n"
        "- gpt2 (learned positions, which end at block_size): the last 3/4 of the window is re-prefilled."
    )
    p.add_argument(
        "path",
        metavar="RUN_OR_CHECKPOINT",
        help="a training run folder (uses best/, else the newest checkpoint) or one checkpoint folder",
    )
    p.add_argument(
        "--prompt",
        "-p",
        metavar="TEXT",
        help="text to continue (default: standard input when it is not a terminal, else start a new story)",
    )
    p.add_argument("--max-new-tokens", "-n", type=int, default=500, metavar="N", help="per sample (default: 500)")
    p.add_argument("--temperature", "-t", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
                   help=f"0: greedy (default: {DEFAULT_TEMPERATURE:g})")
    p.add_argument("--top-k", type=int, metavar="K", help="sample only among the k likeliest tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample among the likeliest tokens adding up to P")
    p.add_argument("--seed", type=int, metavar="N", help="same seed, same text (sample i uses N+i); default: random")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples, between '---' lines (default: 1)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads (default: 1, as one-token steps gain little from more and lose much when the cores "
        "are busy; 0: torch's default)",
    )
    p.add_argument(
        "--no-stop", dest="stop_at_eot", action="store_false", help="go on past <|endoftext|> up to --max-new-tokens"
    )


def run_sample(args: argparse.Namespace) -> int:
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.num_samples < 1:
        raise TinyGPTError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.threads < 0:
        raise TinyGPTError(f"--threads must not be negative, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = Sampler.from_path(args.path, args.device)  # before waiting on standard input for a prompt
    prompt = _read_prompt(args.prompt)
    n_prompt = len(sampler.encode(prompt))
    if n_prompt > sampler.block_size:
        warning = f"the prompt is {n_prompt} tokens; the model sees only its last {sampler.block_size}"
        print(f"tinygpt sample: warning: {warning}", file=sys.stderr)
    for i in range(args.num_samples):
        if i:
            _write("---\n")
        _write(prompt)
        for piece in sampler.stream(
            prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            stop_at_eot=args.stop_at_eot,
        ):
            _write(piece)
        _write("\n")
    return 0


def _read_prompt(prompt: str | None) -> str:
    """--prompt, else piped standard input (one trailing newline dropped, as `echo` adds it), else ""."""
    if prompt is not None:
        return prompt
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    try:
        return sys.stdin.read().removesuffix("\n")
    except UnicodeDecodeError:
        raise TinyGPTError("the prompt on standard input is not UTF-8 text") from None


def _write(text: str) -> None:
    """Print now, not when a buffer fills: the text should appear as it is generated, even through a pipe."""
    sys.stdout.write(text)
    sys.stdout.flush()
