"""`tinygpt inspect`: the terminal view of tinygpt.analysis, its JSON, and attention heat-maps.

The text is printed with each token marked by its surprisal: coloured backgrounds on a terminal,
brackets around the most surprising tokens when the output is not a terminal or NO_COLOR is set
(https://no-color.org). Then the top alternatives at the most surprising positions and a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .analysis import MAX_TOKENS, TOP_K, Inspector, Scores, attention_maps, compare, file_ids
from .common import TinyGPTError
from .documents import normalize_line_endings
from .evaluate import add_reading_arguments

# Surprisal bands in bits, with their 256-colour backgrounds: p > 1/2 unmarked, then ever hotter.
BANDS = [(1.0, None), (2.0, 230), (4.0, 229), (7.0, 222), (10.0, 215), (math.inf, 203)]
PLAIN_MARK_BITS = 10.0  # without colour, tokens this surprising (p < 1/1024) are bracketed
# Change in bits between two checkpoints: learned (surprisal fell) in greens, worse in reds.
DELTA_BANDS = [(-6.0, 120), (-3.0, 150), (-1.0, 194), (1.0, None), (3.0, 224), (6.0, 217), (math.inf, 203)]
PLAIN_MARK_DELTA = 3.0
MOST_SURPRISING = 8


# ---------------------------------------------------------------- marking tokens


def use_colour(stream=None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (to anything but "")."""
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR")


def display(piece: dict) -> str:
    """A token as it reads: its text, or ‹e2 80› for bytes that are part of a character."""
    return piece["text"] if "text" in piece else f"‹{piece['bytes']}›"


def quoted(piece: dict, width: int = 0) -> str:
    """A token quoted so that spaces and newlines show: "␣fox" style via repr, clipped to width."""
    text = json.dumps(display(piece), ensure_ascii=False)
    if width and len(text) > width:
        text = text[: width - 2] + "…\""
    return text


def _band(value: float, bands) -> int | None:
    return next(colour for edge, colour in bands if value < edge)


def mark_tokens(pieces: list[dict], values: np.ndarray, bands, plain_mark: float, colour: bool, signed: bool = False) -> str:
    """The tokens' text with each marked by its value (bits, or a change in bits when signed).

    colour: a 256-colour background per band (black text on it); a newline inside a token is
    left unpainted. Plain: tokens with |value| >= plain_mark are written [token 12.3], any
    leading spaces outside the brackets.
    """
    out = []
    for piece, value in zip(pieces, values.tolist()):
        text = display(piece)
        if colour:
            background = _band(value, bands)
            if background is None:
                out.append(text)
            else:
                out.append("\n".join(f"\x1b[30;48;5;{background}m{line}\x1b[0m" if line else "" for line in text.split("\n")))
        elif abs(value) >= plain_mark:
            core = text.lstrip(" ")
            out.append(f"{text[: len(text) - len(core)]}[{core} {value:+.1f}]" if signed else f"{text[: len(text) - len(core)]}[{core} {value:.1f}]")
        else:
            out.append(text)
    return "".join(out)


def legend(bands, colour: bool, plain_mark: float, what: str) -> str:
    if not colour:
        return f"[token N]: {what} of at least {plain_mark:g} bits"
    keys, low = [], None
    for edge, background in bands:
        label = f"<{edge:g}" if low is None else (f"{low:g}+" if edge == math.inf else f"{low:g}-{edge:g}")
        keys.append(label if background is None else f"\x1b[30;48;5;{background}m {label} \x1b[0m")
        low = edge
    return f"{what} in bits: " + " ".join(keys)


# ---------------------------------------------------------------- the views


def unscored_start(inspector: Inspector, ids: np.ndarray) -> str:
    """The text of the context token ids[0] when it is part of the text (a --file's first token, which
    `tinygpt eval` reads only as context), "" when it is the end-of-text token a --text is read after."""
    first = int(ids[0])
    return "" if first == inspector.tokenizer.eot_id else display(inspector.piece(first))


def surprisal_view(inspector: Inspector, scores: Scores, colour: bool) -> list[str]:
    pieces = [inspector.piece(int(t)) for t in scores.ids[1:]]
    text = unscored_start(inspector, scores.ids) + mark_tokens(pieces, scores.bits, BANDS, PLAIN_MARK_BITS, colour)
    lines = [text, "", legend(BANDS, colour, PLAIN_MARK_BITS, "surprisal"), ""]
    order = np.argsort(-scores.bits, kind="stable")[:MOST_SURPRISING]
    lines.append(f"the {len(order)} most surprising tokens, and what the model expected instead:")
    lines.append(f"{'token #':>8}  {'token':<16}{'bits':>6}{'p':>9}{'rank':>7}  expected")
    for i in order.tolist():
        alternatives = ", ".join(
            f"{quoted(inspector.piece(int(t)), 14)} {p:.2f}" for t, p in zip(scores.top_ids[i], scores.top_probs[i])
        )
        lines.append(
            f"{i:>8}  {quoted(pieces[i], 15):<16}{scores.bits[i]:>6.1f}{_p(scores.prob[i]):>9}{scores.rank[i]:>7,}  {alternatives}"
        )
    return lines


def summary(scores: Scores) -> str:
    n = scores.bits.size
    return (
        f"{n:,} tokens, {scores.total_bits:,.1f} bits: {scores.total_bits / n:.2f} bits per token, "
        f"{scores.bpb:.4f} bits per byte over {scores.n_bytes:,} bytes; mean entropy {scores.entropy.mean():.2f} bits"
    )


def lens_view(inspector: Inspector, scores: Scores) -> list[str]:
    """A row per position: each layer's likeliest next token and the rank of the token that came."""
    n_layer = scores.lens_rank.shape[1]
    width = 22
    header = f"{'token #':>8}  {'after':<16}{'came':<16}" + "".join(
        f"{'layer ' + str(l) + (' (output)' if l == n_layer - 1 else ''):<{width}}" for l in range(n_layer)
    ).rstrip()
    lines = [
        "logit lens: each layer's likeliest next token (the final norm and output head applied to its output),",
        "and the rank there of the token that came (1 = it was the likeliest)",
        header,
    ]
    for i in range(scores.bits.size):
        cells = "".join(
            f"{quoted(inspector.piece(int(scores.lens_top_ids[i, l, 0])), 13):<14}{scores.lens_rank[i, l]:>6,}  "
            for l in range(n_layer)
        )
        after = quoted(inspector.piece(int(scores.ids[i])), 15)
        came = quoted(inspector.piece(int(scores.ids[i + 1])), 15)
        lines.append(f"{i:>8}  {after:<16}{came:<16}{cells}".rstrip())
    return lines


def position_view(inspector: Inspector, detail: dict, top_keys: int = 3) -> list[str]:
    name = quoted(detail["token"])
    lines = [f"token #{detail['position']} {name}: attention from it (the {top_keys} keys each head weighs most)"]
    keys = detail["keys"]
    for l, layer in zip(detail["layers"], detail["attention"]):
        for h, weights in zip(detail["heads"], layer):
            best = np.argsort(-np.array(weights), kind="stable")[:top_keys]
            where = ", ".join(f"{_key_name(detail['key_start'] + j, keys[j])} {weights[j]:.2f}" for j in best)
            lines.append(f"  layer {l} head {h}: {where}")
    after = f" (the token that came: {quoted(detail['next'])})" if detail["next"] else ""
    lines.append(f"logit lens after {name}: each layer's likeliest next tokens{after}")
    for l, entry in enumerate(detail["lens"]):
        guesses = ", ".join(f"{quoted(t, 14)} {t['prob']:.2f}" for t in entry["top"])
        came = f"  | came: rank {entry['next_rank']:,}, p {entry['next_prob']:.3g}" if "next_rank" in entry else ""
        lines.append(f"  layer {l}: {guesses}{came}")
    for kind, near in detail["nearest"].items():
        lines.append(f"nearest to {name} by {kind} embedding: " + ", ".join(f"{quoted(t, 14)} {t['cosine']:.2f}" for t in near))
    return lines


def _key_name(position: int, piece: dict) -> str:
    """A key: "start" for the end-of-text token every text is read after, else its number (as the
    tokens are numbered) and text."""
    return "start" if position == 0 else f"#{position - 1} {quoted(piece, 14)}"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-3 else f"{p:.1e}"


def compare_view(inspector: Inspector, result: dict, names: tuple[str, str], colour: bool) -> list[str]:
    before, after, delta = result["earlier"], result["later"], result["delta"]
    pieces = [inspector.piece(int(t)) for t in after.ids[1:]]
    lines = [
        f"surprisal under {names[1]} minus under {names[0]}, per token (negative: learned):",
        unscored_start(inspector, after.ids) + mark_tokens(pieces, delta, DELTA_BANDS, PLAIN_MARK_DELTA, colour, signed=True),
        "",
        legend(DELTA_BANDS, colour, PLAIN_MARK_DELTA, "change") if colour else f"[token ±N]: a change of at least {PLAIN_MARK_DELTA:g} bits",
        "",
    ]
    for title, order in (("learned most", np.argsort(delta, kind="stable")), ("got worse", np.argsort(-delta, kind="stable"))):
        picked = [i for i in order[:MOST_SURPRISING].tolist() if (delta[i] < 0) == (title == "learned most") and delta[i] != 0]
        if picked:
            lines.append(f"{title}: " + ", ".join(
                f"#{i} {quoted(pieces[i], 14)} {before.bits[i]:.1f} -> {after.bits[i]:.1f} bits" for i in picked
            ))
    lines.append(f"bits per byte: {before.bpb:.4f} under {names[0]} -> {after.bpb:.4f} under {names[1]}")
    return lines


def write_attention_pngs(inspector: Inspector, ids: np.ndarray, out: Path) -> list[Path]:
    """One heat-map per layer, its heads in a grid, for the first window of `ids` (block_size positions)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    window = ids[: inspector.model.cfg.block_size]
    maps = attention_maps(inspector.model, window).cpu().numpy()  # (n_layer, n_head, T, T)
    labels = [display(inspector.piece(int(t))).replace("\n", "⏎") for t in window]
    n_layer, n_head, T, _ = maps.shape
    cols = int(np.ceil(np.sqrt(n_head)))
    rows = int(np.ceil(n_head / cols))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in range(n_layer):
        fig = Figure(figsize=(4.2 * cols, 4.2 * rows + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(f"layer {layer}: attention weights (row: query position, column: key position)")
        for head in range(n_head):
            ax = fig.add_subplot(rows, cols, head + 1)
            ax.imshow(maps[layer, head], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"head {head}", fontsize=9)
            if T <= 40:  # token labels only while they can be read
                ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(T), labels, fontsize=6)
            else:
                ax.tick_params(labelsize=6)
        path = out / f"attention-layer-{layer:02d}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- `tinygpt inspect`


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Look inside a trained model: how surprised it is by each token of a text, what it expected\n"
        "instead, where each attention head looks, what each layer would already predict (logit lens),\n"
        "and which tokens it learned between two checkpoints.\n\n"
        "The text is scored after an end-of-text token, as a document start; texts longer than the\n"
        "context go in the windows `tinygpt eval` uses. --file reads a file as `tinygpt eval` does,\n"
        "and its total bits equal eval's.\n\n"
        "  tinygpt inspect runs/ts --text \"Once upon a time, there was a little fox.\"\n"
        "  tinygpt inspect runs/ts --file story.txt --lens --json > story.json\n"
        "  tinygpt inspect runs/ts --text \"...\" --position 7 --attention-png attention/\n"
        "  tinygpt inspect runs/ts --text \"...\" --compare runs/ts/checkpoints/step-0000000500"
    )
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a training run folder (uses best/, else the newest checkpoint) or one checkpoint folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", "-t", metavar="TEXT", help="the text to inspect (default: standard input when it is not a terminal)")
    source.add_argument("--file", "-f", metavar="FILE", help="a text file (.txt/.jsonl/.json), read as `tinygpt eval` reads it")
    add_reading_arguments(p)
    p.add_argument("--top-k", type=int, default=TOP_K, metavar="K", help=f"alternatives per position (default: {TOP_K})")
    p.add_argument("--lens", action="store_true", help="print the logit-lens table: each layer's likeliest next token at each position")
    p.add_argument("--position", type=int, metavar="I", help="attention from token I (0 = the first) in every layer and head, and the lens there")
    p.add_argument("--layer", type=int, metavar="L", help="with --position: only layer L (0-based)")
    p.add_argument("--head", type=int, metavar="H", help="with --position: only head H (0-based)")
    p.add_argument("--attention-png", metavar="DIR", help="write one attention heat-map per layer (heads as a grid) into DIR, for the first window")
    p.add_argument("--compare", metavar="CHECKPOINT", help="the same text under another checkpoint: which tokens were learned in between")
    p.add_argument("--nearest", metavar="TOKEN", help="the tokens nearest this one (a text of one token) by embedding cosine similarity")
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON document")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (default 0: torch's default)")
    p.epilog = (
        f"Surprisal of a token: -log2 p, in bits. Bits per byte: bits over every scored token / the UTF-8 bytes "
        f"they stand for. Texts and files are limited to {MAX_TOKENS:,} tokens. Colours only on a terminal; "
        "set NO_COLOR to turn them off."
    )


def _check_arguments(args) -> None:
    if args.top_k < 1:
        raise TinyGPTError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threads < 0:
        raise TinyGPTError(f"--threads must not be negative, got {args.threads}")
    if (args.layer is not None or args.head is not None) and args.position is None:
        raise TinyGPTError("--layer and --head choose what --position shows: give --position too")
    for flag in ("file", "compare", "attention_png"):
        if getattr(args, flag) == "":
            raise TinyGPTError(f"--{flag.replace('_', '-')} is empty: give a path")
    if args.attention_png and Path(args.attention_png).exists() and not Path(args.attention_png).is_dir():
        raise TinyGPTError(f"--attention-png {args.attention_png} is a file: give a folder for the heat-maps")


def _read_ids(inspector: Inspector, args, stack) -> tuple[np.ndarray | None, int | None]:
    """The ids to inspect and, for a file, its source bytes (None: the bytes the tokens stand for)."""
    if args.file is not None:
        return stack.enter_context(file_ids(inspector, args.file, errors=args.errors, text_field=args.text_field))
    text = args.text
    if text is None:
        if args.nearest is not None:
            return None, None
        if sys.stdin is None or sys.stdin.isatty():
            raise TinyGPTError("give a text to inspect: --text TEXT, --file FILE, or pipe it on standard input")
        data = sys.stdin.buffer.read()  # bytes: a text stream would turn bad bytes into lone surrogates
        try:
            text = normalize_line_endings(data.decode("utf-8")).removesuffix("\n")
        except UnicodeDecodeError as e:
            raise TinyGPTError(f"the text on standard input is not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start}") from None
    return inspector.encode(text), None


def _one_token(inspector: Inspector, text: str) -> int:
    ids = inspector.tokenizer.encode_prompt(text, "--nearest token")
    if len(ids) != 1:
        shown = " ".join(quoted(inspector.piece(t)) for t in ids) or "no tokens"
        raise TinyGPTError(f"--nearest takes one token; {text!r} is {shown}")
    return ids[0]


def _step(inspector: Inspector) -> int | None:
    from .checkpoint import read_progress

    return read_progress(inspector.checkpoint).get("step")


def run_inspect(args: argparse.Namespace) -> int:
    import contextlib

    _check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    inspector = Inspector.from_path(args.path, args.device)
    result: dict = {"checkpoint": str(inspector.checkpoint), "step": _step(inspector)}
    lines: list[str] = []
    colour = use_colour()
    with contextlib.ExitStack() as stack:
        ids, n_bytes = _read_ids(inspector, args, stack)
        if ids is not None:
            scores = inspector.score(ids, args.top_k, lens=args.lens or args.json, lens_top=args.lens, n_bytes=n_bytes)
            result.update(inspector.scores_json(scores))
            lines += [_header(inspector, result), ""] + surprisal_view(inspector, scores, colour)
            if args.lens:
                lines += [""] + lens_view(inspector, scores)
            if args.position is not None:
                detail = inspector.position_json(ids, args.position, args.top_k, args.layer, args.head)
                result["position_detail"] = detail
                lines += [""] + position_view(inspector, detail)
            if args.compare is not None:
                lines += [""] + _compare(inspector, ids, n_bytes, args, result, colour)
            if args.attention_png:
                paths = write_attention_pngs(inspector, ids, Path(args.attention_png))
                result["attention_png"] = [str(p) for p in paths]
                first = " (the first window)" if result["windows"] > 1 else ""
                lines += ["", f"attention heat-maps{first}: " + ", ".join(map(str, paths))]
            lines += ["", summary(scores)]
    if args.nearest is not None:
        token = _one_token(inspector, args.nearest)
        near = inspector.nearest(token)
        result["nearest"] = {kind: [{**inspector.piece(t), "cosine": round(c, 4)} for t, c in pairs] for kind, pairs in near.items()}
        for kind, pairs in result["nearest"].items():
            lines.append(f"nearest to {quoted(inspector.piece(token))} by {kind} embedding: "
                         + ", ".join(f"{quoted(t)} {t['cosine']:.3f}" for t in pairs))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print("\n".join(lines))
    return 0


def _header(inspector: Inspector, result: dict) -> str:
    cfg = inspector.model.cfg
    step = f", step {result['step']:,}" if result["step"] is not None else ""
    windows = result["windows"]
    split = (
        f"{windows} windows of {cfg.block_size} tokens (each window starts afresh)" if windows > 1
        else f"one window (context {cfg.block_size})"
    )
    return (
        f"{result['checkpoint']}{step}: {cfg.family}, {cfg.n_layer} layers x {cfg.n_head} heads, "
        f"{inspector.tokenizer.kind} tokenizer | {result['n_tokens']:,} tokens in {split}"
    )


def _compare(inspector: Inspector, ids: np.ndarray, n_bytes: int | None, args, result: dict, colour: bool) -> list[str]:
    other = Inspector.from_path(args.compare, args.device)
    steps = (_step(inspector), _step(other))
    pair = (inspector, other)
    if steps[0] is not None and steps[1] is not None and steps[0] < steps[1]:
        pair = (other, inspector)  # the later checkpoint is the one that learned
    later, earlier = pair
    found = compare(earlier, later, ids, n_bytes)
    names = tuple(f"{x.checkpoint}" + (f" (step {_step(x):,})" if _step(x) is not None else "") for x in (earlier, later))
    result["compare"] = {
        "earlier": names[0],
        "later": names[1],
        "bits_earlier": [round(float(b), 3) for b in found["earlier"].bits],
        "bits_later": [round(float(b), 3) for b in found["later"].bits],
        "bpb_earlier": found["earlier"].bpb,
        "bpb_later": found["later"].bpb,
    }
    return compare_view(later, found, names, colour)
