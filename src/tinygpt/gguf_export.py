"""Export a trained model as one GGUF file, the format llama.cpp, Ollama and LM Studio load.

The file is written with the `gguf` package, the reference writer published with llama.cpp
(extra `gguf`). Its tensors are the Hugging Face export's (export.hf_state_dict, the input of
llama.cpp's own convert_hf_to_gguf.py) under GGUF names, with two layout changes:

- llama: the query and key rows of each head go from our rotate-half order (channel i pairs
  with i + hs/2) to llama.cpp's rotary order, where neighbours (2i, 2i+1) form a pair; the
  dot products, hence the attention, stay the same.
- gpt2: Hugging Face's Conv1D weights, stored (in, out), go back to (out, in).

The tokenizer goes into the file's metadata: SentencePiece as llama.cpp's SPM type,
byte-level BPE as its GPT-2 type. Our texts start after <|endoftext|>, so it is the
beginning-of-sequence token as well as the end one, and llama.cpp puts it before a prompt.

A model, option or tokenizer llama.cpp cannot run exactly as tinygpt does is refused with
the reason before anything is written; every file is written all or nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .common import TinyGPTError, atomic_file, atomic_folder
from .config import ModelConfig
from .engine import DEFAULT_TEMPERATURE
from .tokenizers import EOT_TEXT, BPETokenizer, CharTokenizer, SentencePieceTokenizer, Tokenizer

DTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # q8_0 stores rows in blocks of 32 values, each with one f16 scale
GGUF_MAGIC = b"GGUF"

# ---------------------------------------------------------------- per-family tables


def _gpt2_refusal(cfg: ModelConfig) -> str | None:
    if cfg.activation != "gelu":
        return f"its MLP is always GELU, and this model's is {cfg.activation} (model.activation)"
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        return (f"its heads are n_embd / n_head wide, but this model has {cfg.n_head} heads of {cfg.head_dim} "
                f"on a {cfg.n_embd}-wide embedding")  # fmt: skip
    if cfg.bias_head:
        return "its output layer has no bias, and this model's has (model.bias_head)"
    return None


def _gpt2_layout(module: str, tensor: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Hugging Face's Conv1D weights are stored (in, out): back to nn.Linear's (out, in), as llama.cpp reads them."""
    from .export import CONV1D_SUFFIXES

    return tensor.t() if tensor.dim() == 2 and module.endswith(CONV1D_SUFFIXES) else tensor


def _gpt2_hparams(writer, cfg: ModelConfig) -> None:
    writer.add_layer_norm_eps(cfg.norm_eps)


def _llama_layout(module: str, tensor: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return rotary_rows(tensor, cfg.head_dim) if module.endswith(("self_attn.q_proj", "self_attn.k_proj")) else tensor


def _llama_hparams(writer, cfg: ModelConfig) -> None:
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    if cfg.head_dim != cfg.n_embd // cfg.n_head:  # llama.cpp's default is n_embd / n_head
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)


@dataclass(frozen=True)
class GGUFFamily:
    """How one of our model families (model.FAMILIES) becomes one of llama.cpp's architectures."""

    arch: str  # general.architecture
    block_prefix: str  # Hugging Face's prefix of a block's parameters, followed by the block index
    names: dict[str, str]  # Hugging Face module name (within a block, or whole) -> GGUF tensor name
    refusal: Callable[[ModelConfig], str | None]  # why llama.cpp's graph cannot compute cfg, or None
    layout: Callable[[str, torch.Tensor, ModelConfig], torch.Tensor]  # a module's Hugging Face tensor as llama.cpp reads it
    hparams: Callable[[object, ModelConfig], None]  # the {arch}.* keys beyond those every family has


GGUF_FAMILIES = {
    "gpt2": GGUFFamily(
        arch="gpt2",
        block_prefix="transformer.h.",
        names={
            "transformer.wte": "token_embd",
            "transformer.wpe": "position_embd",
            "transformer.ln_f": "output_norm",
            "lm_head": "output",
            "ln_1": "attn_norm",
            "attn.c_attn": "attn_qkv",
            "attn.c_proj": "attn_output",
            "ln_2": "ffn_norm",
            "mlp.c_fc": "ffn_up",
            "mlp.c_proj": "ffn_down",
        },
        refusal=_gpt2_refusal,
        layout=_gpt2_layout,
        hparams=_gpt2_hparams,
    ),
    "llama": GGUFFamily(
        arch="llama",
        block_prefix="model.layers.",
        names={
            "model.embed_tokens": "token_embd",
            "model.norm": "output_norm",
            "lm_head": "output",
            "input_layernorm": "attn_norm",
            "self_attn.q_proj": "attn_q",
            "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output",
            "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate",
            "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down",
        },
        # llama.cpp's llama takes any head size, grouped-query attention, theta and eps; its gate is SiLU
        refusal=lambda cfg: "its MLP gate is always SiLU, and this model's is relu2 (model.activation)"
        if cfg.activation == "relu2" else None,
        layout=_llama_layout,
        hparams=_llama_hparams,
    ),
}

# ModelConfig fields this exporter has checked against llama.cpp's graphs. A field added later
# is refused at any value but its default until it is checked here too.
CHECKED_FIELDS = {
    "family", "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_size", "mlp_hidden",
    "activation", "bias_qkv", "bias_proj", "bias_mlp", "bias_head", "tie_weights", "dropout", "rope_theta", "norm_eps",
    "zero_init_proj",  # an initialisation: the trained weights are all there is
}  # fmt: skip


def check_exportable(cfg: ModelConfig) -> GGUFFamily:
    """The GGUF spelling of `cfg`'s family, or a TinyGPTError naming what llama.cpp cannot compute and why."""
    defaults = ModelConfig()
    for f in dataclasses.fields(ModelConfig):
        unchecked = f.name not in CHECKED_FIELDS and f.name not in ModelConfig.TRAINING_ONLY  # those never change inference
        if unchecked and getattr(cfg, f.name) != getattr(defaults, f.name):
            raise TinyGPTError(f"cannot export to GGUF: model.{f.name} = {getattr(cfg, f.name)!r} is not known to run the same in llama.cpp")
    family = GGUF_FAMILIES[cfg.family]
    why = family.refusal(cfg)
    if why:
        raise TinyGPTError(f"cannot export to llama.cpp's {family.arch} architecture: {why} (llama-family models export)")
    return family


def gguf_tensors(model: nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameters under GGUF names and layouts, float32, in a stable order.

    Shapes are torch's (out, in); GGUF lists dimensions innermost first, so llama.cpp reads
    the same matrix as (in, out) = {ne0, ne1}. A tied output layer is left out: llama.cpp then
    scores with the token embedding, as we do.
    """
    from .export import hf_state_dict

    family = check_exportable(cfg)
    out = {}
    for name, tensor in hf_state_dict(model, cfg).items():
        module, _, kind = name.rpartition(".")
        if module.startswith(family.block_prefix):
            index, _, part = module.removeprefix(family.block_prefix).partition(".")
            gguf_name = f"blk.{index}.{family.names[part]}.{kind}"
        else:
            gguf_name = f"{family.names[module]}.{kind}"
        out[gguf_name] = family.layout(module, tensor, cfg).float().contiguous()
    return dict(sorted(out.items(), key=lambda item: _file_order(item[0])))


def _file_order(name: str) -> tuple[int, int]:
    """Embeddings, then the blocks in order, then the output norm and layer (a stable sort keeps the rest)."""
    if name.startswith("blk."):
        return 1, int(name.split(".")[1])
    return (2 if name.startswith("output") else 0), 0


def rotary_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows (heads * hs, in) of a query or key projection, from rotate-half order to interleaved pairs.

    Within each head, new row 2i is old row i and new row 2i+1 is old row i + hs/2, the order
    of convert_hf_to_gguf.py's LlamaModel.permute.
    """
    heads = w.size(0) // head_dim
    return w.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)


# ---------------------------------------------------------------- tokenizer


@dataclass
class GGUFVocab:
    """A tokenizer as llama.cpp's tokenizer.ggml.* keys describe it."""

    model: str  # "llama" (SentencePiece-type) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    scores: list[float] | None = None
    merges: list[str] | None = None  # "left right", most preferred first
    pre: str | None = None  # the pre-tokenizer's name in llama.cpp
    unk_id: int | None = None


NORMAL, UNKNOWN, CONTROL, UNUSED, BYTE = 1, 2, 3, 5, 6  # gguf.TokenType, without importing gguf


def gguf_vocab(tokenizer: Tokenizer) -> GGUFVocab:
    """llama.cpp's description of `tokenizer`, or a TinyGPTError when llama.cpp would tokenize differently.

    - sentencepiece: pieces, scores and types as the model file has them. llama.cpp's SPM
      tokenizer joins the adjacent pair whose joined piece scores highest, as SentencePiece's
      BPE does, and falls back to the <0xXX> byte pieces.
    - bpe: the byte-level vocabulary and merges of the Hugging Face tokenizer, split first by
      llama.cpp's "gpt-2" pre-tokenizer, the same regular expression as ByteLevel's.
    - char: refused; see CHAR_REFUSAL.
    """
    if isinstance(tokenizer, SentencePieceTokenizer):
        sp = tokenizer._sp
        types = []
        for i in range(sp.get_piece_size()):
            kind = (sp.is_byte(i) and BYTE) or (sp.is_control(i) and CONTROL) or (sp.is_unknown(i) and UNKNOWN)
            types.append(kind or (sp.is_unused(i) and UNUSED) or NORMAL)
        return GGUFVocab(
            model="llama",
            tokens=[sp.id_to_piece(i) for i in range(sp.get_piece_size())],
            types=types,
            scores=[sp.get_score(i) for i in range(sp.get_piece_size())],
            unk_id=sp.unk_id(),
        )
    if isinstance(tokenizer, BPETokenizer):
        vocab = tokenizer._tok.get_vocab()
        tokens = sorted(vocab, key=vocab.get) + [EOT_TEXT]
        merges = json.loads(tokenizer._tok.to_str())["model"]["merges"]
        return GGUFVocab(
            model="gpt2",
            tokens=tokens,
            types=[NORMAL] * (len(tokens) - 1) + [CONTROL],
            merges=[m if isinstance(m, str) else " ".join(m) for m in merges],
            pre="gpt-2",
        )
    if isinstance(tokenizer, CharTokenizer):
        raise TinyGPTError(CHAR_REFUSAL)
    raise TinyGPTError(f"cannot export a {tokenizer.kind!r} tokenizer to GGUF")


CHAR_REFUSAL = (
    "cannot export a char tokenizer to GGUF: llama.cpp's tokenizers have no unknown-character id to fall back to "
    "(they look up byte tokens, which a char vocabulary lacks, and abort), so any character outside the vocabulary "
    "would end the program running the model; train with --tokenizer.kind sentencepiece or bpe to export"
)


# ---------------------------------------------------------------- the file


@dataclass
class GGUFSummary:
    """What write_gguf wrote: for the closing message."""

    arch: str
    dtype: str
    block_size: int
    tensors: int
    bytes: int
    f16_fallback: list[str]  # 2-D tensors written f16 because their rows are not a multiple of 32 (q8_0)


def write_gguf(path: Path, model: nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, info, dtype: str) -> GGUFSummary:
    """Write the GGUF file at `path` (not atomically: the callers write into a temporary name).

    info: an export.CardInfo (name, training data, steps, tokens, validation bits per byte).
    dtype: "f32" writes every tensor in float32; "f16" the matrices in float16 and vectors
    (norms, biases) in float32, as llama.cpp's converter does; "q8_0" the matrices whose rows
    are a multiple of 32 values in q8_0 (8-bit, one scale per 32), other matrices f16.
    Raises TinyGPTError for anything llama.cpp cannot run as we do, before writing.
    """
    gguf = _import_gguf()
    if dtype not in DTYPES:
        raise TinyGPTError(f"unknown GGUF dtype {dtype!r} (use {', '.join(DTYPES)})")
    if cfg.vocab_size != tokenizer.vocab_size:
        raise TinyGPTError(f"the model has {cfg.vocab_size} token ids but the tokenizer {tokenizer.vocab_size}")
    family = check_exportable(cfg)
    vocab = gguf_vocab(tokenizer)
    tensors = gguf_tensors(model, cfg)

    writer = gguf.GGUFWriter(None, family.arch)
    _write_metadata(writer, gguf, cfg, family, dtype, info)
    _write_vocab(writer, vocab, tokenizer.eot_id)
    fallback = []
    for name, tensor in tensors.items():
        array = tensor.numpy()
        if array.ndim == 1 or dtype == "f32":
            writer.add_tensor(name, array)
        elif dtype == "q8_0" and array.shape[-1] % Q8_0_BLOCK == 0:
            q8_0 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8_0), raw_dtype=q8_0)
        else:
            if dtype == "q8_0":
                fallback.append(name)
            writer.add_tensor(name, array.astype(np.float16))
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return GGUFSummary(family.arch, dtype, cfg.block_size, len(tensors), path.stat().st_size, fallback)


def _write_metadata(writer, gguf, cfg: ModelConfig, family: GGUFFamily, dtype: str, info) -> None:
    """general.* (the name, data source and licence, as in the Hugging Face model card) and the shape."""
    from .export import DATASETS

    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}  # fmt: skip
    writer.add_type("model")
    writer.add_name(info.name)
    writer.add_description(describe(cfg, info))
    dataset = DATASETS.get((info.dataset or "").lower())
    if dataset:
        writer.add_license(dataset.license)
        writer.add_dataset_count(1)
        writer.add_dataset_name(0, dataset.name)
        writer.add_dataset_repo_url(0, f"https://huggingface.co/datasets/{dataset.hub_id}")
    elif info.dataset:
        writer.add_dataset_count(1)
        writer.add_dataset_name(0, info.dataset)
    writer.add_file_type(file_types[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_head)
    family.hparams(writer, cfg)


def _write_vocab(writer, vocab: GGUFVocab, eot_id: int) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(eot_id)  # a text starts after <|endoftext|>, as every document in training did
    writer.add_eos_token_id(eot_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if vocab.model == "llama":
        writer.add_add_space_prefix(False)  # llama.cpp's default is True; we trained with no dummy prefix


def describe(cfg: ModelConfig, info) -> str:
    """general.description: what the model is, what it learned from, and how far."""
    from .export import DATASETS

    dataset = DATASETS.get((info.dataset or "").lower())
    facts = [f"A {cfg.family}-family language model trained from scratch with tinygpt"]
    if dataset:
        facts.append(f"on {dataset.name} by {dataset.attribution}, released under the {dataset.license} licence")
    elif info.dataset:
        facts.append(f"on {info.dataset}")
    text = " ".join(facts) + "."
    if info.steps is not None:
        text += f" {info.steps:,} steps"
        text += f", {info.tokens:,} tokens." if info.tokens is not None else "."
    if info.val_bpb is not None:
        text += f" Validation bits per byte: {info.val_bpb:.4f}."
    return text


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise TinyGPTError("exporting to GGUF needs the gguf package: pip install 'tinygpt[gguf]'") from None
    return gguf


# ---------------------------------------------------------------- the two formats

MODELFILE = "Modelfile"
OLLAMA_GGUF = "model.gguf"


def export_gguf(model: nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, out: str | Path, info,
                dtype: str = "f32", overwrite: bool = False) -> GGUFSummary:
    """Write the single file `out` (ending in .gguf), all or nothing.

    `overwrite` replaces an existing GGUF file, never anything else. Raises TinyGPTError for a
    missing folder, an existing file without `overwrite`, or a model llama.cpp cannot run.
    """
    out = Path(out)
    if out.suffix != ".gguf":
        raise TinyGPTError(f"{out}: a GGUF file's name ends in .gguf")
    _check_parent(out)
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise TinyGPTError(f"{out} exists and is not a file")
        if not overwrite:
            raise TinyGPTError(f"{out} exists: choose a new name, or pass --overwrite to replace an earlier export")
        with out.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise TinyGPTError(f"refusing to replace {out}: it is not a GGUF file")
    with atomic_file(out) as tmp:
        return write_gguf(tmp, model, cfg, tokenizer, info, dtype)


def export_ollama(model: nn.Module, cfg: ModelConfig, tokenizer: Tokenizer, out_dir: str | Path, info,
                  dtype: str = "f32", overwrite: bool = False) -> GGUFSummary:
    """Write the folder `out_dir` with model.gguf and a Modelfile for `ollama create`, all or nothing.

    `overwrite` replaces a folder holding only those two files. Raises TinyGPTError as export_gguf.
    """
    from .export import check_replaceable

    out = Path(out_dir)
    _check_parent(out)
    check_replaceable(out, (OLLAMA_GGUF, MODELFILE), overwrite)
    with atomic_folder(out) as tmp:
        summary = write_gguf(tmp / OLLAMA_GGUF, model, cfg, tokenizer, info, dtype)
        (tmp / MODELFILE).write_text(modelfile(cfg, info), encoding="utf-8")
    return summary


def modelfile(cfg: ModelConfig, info) -> str:
    """Ollama's recipe: the model file, a raw completion template and tinygpt's sampling defaults.

    num_ctx is the trained context: Ollama's default is far longer and would run the model on
    positions it never saw (for gpt2 there are no position embeddings past block_size at all).
    Sampling as `tinygpt sample` does by default: temperature 0.8, no top-k (0 turns Ollama's
    off), no top-p (1), no repetition penalty (1).
    """
    return "\n".join([
        f"# {info.name}: a tinygpt model. Continues the prompt as a story; stops at {EOT_TEXT}.",
        f"FROM ./{OLLAMA_GGUF}",
        'TEMPLATE """{{ .Prompt }}"""',
        f'PARAMETER stop "{EOT_TEXT}"',
        f"PARAMETER num_ctx {cfg.block_size}",
        f"PARAMETER temperature {DEFAULT_TEMPERATURE:g}",
        "PARAMETER top_p 1",
        "PARAMETER top_k 0",
        "PARAMETER repeat_penalty 1",
        "",
    ])


def ollama_name(name: str) -> str:
    """A model name `ollama create` accepts: lower case letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "tinygpt"


def _check_parent(out: Path) -> None:
    parent = out.resolve().parent
    if not parent.is_dir():
        raise TinyGPTError(f"the folder {parent} does not exist: create it first")


def summary_lines(summary: GGUFSummary, out: Path, fmt: str, name: str) -> list[str]:
    """What `tinygpt export` prints after a GGUF or Ollama export: what was written and how to run it."""
    gguf_path = out / OLLAMA_GGUF if fmt == "ollama" else out
    size = f"{summary.tensors} tensors, {summary.bytes / 1e6:.2f} MB"
    lines = [f"wrote {gguf_path}: llama.cpp architecture {summary.arch}, {summary.dtype}, {size}"]
    if summary.f16_fallback:
        lines.append(f"written f16 (rows not a multiple of {Q8_0_BLOCK}, which q8_0 needs): {', '.join(summary.f16_fallback)}")
    if fmt == "ollama":
        lines.append(f"run it: ollama create {ollama_name(name)} -f {out / MODELFILE} && ollama run {ollama_name(name)}")
    else:
        sampling = f"--temp {DEFAULT_TEMPERATURE:g} --top-k 0 --top-p 1 --min-p 0"  # tinygpt's defaults
        lines.append(f"run it: llama-completion -m {out} -no-cnv -c {summary.block_size} {sampling} -p 'Once upon a time'")
    return lines
