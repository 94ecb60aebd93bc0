"""Export a trained model to a folder that Hugging Face `transformers` loads with no custom code.

`AutoModelForCausalLM.from_pretrained(folder)` gives a GPT2LMHeadModel or LlamaForCausalLM
with the same logits as ours, and `AutoTokenizer.from_pretrained(folder)` a fast tokenizer
with the same ids. Every file is built here from the `tokenizers` and `safetensors`
libraries and plain JSON, so exporting needs no `transformers`; only loading the result does.

A model whose shapes or options the stock classes cannot express is refused before anything
is written, with the reason: a converted model that loads but computes something else would
be worse than none.

`tinygpt export --format gguf|ollama` (llama.cpp, Ollama, LM Studio) is gguf_export.py's;
the command line here serves all three formats.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_progress
from .common import TinyGPTError, atomic_folder, read_json, write_file
from .config import ModelConfig
from .gguf_export import DTYPES, export_gguf, export_ollama, summary_lines
from .run import find_checkpoint, is_best, load_model
from .shards import MANIFEST
from .tokenizers import EOT_TEXT, BPETokenizer, CharTokenizer, SentencePieceTokenizer, Tokenizer

# ---------------------------------------------------------------- the model card's facts


@dataclass(frozen=True)
class Dataset:
    name: str
    hub_id: str  # the dataset's Hugging Face id, for the card's metadata
    license: str
    attribution: str


DATASETS = {
    "tinystories": Dataset(
        name="TinyStories",
        hub_id="roneneldan/TinyStories",
        license="CDLA-Sharing-1.0",
        attribution="Ronen Eldan and Yuanzhi Li (2023), *TinyStories: How Small Can Language Models Be "
        "and Still Speak Coherent English?*, arXiv:2305.07759",
    ),
}


@dataclass
class CardInfo:
    """What the model card says about training; None where the run did not record it."""

    name: str = "tinygpt model"
    dataset: str | None = None  # a key of DATASETS, or free text describing the training data
    steps: int | None = None
    tokens: int | None = None
    val_bpb: float | None = None


# ---------------------------------------------------------------- model: config and weights

CONV1D_SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2's transposed layers


def _gpt2_config(cfg: ModelConfig) -> dict:
    """GPT2Config's keys for `cfg`; refuses what GPT2LMHeadModel cannot compute."""
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        raise TinyGPTError(
            f"cannot export to GPT2LMHeadModel: its heads are n_embd / n_head wide, but this model has "
            f"{cfg.n_head} heads of {cfg.head_dim} on a {cfg.n_embd}-wide embedding "
            "(the llama family exports any head size)"
        )
    if cfg.bias_head:
        raise TinyGPTError("cannot export to GPT2LMHeadModel: its lm_head has no bias, and this model's has (model.bias_head)")
    return {
        "model_type": "gpt2",
        "n_embd": cfg.n_embd,
        "n_inner": cfg.hidden_dim,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        # gelu_pytorch_tanh calls the same torch function as our MLP, so the outputs match bit for bit
        "activation_function": {"gelu": "gelu_pytorch_tanh", "relu": "relu", "relu2": "relu2"}[cfg.activation],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout if cfg.embd_dropout else 0.0,
        "attn_pdrop": cfg.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _llama_config(cfg: ModelConfig) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "relu2" if cfg.activation == "relu2" else "silu",  # the gate's activation
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": cfg.dropout,
        "mlp_bias": False,
        "pretraining_tp": 1,
    }


def _gpt2_weights(model: nn.Module, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Conv1D stores weights (in, out), the transpose of nn.Linear, and always has a bias: one
    we left out is written as zeros, which computes the same."""
    for name, module in model.named_modules():
        if name.endswith(CONV1D_SUFFIXES):
            tensors[f"{name}.weight"] = module.weight.detach().t()
            if module.bias is None:
                tensors[f"{name}.bias"] = module.weight.new_zeros(module.out_features)


@dataclass(frozen=True)
class HFFamily:
    """How one of our model families (model.FAMILIES) becomes a stock transformers class."""

    architecture: str  # the class AutoModelForCausalLM builds
    config: Callable[[ModelConfig], dict]  # its config.json keys, or a TinyGPTError when it cannot express cfg
    weights: Callable[[nn.Module, ModelConfig, dict[str, torch.Tensor]], None]  # our tensors to its layout, in place
    blocks: Callable[[ModelConfig], str]  # the model card's words for a block


HF_FAMILIES = {
    "gpt2": HFFamily(
        "GPT2LMHeadModel", _gpt2_config, _gpt2_weights,
        blocks=lambda cfg: "LayerNorm, learned positions, "
        + {"gelu": "tanh-GELU", "relu": "ReLU", "relu2": "squared-ReLU"}[cfg.activation] + " MLP",
    ),
    "llama": HFFamily(
        "LlamaForCausalLM", _llama_config, lambda model, cfg, tensors: None,  # its names are ours
        blocks=lambda cfg: f"RMSNorm, rotary positions (theta {cfg.rope_theta:g}), "
        + ("squared-ReLU-gated MLP" if cfg.activation == "relu2" else "SwiGLU MLP"),
    ),
}


# Model options no stock transformers class computes (model.zero_init_proj, an initialisation,
# and activation "relu2", ACT2FN's, export as they are).
UNEXPRESSED_OPTIONS = {
    "qk_norm": "queries and keys scaled to unit RMS per head",
    "embed_skip": "the embeddings added again before every block",
}


def hf_config(cfg: ModelConfig, eot_id: int, dtype: torch.dtype) -> dict:
    """config.json for the stock class that computes exactly what `cfg` describes, or a refusal saying why not.

    Keys are the long-standing ones (`rope_theta`, `torch_dtype`), which both older and newer
    transformers read. Our documents are separated by <|endoftext|>, so it is both the token a
    generation starts after and the one it stops at.
    """
    family = HF_FAMILIES[cfg.family]
    for option, what in UNEXPRESSED_OPTIONS.items():
        if getattr(cfg, option):
            raise TinyGPTError(f"cannot export to {family.architecture}: it has no model.{option} ({what})")
    return {
        "architectures": [family.architecture],
        **family.config(cfg),
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_state_dict(model: nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face's layout: the names already match, one layout does not.

    GPT-2's Conv1D stores weights transposed (see _gpt2_weights); Llama's are Hugging Face's
    as they are. A tied lm_head is written once, as the embedding, and re-tied on load
    (tie_word_embeddings).
    """
    tensors = {name: t.detach() for name, t in model.state_dict().items()}
    if cfg.tie_weights:
        del tensors["lm_head.weight"]
    HF_FAMILIES[cfg.family].weights(model, cfg, tensors)
    return {name: t.contiguous().cpu() for name, t in tensors.items()}


# ---------------------------------------------------------------- tokenizer


def hf_tokenizer(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that gives exactly our ids, with <|endoftext|> as a special token at our eot id.

    - bpe: our library tokenizer as is, plus the special token at id n (where we keep it).
    - sentencepiece: rebuilt as a byte-fallback BPE whose merges follow the pieces' scores,
      which is how SentencePiece's BPE picks merges; spaces become "▁" first, as in SentencePiece.
    - char: a BPE with no merges, that is a lookup of each character, unknown ones to <unk>.
    The loading tokenizer is told to split special tokens (tokenizer_config.json), so literal
    "<|endoftext|>" in text stays ordinary text there as it does here.
    """
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    specials = [EOT_TEXT]
    if isinstance(tokenizer, BPETokenizer):
        tok = HFTokenizer.from_str(tokenizer._tok.to_str())
    elif isinstance(tokenizer, SentencePieceTokenizer):
        sp = tokenizer._sp
        unk = sp.id_to_piece(sp.unk_id())
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        tok = HFTokenizer(models.BPE(vocab, _sentencepiece_merges(sp), unk_token=unk, byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        specials.append(unk)
    elif isinstance(tokenizer, CharTokenizer):
        unk = "<unk>"
        vocab = {EOT_TEXT: tokenizer.eot_id, unk: tokenizer.unk_id}
        vocab.update({c: i for i, c in enumerate(tokenizer.chars, start=2)})
        tok = HFTokenizer(models.BPE(vocab, [], unk_token=unk))
        tok.decoder = decoders.Fuse()
        specials.append(unk)
    else:
        raise TinyGPTError(f"cannot export a {tokenizer.kind!r} tokenizer to Hugging Face")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if tok.token_to_id(EOT_TEXT) != tokenizer.eot_id or tok.get_vocab_size() != tokenizer.vocab_size:
        raise TinyGPTError("internal error: the exported tokenizer's ids do not line up with ours")
    return tok


def _sentencepiece_merges(sp) -> list[tuple[str, str]]:
    """Every (left, right) pair of pieces that joins into a piece, most-preferred merge first.

    SentencePiece's BPE repeatedly joins the adjacent pair whose joined piece scores highest;
    Hugging Face's BPE joins the pair with the lowest merge rank. Ranking pairs by their
    joined piece's score makes the two agree.
    """
    normal = {
        sp.id_to_piece(i): i
        for i in range(sp.get_piece_size())
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    }
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(i), i, normal[left], normal[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def hf_tokenizer_config(tok, block_size: int) -> dict:
    """tokenizer_config.json for `tok` (from hf_tokenizer): the generic fast tokenizer, adding no BOS,
    and matching no special token inside text."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT_TEXT,
        "eos_token": EOT_TEXT,
        "pad_token": EOT_TEXT,
        "model_max_length": block_size,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    if tok.model.unk_token:  # byte-level BPE has none: every byte is in its alphabet
        config["unk_token"] = tok.model.unk_token
    return config


# ---------------------------------------------------------------- model card


def model_card(model: nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, info: CardInfo) -> str:
    """README.md: what the model is, how it was trained, how to load it, and whose data it learned from."""
    dataset = DATASETS.get((info.dataset or "").lower())
    family = HF_FAMILIES[cfg.family]
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- tinygpt", f"- {cfg.family}"]
    if dataset:
        front += ["datasets:", f"- {dataset.hub_id}"]
    front.append("---")

    def recorded(value, fmt="{}"):
        return fmt.format(value) if value is not None else "not recorded"

    rows = [
        ("architecture", f"{family.architecture} ({cfg.family} family: {family.blocks(cfg)})"),
        ("parameters", f"{model.num_params():,} ({model.num_params(non_embedding=True):,} non-embedding)"),
        ("layers / width / MLP hidden", f"{cfg.n_layer} / {cfg.n_embd} / {cfg.hidden_dim}"),
        ("attention heads", f"{cfg.n_head} query, {cfg.kv_heads} key/value, {cfg.head_dim} wide"),
        ("context", f"{cfg.block_size} tokens"),
        ("tokenizer", f"{tokenizer.kind}, {tokenizer.vocab_size} tokens; `{EOT_TEXT}` (id {tokenizer.eot_id}) ends a document"),
        ("embeddings", "tied to the output layer" if cfg.tie_weights else "separate from the output layer"),
        ("training data", dataset.name if dataset else recorded(info.dataset)),
        ("training steps", recorded(info.steps, "{:,}")),
        ("training tokens", recorded(info.tokens, "{:,}")),
        ("validation bits per byte", recorded(info.val_bpb, "{:.4f}")),
    ]
    if dataset:
        data_note = (
            f"The training data is [{dataset.name}](https://huggingface.co/datasets/{dataset.hub_id}) by "
            f"{dataset.attribution}, released under the {dataset.license} licence."
        )
    elif info.dataset:
        data_note = f"The training data is {info.dataset}. Its licence was not recorded: add it here before sharing this model."
    else:
        data_note = "The training data and its licence were not recorded: add them here before sharing this model."
    return "\n".join([
        *front,
        "",
        f"# {info.name}",
        "",
        "A small language model trained from scratch with tinygpt and exported to Hugging Face `transformers`.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        "Bits per byte is the validation loss per UTF-8 byte of text, comparable across tokenizers.",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=100, do_sample=True, top_k=50)",
        "print(tokenizer.decode(out[0]))",
        "```",
        "",
        f"Keep the prompt and the new tokens within the model's context of {cfg.block_size} tokens.",
        f"The tokenizer adds no start token. A literal `{EOT_TEXT}` in text is encoded as ordinary text,",
        "as in tinygpt; only the model emits the end-of-text id.",
        "",
        "## Training data",
        "",
        data_note,
        "",
    ])


# ---------------------------------------------------------------- writing the folder

SENTENCEPIECE_FILE = "tokenizer.model"
EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    SENTENCEPIECE_FILE,
    "README.md",
)


def export_hf(model: nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, out_dir: str | Path,
              card_info: CardInfo | None = None, overwrite: bool = False) -> Path:
    """Write `model` as a Hugging Face model folder at `out_dir`, all or nothing; return its path.

    Everything is converted in memory first, so a refusal leaves the disk untouched.
    `overwrite` replaces a folder holding only files an export writes, never anything else.
    """
    if cfg.vocab_size != tokenizer.vocab_size:
        raise TinyGPTError(f"the model has {cfg.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}")
    from safetensors.torch import save

    eot = tokenizer.eot_id
    tok = hf_tokenizer(tokenizer)
    files = {
        "config.json": hf_config(cfg, eot, next(model.parameters()).dtype),
        "generation_config.json": {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot},
        "model.safetensors": save(hf_state_dict(model, cfg), metadata={"format": "pt"}),
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": hf_tokenizer_config(tok, cfg.block_size),
        "README.md": model_card(model, cfg, tokenizer, card_info or CardInfo()),
    }
    if isinstance(tokenizer, SentencePieceTokenizer):  # for anyone who wants the same ids from sentencepiece itself
        files[SENTENCEPIECE_FILE] = tokenizer._bytes
    out = Path(out_dir)
    _write_folder(out, {name: _as_bytes(data) for name, data in files.items()}, overwrite)
    return out


def _as_bytes(data) -> bytes:
    if isinstance(data, dict):
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    return data.encode() if isinstance(data, str) else data


def _write_folder(out: Path, files: dict[str, bytes], overwrite: bool) -> None:
    """Write `files` as the folder `out`, all or nothing (common.atomic_folder)."""
    check_replaceable(out, EXPORT_FILES, overwrite)
    with atomic_folder(out) as tmp:
        for name, data in files.items():
            write_file(tmp / name, data)


def check_replaceable(out: Path, export_files: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to write the folder `out` over anything but, with `overwrite`, an earlier export (files named in `export_files`)."""
    if out.exists():
        if not out.is_dir():
            raise TinyGPTError(f"{out} exists and is not a folder")
        present = [p.name for p in out.iterdir()]
        if present and not overwrite:
            raise TinyGPTError(f"{out} is not empty: choose a new folder, or pass --overwrite to replace an earlier export")
        foreign = sorted(set(present) - set(export_files))
        if foreign:
            raise TinyGPTError(f"refusing to replace {out}: it holds files an export does not write ({', '.join(foreign[:3])})")


# ---------------------------------------------------------------- `tinygpt export`


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a trained model where people run models:\n"
        "  --format hf      a folder Hugging Face transformers loads with no custom code:\n"
        "                   AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT)\n"
        "  --format gguf    one OUT.gguf file for llama.cpp and LM Studio\n"
        "  --format ollama  a folder OUT with model.gguf and a Modelfile for `ollama create`\n\n"
        "gpt2-family models become GPT2LMHeadModel (hf) or llama.cpp's gpt2 architecture, llama-family\n"
        "ones LlamaForCausalLM or llama.cpp's llama, with the same logits and token ids as here. A model\n"
        "or tokenizer the target cannot express exactly (GPT-2 heads wider than n_embd / n_head, a bias\n"
        "on the output layer; for GGUF also ReLU and char tokenizers) is refused, and nothing is written."
    )
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a training run folder (uses best/, else the newest checkpoint) or one checkpoint folder; "
        "the card gives the validation bits per byte of a best/ checkpoint",
    )
    p.add_argument("out_dir", metavar="OUT", help="the folder (hf, ollama) or .gguf file (gguf) to create; written complete or not at all")
    p.add_argument("--format", choices=["hf", "gguf", "ollama"], default="hf", help="hf (default), gguf or ollama")
    p.add_argument("--dtype", choices=DTYPES, help="gguf and ollama: the matrices' number format (default f32; "
                   "q8_0 writes matrices whose rows are not a multiple of 32 in f16)")
    p.add_argument("--dataset", help=f"the training data, for the model card: {' or '.join(DATASETS)} (adds its licence and citation) or a short description")
    p.add_argument("--name", help="the model card's title (default: OUT's name)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds an earlier export")


def _recorded_source(data_dir: str | None) -> str | None:
    """What `tinygpt prepare --source` (or its TinyStories download) recorded about the training data."""
    manifest = Path(data_dir or "") / MANIFEST
    if not data_dir or not manifest.is_file():
        return None
    return read_json(manifest, "prepared-data manifest").get("source")


def run_export(args: argparse.Namespace) -> int:
    if args.dtype and args.format == "hf":
        raise TinyGPTError("--dtype is for --format gguf and ollama: the hf export keeps the checkpoint's dtype")
    out = Path(args.out_dir).resolve()
    folder = find_checkpoint(args.source)
    progress = read_progress(folder)
    model, tokenizer = load_model(folder)
    dataset = args.dataset or _recorded_source(progress.get("data"))
    info = CardInfo(
        name=args.name or (out.stem if args.format == "gguf" else out.name),
        dataset=dataset,
        steps=progress.get("step"),
        tokens=progress.get("tokens"),
        # a run's best/ holds the weights of its best validation score; a step checkpoint's weights may be others
        val_bpb=progress.get("best_val_bpb") if is_best(folder) else None,
    )
    if args.format == "hf":
        out = export_hf(model, model.cfg, tokenizer, args.out_dir, info, args.overwrite)
        print(f"exported {folder} to {out}: load it with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r})")
    else:
        export = export_ollama if args.format == "ollama" else export_gguf
        summary = export(model, model.cfg, tokenizer, args.out_dir, info, args.dtype or "f32", args.overwrite)
        print("\n".join(summary_lines(summary, Path(args.out_dir), args.format, info.name)))
    if dataset is None:
        print(
            f"tinygpt export: note: the export does not name the training data (this run read {progress.get('data')}): "
            "pass --dataset to add it",
            file=sys.stderr,
        )
    return 0
