"""Look inside a trained model: what it expected at every token, where it looked, what each layer
already knew, which tokens sit near each other, and what it learned between two checkpoints.

For a text (or token ids) and a checkpoint:

- **Surprisal.** At every position the model's distribution over the next token is compared with
  the token that came: its probability p, its surprisal -log2 p in bits, its rank (1 = the
  likeliest), the entropy of the distribution in bits, and the top-k alternatives. A text is
  scored after a leading end-of-text token, as documents are in training, so its first token is
  scored too. Bits per byte = bits over every target token / the UTF-8 bytes they stand for, the
  definition `tinygpt eval` uses (evaluate.logprobs_and_bits turns logits into bits for both).
- **Attention.** softmax(q k^T / sqrt(hs)) for every layer and head, (n_layer, n_head, T, T),
  recomputed from the q/k projections captured by forward hooks (with the model's own rotary
  tables). The model's fast path (scaled_dot_product_attention, which keeps no weights) is not
  touched: hooks exist only during an inspection.
- **Logit lens** (nostalgebraist, 2020). Each layer's output put through the final norm and the
  output head, as if it were the last layer: what the model would predict after that layer. The
  last layer's lens is the model's own logits.
- **Embeddings.** The tokens nearest a token by cosine similarity of the input embeddings (and of
  the output head's rows when they are not tied to them).
- **Comparison.** One text's per-token surprisal under two checkpoints: which tokens the later one learned.

Texts longer than the context are cut into the windows `tinygpt eval` uses
(loader.sequence_windows): each window starts afresh, so its first tokens see little context.

Positions: a sequence is `ids = [context token, t_0, ..., t_{n-1}]`; target i is t_i, predicted at
sequence position i (from ids[0..i]). "At token i" means at t_i's own position i + 1: the
attention from it and the lens there predict what comes after it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .common import TinyGPTError, autodetect_device
from .documents import normalize_line_endings
from .evaluate import logprobs_and_bits
from .loader import sequence_windows
from .model import GPT, CausalSelfAttention, RotaryPositions, apply_rope, attention_weights
from .tokenizers import Tokenizer

MAX_TOKENS = 100_000  # text tokens one inspection scores: ~400 KB of English with a 4096-token BPE
TOP_K = 5
LN2 = math.log(2)

# ---------------------------------------------------------------- the model's insides, through hooks


def _attentions(model: GPT) -> list[CausalSelfAttention]:
    return [m for m in model.modules() if isinstance(m, CausalSelfAttention)]


def input_embeddings(model: GPT) -> torch.Tensor:
    """The token embedding matrix (V, C)."""
    return model.trunk.tokens.weight


@dataclass
class Internals:
    """One forward pass of a window, seen from inside (for one sequence: B = 1).

    logits (T, V); hidden: each layer's output, the residual stream after that block (n_layer, T, C);
    attention (n_layer, n_head, T, T) when asked for (with last_only, (n_layer, n_head, 1, T): from the
    last position only), else None.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    attention: torch.Tensor | None


@torch.inference_mode()
def forward_internals(model: GPT, idx: torch.Tensor, attention: bool = False, last_only: bool = False) -> Internals:
    """Run token ids idx (T,) of one window through the model, recording each layer's output and,
    with `attention`, each layer's attention weights. last_only: logits for the last position only (1, V).

    Hooks on the blocks (their output) and the attention layers (their q/k/v, from their input)
    record what passes; they are removed before returning, so the model is exactly as it was.
    Raises TinyGPTError when T > block_size.
    """
    hidden: list[torch.Tensor] = []
    qkv: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, args, out: hidden.append(out[0])) for b in model.trunk.blocks]
    if attention:
        handles += [
            a.register_forward_pre_hook(lambda m, args: qkv.append(m.qkv(args[0]))) for a in _attentions(model)
        ]
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx.unsqueeze(0), last_only=last_only)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    maps = None
    if attention:
        maps = torch.stack([_attention_of(model, a, out, last_only)[0] for a, out in zip(_attentions(model), qkv)])
    return Internals(logits[0], torch.stack(hidden), maps)


def _attention_of(model: GPT, attn: CausalSelfAttention, qkv: torch.Tensor, last_only: bool) -> torch.Tensor:
    """Attention weights (B, n_head, T, T) of one layer from its q/k/v projection's output (B, T, qkv_dim),
    for a window at positions [0, T): the same q and k the layer's forward pass used.
    last_only: from the last query only, (B, n_head, 1, T)."""
    q, k, _ = attn.split_heads(qkv)
    positions = model.trunk.positions
    if isinstance(positions, RotaryPositions):  # q and k turned by their positions, with the model's own tables
        rope = positions(torch.arange(q.size(2), device=q.device))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if attn.n_kv_head != attn.n_head:  # grouped-query: each key head serves consecutive query heads
        k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)
    if last_only:
        q = q[:, :, -1:]
    return attention_weights(q.float(), k.float())


@torch.inference_mode()
def logit_lens(model: GPT, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits (..., V) from residual-stream vectors hidden (..., C): the final norm and the
    output head applied to them (nostalgebraist, "interpreting GPT: the logit lens", 2020)."""
    return model.lm_head(model.trunk.final_norm(hidden))


@torch.inference_mode()
def attention_maps(model: GPT, ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Attention weights (n_layer, n_head, T, T) of one window of token ids (T <= block_size):
    row i holds how much position i takes from each position j <= i; rows sum to 1."""
    idx = torch.as_tensor(ids, dtype=torch.long, device=next(model.parameters()).device)
    return forward_internals(model, idx, attention=True).attention


# ---------------------------------------------------------------- scoring


@dataclass
class Scores:
    """Per-target statistics over a sequence `ids` (n + 1 ids: a context token, then n targets).

    Arrays by target i (the token ids[i + 1], predicted at position i):
    bits (n,) surprisal -log2 p; prob (n,); rank (n,) 1 = the likeliest; entropy (n,) in bits;
    top_ids, top_probs (n, k) the likeliest next tokens; lens_rank, lens_prob (n, n_layer): rank
    and probability of the target through the logit lens of each layer (None unless asked for);
    lens_top_ids, lens_top_probs (n, n_layer, k): each layer's likeliest (None unless asked for).
    windows: how many windows of block_size the sequence took.
    """

    ids: np.ndarray
    bits: np.ndarray
    prob: np.ndarray
    rank: np.ndarray
    entropy: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    n_bytes: int
    windows: int
    lens_rank: np.ndarray | None = None
    lens_prob: np.ndarray | None = None
    lens_top_ids: np.ndarray | None = None
    lens_top_probs: np.ndarray | None = None

    @property
    def total_bits(self) -> float:
        return float(self.bits.sum(dtype=np.float64))

    @property
    def bpb(self) -> float:
        """Bits per byte: bits over every target token / the UTF-8 bytes they stand for."""
        return self.total_bits / self.n_bytes if self.n_bytes else float("nan")


def rank_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 + how many tokens have a higher logit than the target: logits (..., V), targets (...) -> (...).

    Compared on the logits themselves: in a log-softmax two close logits can round to one value.
    """
    return (logits > logits.gather(-1, targets.unsqueeze(-1))).sum(-1, dtype=torch.int32) + 1  # int32: 5x faster a sum


def target_stats(logits: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """From logits (T, V), their logprobs (T, V) in nats and the targets (T,): rank (T,), entropy (T,)
    in bits, and the top-k ids and probabilities (T, k)."""
    rank = rank_of(logits, targets)
    # H = -sum p log2 p (Shannon, 1948); softmax's fused kernel is several times faster than logprobs.exp()
    entropy = -(logits.float().softmax(-1) * logprobs).sum(-1) / LN2
    top = logprobs.topk(top_k, dim=-1)
    return {"rank": rank, "entropy": entropy, "top_ids": top.indices, "top_probs": top.values.exp()}


@torch.inference_mode()
def score(
    model: GPT, ids: np.ndarray | list[int], token_bytes: np.ndarray, top_k: int = TOP_K, lens: bool = False,
    lens_top: bool = False, n_bytes: int | None = None,
) -> Scores:
    """Score every token of `ids` after the first, window by window as `tinygpt eval` does.

    token_bytes (V,): the bytes each id stands for (Tokenizer.token_bytes()). lens: also the rank
    and probability of each target through every layer's logit lens (n_layer - 1 more output-head
    products per window); lens_top: and each layer's top-k. n_bytes: the bytes the text was read
    from, where known (a file's source bytes S, as `tinygpt eval` divides by), else the bytes its
    target tokens stand for. Needs len(ids) >= 2.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size < 2:
        raise TinyGPTError("nothing to score: a sequence needs a token of context and at least one target")
    cfg = model.cfg
    top_k = min(top_k, cfg.vocab_size)
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    windows = 0
    for row in sequence_windows(ids, cfg.block_size):
        windows += 1
        x = torch.from_numpy(row[:-1]).to(device)
        y = torch.from_numpy(row[1:]).to(device)
        inside = forward_internals(model, x) if lens or lens_top else None
        logits = inside.logits if inside else model(x.unsqueeze(0))[0][0]
        logprobs, bits = logprobs_and_bits(logits, y)
        found = {"bits": bits, "prob": (bits * -LN2).exp(), **target_stats(logits, logprobs, y, top_k)}
        if inside is not None:
            found.update(_lens_of_targets(model, inside.hidden, found, y, top_k, lens_top))
        for key, value in found.items():
            parts.setdefault(key, []).append(value.cpu())
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
    n_bytes = int(token_bytes[ids[1:]].sum()) if n_bytes is None else n_bytes
    return Scores(ids=ids, n_bytes=n_bytes, windows=windows, **arrays)


def _lens_of_targets(
    model: GPT, hidden: torch.Tensor, output: dict[str, torch.Tensor], targets: torch.Tensor, top_k: int, with_top: bool
) -> dict[str, torch.Tensor]:
    """Rank and probability of each target through every layer's lens, (T, n_layer); with_top, each
    layer's top-k (T, n_layer, k). The last layer's lens is the model's output: `output`'s stats are reused."""
    ranks, probs, top_ids, top_probs = [], [], [], []
    for layer in range(hidden.size(0) - 1):
        logits = logit_lens(model, hidden[layer])
        logprobs, bits = logprobs_and_bits(logits, targets)
        ranks.append(rank_of(logits, targets))
        probs.append((bits * -LN2).exp())
        if with_top:
            top = logprobs.topk(top_k, dim=-1)
            top_ids.append(top.indices)
            top_probs.append(top.values.exp())
    ranks.append(output["rank"])
    probs.append(output["prob"])
    top_ids.append(output["top_ids"])
    top_probs.append(output["top_probs"])
    found = {"lens_rank": torch.stack(ranks, dim=1), "lens_prob": torch.stack(probs, dim=1)}
    if with_top:
        found.update(lens_top_ids=torch.stack(top_ids, dim=1), lens_top_probs=torch.stack(top_probs, dim=1))
    return found


# ---------------------------------------------------------------- one token, looked at closely


@dataclass
class PositionDetail:
    """What happens at target i's own position (sequence position i + 1).

    attention (n_layer, n_head, S): the weights from that position to the S positions of its
    window up to it (keys ids[start : i + 2]); key_start: the sequence position of the first key.
    lens_top_ids, lens_top_probs (n_layer, k): each layer's likeliest next tokens there;
    next_rank, next_prob (n_layer,): the actual next token's through the layers (None at the end).
    """

    position: int
    key_start: int
    attention: torch.Tensor
    lens_top_ids: torch.Tensor
    lens_top_probs: torch.Tensor
    next_rank: torch.Tensor | None
    next_prob: torch.Tensor | None


def detail_range_error(cfg, n_targets: int, position: int, layer: int | None, head: int | None) -> tuple[str, str] | None:
    """(field, message) for a position, layer or head out of range for a text of n_targets tokens; None when all fit."""
    for name, value, count, what in (
        ("position", position, n_targets, f"for a text of {n_targets} token{'s' * (n_targets != 1)}"),
        ("layer", layer, cfg.n_layer, f"for a model of {cfg.n_layer} layers"),
        ("head", head, cfg.n_head, f"for a model of {cfg.n_head} heads"),
    ):
        if value is not None and not 0 <= value < count:
            return name, f"{name} must be in [0, {count - 1}] {what}, got {value}"
    return None


@torch.inference_mode()
def position_detail(model: GPT, ids: np.ndarray | list[int], position: int, top_k: int = TOP_K) -> PositionDetail:
    """Attention from target `position` (0-based among the targets ids[1:]) and the logit lens at it.

    Runs only its window up to that position, with the output head and the attention weights
    for that position alone (bench/inspection.py: about 80 ms of one CPU thread for the 15M shape).
    Raises TinyGPTError when position is out of range.
    """
    ids = np.asarray(ids, dtype=np.int64)
    problem = detail_range_error(model.cfg, ids.size - 1, position, None, None)
    if problem:
        raise TinyGPTError(problem[1])
    block_size = model.cfg.block_size
    here = position + 1  # its own place in the sequence
    start = here // block_size * block_size  # the window eval puts it in (loader.sequence_windows)
    device = next(model.parameters()).device
    inside = forward_internals(model, torch.from_numpy(ids[start : here + 1]).to(device), attention=True, last_only=True)
    lens = logit_lens(model, inside.hidden[:, -1]).float()  # (n_layer, V)
    logprobs = F.log_softmax(lens, dim=-1)
    top = logprobs.topk(min(top_k, model.cfg.vocab_size), dim=-1)
    next_rank = next_prob = None
    if here + 1 < ids.size:
        came = torch.full((lens.size(0),), int(ids[here + 1]), device=lens.device)
        next_rank = rank_of(lens, came)
        next_prob = logprobs.gather(-1, came.unsqueeze(-1)).squeeze(-1).exp()
    return PositionDetail(position, start, inside.attention[:, :, 0].cpu(), top.indices, top.values.exp(), next_rank, next_prob)


# ---------------------------------------------------------------- embeddings


@torch.inference_mode()
def unit_embeddings(model: GPT) -> dict[str, torch.Tensor]:
    """Each token's vector scaled to length 1, (V, C): "input" from the input embeddings, and
    "output" from the output head's rows when they are a separate matrix."""
    matrices = {"input": input_embeddings(model)}
    if model.lm_head.weight is not matrices["input"]:
        matrices["output"] = model.lm_head.weight
    return {name: F.normalize(weight.float(), dim=-1) for name, weight in matrices.items()}


@torch.inference_mode()
def nearest_tokens(units: dict[str, torch.Tensor], token: int, k: int = 10) -> dict[str, list[tuple[int, float]]]:
    """The k tokens nearest `token` by cosine similarity, itself left out, in each matrix of
    unit_embeddings(model). Returns lists of (id, cosine similarity), most similar first.

    Raises TinyGPTError for an id out of range.
    """
    vocab_size = units["input"].size(0)
    if not 0 <= token < vocab_size:
        raise TinyGPTError(f"token id must be in [0, {vocab_size - 1}], got {token}")
    found = {}
    for name, unit in units.items():
        similarity = unit @ unit[token]  # (V,)
        similarity[token] = -math.inf
        top = similarity.topk(min(k, vocab_size - 1))
        found[name] = [(int(i), float(s)) for i, s in zip(top.indices, top.values)]
    return found


# ---------------------------------------------------------------- a model with its tokenizer


@dataclass
class Inspector:
    """A model and its tokenizer: texts in, what the model saw in them out. For the command line,
    the server and notebooks alike. Not for use by two threads at once (hooks go on the model)."""

    model: GPT
    tokenizer: Tokenizer
    device: str = "cpu"
    checkpoint: Path | None = None
    _pieces: list[dict] | None = field(default=None, repr=False)
    _token_bytes: np.ndarray | None = field(default=None, repr=False)
    _units: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.model.cfg.vocab_size != self.tokenizer.vocab_size:
            raise TinyGPTError(
                f"the model has {self.model.cfg.vocab_size} token ids but the tokenizer {self.tokenizer.vocab_size}"
            )
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto") -> Inspector:
        """A run folder (its best/ checkpoint, else its newest) or one checkpoint folder."""
        from .run import find_checkpoint, load_model

        device = autodetect_device(device)
        folder = find_checkpoint(path)
        return cls(*load_model(folder), device, folder)

    @property
    def token_bytes(self) -> np.ndarray:
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes()
        return self._token_bytes

    def piece(self, token: int) -> dict:
        """{"id", "text"} for a token that is whole UTF-8 characters, else {"id", "bytes": "e2 80"} (hex)."""
        if self._pieces is None:
            self._pieces = [_piece(i, b) for i, b in enumerate(self.tokenizer.vocab_bytes())]
        return self._pieces[token]

    def nearest(self, token: int, k: int = 10) -> dict[str, list[tuple[int, float]]]:
        """nearest_tokens, with the unit vectors computed once."""
        if self._units is None:
            self._units = unit_embeddings(self.model)
        return nearest_tokens(self._units, token, k)

    def encode(self, text: str, limit: int = MAX_TOKENS) -> np.ndarray:
        """[end-of-text] + the text's ids: the text scored as a document start, its line endings read
        as documents' are (documents.normalize_line_endings). Raises TinyGPTError for an empty text,
        one over `limit` tokens, or characters the tokenizer cannot encode (named)."""
        if not text:
            raise TinyGPTError("the text is empty: give at least one character to inspect")
        ids = self.tokenizer.encode_prompt(normalize_line_endings(text), "text")
        if len(ids) > limit:
            raise TinyGPTError(f"the text is {len(ids):,} tokens; inspect takes at most {limit:,}")
        return np.array([self.tokenizer.eot_id, *ids], dtype=np.int64)

    def score(
        self, ids: np.ndarray, top_k: int = TOP_K, lens: bool = False, lens_top: bool = False, n_bytes: int | None = None
    ) -> Scores:
        return score(self.model, ids, self.token_bytes, top_k, lens, lens_top, n_bytes)

    def inspect(self, text: str, top_k: int = TOP_K, lens: bool = True) -> dict:
        """The first answer about a text: its tokens with surprisal, top-k and lens ranks, as JSON."""
        ids = self.encode(text)
        return self.scores_json(self.score(ids, top_k, lens))

    def scores_json(self, scores: Scores) -> dict:
        """The whole of a Scores as JSON: totals, then one object per target token.

        A token: {"id", "text" (or "bytes"), "prob", "bits", "rank", "entropy", "top": [{"id",
        "text", "prob"}], "lens": [[rank, prob] per layer]}; probabilities to 4 significant digits.
        """
        tokens = []
        for i, token in enumerate(scores.ids[1:].tolist()):
            entry = {
                **self.piece(token),
                "prob": _sig(scores.prob[i]),
                "bits": round(float(scores.bits[i]), 3),
                "rank": int(scores.rank[i]),
                "entropy": round(float(scores.entropy[i]), 3),
                "top": self._ranked(scores.top_ids[i], scores.top_probs[i]),
            }
            if scores.lens_rank is not None:
                entry["lens"] = [[int(r), _sig(p)] for r, p in zip(scores.lens_rank[i], scores.lens_prob[i])]
            if scores.lens_top_ids is not None:
                entry["lens_top"] = [self._ranked(t, p) for t, p in zip(scores.lens_top_ids[i], scores.lens_top_probs[i])]
            tokens.append(entry)
        cfg = self.model.cfg
        return {
            "context": [self.piece(int(scores.ids[0]))],
            "tokens": tokens,
            "n_tokens": len(tokens),
            "bits": round(scores.total_bits, 4),
            "bytes": scores.n_bytes,
            "bpb": round(scores.bpb, 6),
            "windows": scores.windows,
            "block_size": cfg.block_size,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
        }

    def position_json(self, ids: np.ndarray, position: int, top_k: int = TOP_K, layer: int | None = None,
                      head: int | None = None, nearest: int = 8) -> dict:
        """The second answer: attention from target `position` in every layer and head (or the one
        `layer` / `head` asked for), the logit lens there, and the tokens nearest it in the embeddings.

        "attention"[l][h][j]: weight on key j, the sequence position key_start + j (0 is the leading
        end-of-text token). Raises TinyGPTError for a position, layer or head out of range.
        """
        cfg = self.model.cfg
        problem = detail_range_error(cfg, ids.size - 1, position, layer, head)
        if problem:
            raise TinyGPTError(problem[1])
        detail = position_detail(self.model, ids, position, top_k)
        attention = detail.attention
        layers = range(cfg.n_layer) if layer is None else [layer]
        heads = range(cfg.n_head) if head is None else [head]
        token = int(ids[position + 1])
        near = self.nearest(token, nearest)
        lens = []
        for i, l in enumerate(detail.lens_top_ids):
            entry = {"top": self._ranked(l, detail.lens_top_probs[i])}
            if detail.next_rank is not None:
                entry.update(next_rank=int(detail.next_rank[i]), next_prob=_sig(detail.next_prob[i]))
            lens.append(entry)
        return {
            "position": position,
            "token": self.piece(token),
            "key_start": detail.key_start,
            "keys": [self.piece(int(t)) for t in ids[detail.key_start : position + 2]],
            "layers": list(layers),
            "heads": list(heads),
            "attention": np.round(attention[list(layers)][:, list(heads)].double().numpy(), 4).tolist(),
            "lens": lens,
            "next": self.piece(int(ids[position + 2])) if position + 2 < ids.size else None,
            "nearest": {name: [{**self.piece(t), "cosine": round(c, 4)} for t, c in pairs] for name, pairs in near.items()},
        }

    def _ranked(self, ids, probs) -> list[dict]:
        return [{**self.piece(int(t)), "prob": _sig(p)} for t, p in zip(ids, probs)]


def _piece(token: int, data: bytes) -> dict:
    try:
        return {"id": token, "text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"id": token, "bytes": data.hex(" ")}


def _sig(x) -> float:
    """A probability to 4 significant digits: enough to read, a third of the JSON of full floats."""
    return float(f"{float(x):.4g}")


# ---------------------------------------------------------------- what changed between two checkpoints


def compare(earlier: Inspector, later: Inspector, ids: np.ndarray, n_bytes: int | None = None) -> dict:
    """Per-token surprisal of one sequence under two checkpoints of the same tokenizer (n_bytes as in `score`).

    Returns {"earlier", "later": Scores, "delta": (n,) bits later - earlier (negative: learned)}.
    Raises TinyGPTError when the tokenizers differ (the same ids would mean different text).
    """
    if earlier.tokenizer.hash != later.tokenizer.hash:
        raise TinyGPTError("the two checkpoints have different tokenizers: their token ids cannot be compared")
    before, after = earlier.score(ids, n_bytes=n_bytes), later.score(ids, n_bytes=n_bytes)
    return {"earlier": before, "later": after, "delta": after.bits - before.bits}


# ---------------------------------------------------------------- a file, as `tinygpt eval` reads it


@contextlib.contextmanager
def file_ids(
    inspector: Inspector, path: str | Path, limit: int = MAX_TOKENS, *, errors: str = "strict", text_field: str = "text"
) -> Iterator[tuple[np.ndarray, int]]:
    """The tokens of a text file (.txt/.jsonl/.json) or prepared folder as `tinygpt eval` reads it:
    the end-of-text token, then the documents, an end-of-text token for each separator line; and S,
    the source bytes that eval's bits per byte divides by (a .txt file's size).

    Raises TinyGPTError for a file over `limit` tokens, or one prepared with another tokenizer.
    """
    from .evaluate import eval_data

    with eval_data(path, None, inspector.tokenizer, inspector.checkpoint, errors=errors, text_field=text_field) as shards:
        if shards.tokens > limit:
            raise TinyGPTError(f"{path} is {shards.tokens:,} tokens; inspect takes at most {limit:,} (tinygpt eval scores any size)")
        if len(shards.shards) > 1:  # eval's windows start afresh in each shard
            raise TinyGPTError(f"{path} is prepared in {len(shards.shards)} shards; inspect reads one: give the text file")
        yield np.asarray(shards.shards[0], dtype=np.int64), shards.source_bytes
