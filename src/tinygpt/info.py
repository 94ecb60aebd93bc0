"""`tinygpt info`: size, FLOPs and memory of a model config, and the training progress of a run or checkpoint.

The model is built on the meta device (shapes only), so a preset of any size is described at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .common import TinyGPTError, read_json
from .config import add_config_arguments, is_preset_name, load_config, preset_names
from .model import GPT
from .run import find_checkpoint, is_run_or_checkpoint
from .tokenizers import META_FILE

CHAR_VOCAB_GUESS = 236  # characters in the full TinyStories training text: a char preset's size before data is seen


def activation_bytes(cfg, batch_size: int, bytes_per_value: int) -> int:
    """Bytes of activations one training step keeps for the backward pass (an estimate from the shapes).

    Per layer: the inputs of both norms and of the MLP (3·C), q/k/v, the attention output and
    its projection's input, the MLP's hidden pre- and post-activation, plus the attention
    probabilities (nh·T per position). Then the final norm and the logits with their gradient.
    """
    T, C, V = cfg.block_size, cfg.n_embd, cfg.vocab_size
    qkv = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    per_position = 3 * C + qkv + 2 * cfg.n_head * cfg.head_dim + 2 * cfg.hidden_dim + cfg.n_head * T
    per_step = cfg.n_layer * per_position + C + 2 * V
    return batch_size * T * per_step * bytes_per_value


def model_info(cfg, batch_size: int) -> dict:
    """Size, FLOPs and memory of a model config (vocab_size set) at a per-step batch.

    Returns counts of parameters, FLOPs per token (training: 6N plus attention, as in
    `GPT.flops_per_token`; forward: a third of it) and memory in bytes (fp32 weights,
    gradients, AdamW's two moments, and the activation estimate of `activation_bytes`).
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT(cfg)
    params = model.num_params()
    fp32 = 4
    return {
        "params": params,
        "params_non_embedding": model.num_params(non_embedding=True),
        "flops_per_token_train": model.flops_per_token(),
        "flops_per_token_forward": model.flops_per_token() // 3,
        "memory_weights": params * fp32,
        "memory_gradients": params * fp32,
        "memory_optimizer": 2 * params * fp32,  # AdamW's two moments
        "memory_activations": activation_bytes(cfg, batch_size, fp32),
    }


def add_info_arguments(p) -> None:
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT_OR_PRESET", help="a run or checkpoint folder, or a preset name / TOML file")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON line")
    add_config_arguments(p)


def run_info(args) -> int:
    """What the target names decides (a folder holding a run or checkpoint is that, whatever its
    name; else a name without a path separator and .toml is a preset; else a TOML file)."""
    target = Path(args.target)
    facts: dict = {}
    if is_run_or_checkpoint(target):
        folder = find_checkpoint(target)
        progress = ckpt.read_progress(folder)
        cfg = load_config(None, args.overrides, base=ckpt.read_config(folder).to_dict())
        tok = read_json(folder / ckpt.TOKENIZER / META_FILE, "tokenizer description")
        facts.update(
            checkpoint=str(folder),
            tokenizer=f"{tok.get('kind')}, {tok.get('vocab_size')} tokens",
            data=progress.get("data"),
            step=progress.get("step"),
            tokens_seen=progress.get("tokens"),
            best_val_bpb=progress.get("best_val_bpb"),
        )
    else:
        known = args.target in preset_names() if is_preset_name(args.target) else target.is_file()
        if not known:
            raise TinyGPTError(
                f"{args.target} is neither a run or checkpoint folder nor a preset (presets: {', '.join(preset_names())})"
            )
        cfg = load_config(args.target, args.overrides)
        if not cfg.model.vocab_size:
            guess = CHAR_VOCAB_GUESS if cfg.tokenizer.kind == "char" else cfg.tokenizer.vocab_size
            cfg.model.vocab_size = guess
        facts.update(preset=args.target, tokenizer=f"{cfg.tokenizer.kind}, {cfg.model.vocab_size} tokens (before data is seen)")
    facts.update(model_info(cfg.model, cfg.train.batch_size))
    facts["tokens_per_step"] = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    if args.json:
        print(json.dumps(facts))
        return 0
    m = cfg.model
    shape = f"{m.family}, {m.n_layer} layers, {m.n_head} heads x {m.head_dim} on {m.n_embd} wide, context {m.block_size}"
    lines = [
        ("model", shape),
        ("parameters", f"{facts['params']:,} ({facts['params_non_embedding']:,} without embeddings)"),
        ("FLOPs / token", f"{facts['flops_per_token_train'] / 1e6:,.1f} M training, {facts['flops_per_token_forward'] / 1e6:,.1f} M forward"),
        ("tokenizer", facts["tokenizer"]),
        ("memory (fp32)", (
            f"weights {_mib(facts['memory_weights'])}, gradients {_mib(facts['memory_gradients'])}, "
            f"AdamW {_mib(facts['memory_optimizer'])}, activations ~{_mib(facts['memory_activations'])} "
            f"at batch {cfg.train.batch_size}"
        )),
    ]
    if "step" in facts:
        best = f"{facts['best_val_bpb']:.4f}" if facts.get("best_val_bpb") is not None else "n/a"
        lines += [
            ("checkpoint", facts["checkpoint"]),
            ("trained", f"{facts['step']:,} steps, {facts['tokens_seen'] or 0:,} tokens, best val {best} bits/byte"),
            ("data", str(facts["data"])),
        ]
    for key, value in lines:
        print(f"{key:<15}{value}")
    return 0


def _mib(n: int) -> str:
    """A size in bytes as MiB (2^20 bytes), the unit memory is usually quoted in."""
    return f"{n / 2**20:,.1f} MiB"
