"""Sampling text from a trained model, in three layers that can each be used alone.

- `generate_ids` and `generate_batch` know only a model and token ids: they run the
  decoding engine (engine.py: the KV cache, continuous batching, per-sequence sampling)
  over one prompt or many.
- `Sampler` adds the tokenizer and the checkpoint: prompts in, text out, decoded so that a
  piece never ends inside a UTF-8 character and cut at stop strings. A text is always
  preceded by the end-of-text token, as in training: a prompt is encoded as
  [<|endoftext|>] + its tokens, so an empty prompt starts a new story.
- `tinygpt sample` is a thin command line over `Sampler` (`tinygpt serve` is another).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .common import TinyGPTError, autodetect_device
from .documents import normalize_line_endings
from .engine import (
    DEFAULT_TEMPERATURE,
    DTYPES,
    Engine,
    SamplingError,
    SamplingParams,
    Sequence,
    Token,
    decode_dtype,
    decoding_model,
)
from .model import GPT
from .run import load_model
from .tokenizers import Tokenizer

# ---------------------------------------------------------------- token ids


def params_of(params: SamplingParams | None, fields: dict) -> SamplingParams:
    """A SamplingParams given whole, or built from its fields given as keywords (not both)."""
    if params is not None and fields:
        raise TinyGPTError(f"give a SamplingParams or its fields, not both (got {', '.join(fields)})")
    return params if params is not None else SamplingParams(**fields)


def run(engine: Engine, seqs: list[Sequence]) -> Iterator[Sequence]:
    """Step the engine until every sequence is done, yielding each sequence that got a token or
    finished in a step. Closing the iterator early stops the sequences."""
    for seq in seqs:
        engine.add(seq)
    try:
        while not all(seq.done for seq in seqs):
            yield from engine.step()
    finally:
        for seq in seqs:
            seq.stop()
        while engine.busy:  # free their rows (no token is drawn for a stopping sequence)
            engine.step()


def generate_ids(
    model: GPT, prompt: list[int], params: SamplingParams | None = None, *, eot_id: int | None = None, **fields
) -> Iterator[int]:
    """Yield the ids that continue the prompt ids, one step at a time (stop early by closing the iterator).

    params, or its fields as keywords: see SamplingParams (stop_at_eot needs eot_id). The
    prompt runs once through a KV cache (only its last block_size ids if longer), then each
    step runs just the new token; past the context the cache slides (llama) or the last
    ids run again (gpt2), as Engine describes.
    """
    seq = Sequence(list(prompt), params_of(params, fields))
    seen = 0
    for _ in run(Engine(model, eot_id), [seq]):
        for token in seq.tokens[seen:]:
            yield token.id
        seen = len(seq.tokens)


def generate_batch(
    model: GPT,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    *,
    eot_id: int | None = None,
    max_batch: int = 16,
) -> list[list[int]]:
    """The continuations of many prompts (ids, any lengths), up to max_batch decoded together.

    params: one for all, or one per prompt (their own seeds, temperatures, lengths). Each
    sequence draws from its own generator, so its ids are those generate_ids gives it alone
    (up to the last bits of batched matrix products: see tests/test_engine.py).
    """
    all_params = params if isinstance(params, list) else [params] * len(prompts)
    if len(all_params) != len(prompts):
        raise TinyGPTError(f"{len(prompts)} prompts but {len(all_params)} SamplingParams")
    seqs = [Sequence(list(p), sp) for p, sp in zip(prompts, all_params, strict=True)]
    for _ in run(Engine(model, eot_id, max_batch=max(1, min(max_batch, len(seqs)))), seqs):
        pass
    return [[token.id for token in seq.tokens] for seq in seqs]


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


class StopText:
    """Cuts generated text at the first stop string, holding back any tail that could begin one.

    Text leaves in pieces and a stop string may arrive split across them, so the tail that
    might still grow into one waits here until the next piece decides.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.held = ""
        self.hit = False

    def push(self, piece: str) -> str:
        """The text that can go out now."""
        if self.hit or not piece:
            return ""
        text = self.held + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit, self.held = True, ""
            return text[: min(cuts)]
        keep = next((k for k in range(len(text), 0, -1) if any(s.startswith(text[-k:]) for s in self.stops)), 0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class Continuation:
    """One sequence's text as its tokens arrive: pieces that never end inside a character, cut
    at the first stop string (which then stops the sequence), the end-of-text token left out
    when the sequence stops there.

    seen: tokens of the sequence read so far; taken: those that count, up to the one that
    completed a stop string; decoded: characters decoded so far, before any cut.
    """

    def __init__(self, seq: Sequence, tokenizer: Tokenizer, stops: tuple[str, ...] = ()):
        self.seq = seq
        self.eot_id = tokenizer.eot_id
        self.text = TextStream(tokenizer)
        self.stops = StopText(stops)
        self.seen = self.taken = self.decoded = 0

    def push(self, token: Token) -> str:
        """The text that can go out once this token (the sequence's next) has arrived."""
        self.seen += 1
        if self.stops.hit:
            return ""
        self.taken += 1
        if token.id == self.eot_id and self.seq.params.stop_at_eot:
            return ""
        text = self.text.push(token.id)
        self.decoded += len(text)
        piece = self.stops.push(text)
        if self.stops.hit:
            self.seq.stop("stop")
        return piece

    def finish(self) -> str:
        """The text held back, once the sequence is done."""
        if self.stops.hit:
            return ""
        tail = self.text.flush()
        self.decoded += len(tail)
        piece = self.stops.push(tail)
        return piece if self.stops.hit else piece + self.stops.flush()

    def pieces(self) -> Iterator[str]:
        """Text of the tokens that arrived since the last call, then the held tail once the sequence is done."""
        done = self.seq.done  # before the tokens: an engine on another thread appends the last one, then says done
        for token in self.seq.tokens[self.seen :]:
            piece = self.push(token)
            if piece:
                yield piece
        if done:
            tail = self.finish()
            if tail:
                yield tail

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's finish_reason once done: "stop" (end of text or a stop string), "length", or the engine's."""
        return "stop" if self.stops.hit else self.seq.finish_reason


class Sampler:
    """A model and its tokenizer on one device: prompts in, text out."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, device: str = "cpu", dtype: str = "auto"):
        if model.cfg.vocab_size != tokenizer.vocab_size:
            raise TinyGPTError(
                f"the model has {model.cfg.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}"
            )
        self.model = model.to(device)  # its mode stays its own: each engine step runs it in eval mode
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = decode_dtype(self.model, dtype)  # packed weights on x86 CPUs; float32 is exact
        self.decoder = decoding_model(self.model, self.dtype)  # packed once, shared by every engine

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", dtype: str = "auto") -> Sampler:
        """Load a run folder (its best/ checkpoint, else its newest complete one) or one checkpoint folder."""
        device = autodetect_device(device)  # a misspelt device fails before the weights are read
        return cls(*load_model(path), device, dtype)

    @property
    def block_size(self) -> int:
        return self.model.cfg.block_size

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids: the end-of-text token, then the prompt's own (a text always follows one, as in
        training), its line endings read as documents' are (documents.normalize_line_endings)."""
        return [self.tokenizer.eot_id, *self.tokenizer.encode_prompt(normalize_line_endings(prompt))]

    def engine(self, max_batch: int = 1) -> Engine:
        """A decoding engine over this model that stops sequences at the end-of-text token."""
        return Engine(self.decoder, self.tokenizer.eot_id, max_batch=max_batch)

    def stream(self, prompt: str = "", params: SamplingParams | None = None, **fields) -> Iterator[str]:
        """Yield the continuation of `prompt` (not the prompt itself) piece by piece as it is sampled.

        params, or its fields as keywords (SamplingParams: max_new_tokens, temperature, top_k,
        top_p, seed, stop_at_eot). The same seed on the same device gives the same text; no seed
        draws a fresh one. With stop_at_eot (the default) the text ends before <|endoftext|>;
        otherwise that token appears as its separator line.
        """
        seq = Sequence(self.encode(prompt), params_of(params, fields))
        text = Continuation(seq, self.tokenizer)
        for _ in run(self.engine(), [seq]):
            yield from text.pieces()

    def generate(self, prompt: str = "", params: SamplingParams | None = None, **fields) -> str:
        """The whole continuation as one string; takes the arguments of `stream`."""
        return "".join(self.stream(prompt, params, **fields))

    def generate_batch(
        self,
        prompts: list[str],
        params: SamplingParams | list[SamplingParams] | None = None,
        stop: list[tuple[str, ...]] | None = None,
        max_batch: int = 16,
    ) -> list[str]:
        """The continuations of many prompts, up to max_batch decoded together: what an evaluation
        harness calls. params and stop (tuples of stop strings): one for all or one per prompt.
        Each continuation is what `generate` gives its prompt alone (see generate_batch)."""
        all_params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        stops = stop if stop is not None else [()] * len(prompts)
        if not len(all_params) == len(stops) == len(prompts):
            raise TinyGPTError(f"{len(prompts)} prompts, {len(all_params)} SamplingParams and {len(stops)} stop tuples")
        seqs = [Sequence(self.encode(p), sp) for p, sp in zip(prompts, all_params, strict=True)]
        texts = {seq: Continuation(seq, self.tokenizer, tuple(s)) for seq, s in zip(seqs, stops, strict=True)}
        out: dict[Sequence, list[str]] = {seq: [] for seq in seqs}
        for seq in run(self.engine(max(1, min(max_batch, len(seqs)))), seqs):
            out[seq] += texts[seq].pieces()
        return ["".join(out[seq]) for seq in seqs]


# ---------------------------------------------------------------- `tinygpt sample`


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Continue a prompt with a trained model, streaming the text as it is generated.\n\n"
        "A text always follows the end-of-text token, as in training: the model sees <|endoftext|>\n"
        "and then the prompt (none: a new story). The prompt runs once through the key/value\n"
        "cache, then each new token costs one position. When the text outgrows the context window\n"
        "(block_size), the oldest quarter of the window is dropped, so the model always sees at\n"
        "least 3/4 of its context:\n"
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
    p.add_argument(
        "--temperature", "-t", type=float, default=DEFAULT_TEMPERATURE, metavar="T",
        help=f"0, or below 1e-4: greedy (default: {DEFAULT_TEMPERATURE:g})",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="sample only among the k likeliest tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="sample among the likeliest tokens adding up to P")
    p.add_argument("--seed", type=int, metavar="N", help="in [0, 2**63): same seed, same text (sample i uses N+i); default: random")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples, between '---' lines (default: 1)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    add_dtype_argument(p)
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
    if args.num_samples < 1:
        raise TinyGPTError(f"--num-samples must be at least 1, got {args.num_samples}")
    params = [sampling_params(args, i) for i in range(args.num_samples)]
    if args.threads < 0:
        raise TinyGPTError(f"--threads must not be negative, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = Sampler.from_path(args.path, args.device, args.dtype)  # before waiting on standard input for a prompt
    prompt = _read_prompt(args.prompt)
    n_prompt = len(sampler.encode(prompt))
    if n_prompt > sampler.block_size:
        warning = f"the prompt is {n_prompt} tokens; the model sees only its last {sampler.block_size}"
        print(f"tinygpt sample: warning: {warning}", file=sys.stderr)
    for i in range(args.num_samples):
        if i:
            _write("---\n")
        _write(prompt)
        for piece in sampler.stream(prompt, params[i]):
            _write(piece)
        _write("\n")
    return 0


def add_dtype_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights for decoding: float32 is exact; float16 (FBGEMM, x86 CPUs) reads half the bytes, 1.4 to 1.6x "
        "faster for a 15M model on a CPU; int8 (weight-only, x86 CPUs; prompts and batched rows run a float16 copy) "
        "a quarter, 1.2 to 1.3x float16 on an AVX-512 CPU; 0.000003 and 0.00012 bits per byte from float32 on a 10-minute "
        "model (BENCHMARKS.md); auto: for models of 4M parameters or more on an x86 CPU, int8 where it has AVX-512, "
        "else float16; float32 otherwise",
    )


def sampling_params(args: argparse.Namespace, i: int) -> SamplingParams:
    """The i-th sample's SamplingParams from the flags (seed + i), its refusals naming the flag."""
    try:
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=None if args.seed is None else args.seed + i,
            stop_at_eot=args.stop_at_eot,
        )
    except SamplingError as e:
        raise TinyGPTError(f"--{e.field.replace('_', '-')} {e.problem}") from None


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
