"""Checkpoints: self-contained folders, written atomically, read without unpickling anything.

    CHECKPOINT/                 (where a run keeps them, and which: run.py)
        model.safetensors       the weights; a tied output matrix is stored once, under the embedding's name
        optimizer.safetensors   each optimizer's state (AdamW's moments, Muon's momentum) under its
                                name; their hyperparameters as JSON in the file's header
        rank-00000.safetensors  one per process: the torch CPU (and CUDA/MPS) generator, the data
                                loader's generator and position, Python's and numpy's random states
        state.json              format version, step, step budget, tokens seen, best validation bpb, ...
        config.toml             the resolved config
        tokenizer/              a copy of the tokenizer
        COMPLETE                written last: a folder without it is ignored

A checkpoint that is not meant to be resumed holds no optimizer or rank files.
A folder is written under a temporary name, every file is flushed to disk, the marker is
written last and the folder renamed: a crash or a full disk leaves the previous checkpoint
as it was. Tensors go into safetensors files and everything else into JSON, so loading a
checkpoint from anyone runs no code of theirs (torch.load would unpickle).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .common import TinyGPTError, atomic_folder, read_json
from .config import Config, ModelConfig, load_config

FORMAT_VERSION = 1
MARKER = "COMPLETE"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
CONFIG = "config.toml"
TOKENIZER = "tokenizer"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


# ---------------------------------------------------------------- random state


def capture_rng(device: str) -> dict:
    """Every global random stream a training process draws from, as tensors and JSON values."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            **np_state,
            "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
        },
        "torch": torch.get_rng_state(),
    }
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict, device: str) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        {**np_state, "state": {**np_state["state"], "key": np.array(np_state["state"]["key"], dtype=np.uint32)}}
    )
    torch.set_rng_state(state["torch"])
    if device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device == "mps":
        torch.mps.set_rng_state(state["mps"])


# ---------------------------------------------------------------- tensors + JSON in one safetensors file


def save_tree(path: Path, tree: dict) -> None:
    """A nested dict with string keys: its tensors become the file's tensors (dotted names), the rest JSON in its header."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{name}.")
            elif isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                values[name] = value

    walk(tree, "")
    _write_safetensors(path, tensors, {"json": json.dumps(values)})


def load_tree(path: Path) -> dict:
    """The dict `save_tree` wrote (dict keys come back as strings, tuples as lists)."""
    tensors, header = _read_safetensors(path)
    tree: dict = {}
    for name, value in {**json.loads(header.get("json", "{}")), **tensors}.items():
        *parents, leaf = name.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialize in memory and write the bytes ourselves: safetensors' own writer reports a full
    disk as a SafetensorError, and the command line explains an OSError (ENOSPC, EFBIG) in one line."""
    with open(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; every way it can be broken becomes one error."""
    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}  # noqa: SIM118 (not iterable)
    except FileNotFoundError:
        raise TinyGPTError(f"checkpoint file missing: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise TinyGPTError(f"cannot read {path}: {e}") from None


# ---------------------------------------------------------------- weights


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Weights as safetensors. A tensor shared by two names (tied embedding and output layer)
    is stored once under its first name, as Hugging Face does; the header records the alias."""
    first_name: dict[int, str] = {}
    tensors, tied = {}, {}
    for name, t in state_dict.items():
        if t.data_ptr() in first_name:
            tied[name] = first_name[t.data_ptr()]
        else:
            first_name[t.data_ptr()] = name
            tensors[name] = t.detach().cpu().contiguous()
    _write_safetensors(path, tensors, {"format": "pt", "tied": json.dumps(tied)})


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, header = _read_safetensors(path)
    for alias, name in json.loads(header.get("tied", "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


def load_weights(model: torch.nn.Module, folder: str | Path) -> None:
    try:
        model.load_state_dict(read_weights(Path(folder) / WEIGHTS))
    except RuntimeError as e:
        raise TinyGPTError(f"the weights in {folder} do not fit this model: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------- writing a checkpoint folder


def save_checkpoint(folder: str | Path, state: dict, config_toml: str, tokenizer_dir: str | Path) -> Path:
    """Write `state` as the checkpoint folder `folder`, atomically; an existing folder is replaced.

    state: "model" (a state_dict), "progress" (JSON, becomes state.json), and for a checkpoint
    that can be resumed, "optimizer" (a state_dict) and "ranks" (one dict per process,
    each saved with save_tree).
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_weights(state["model"], tmp / WEIGHTS)
        if "optimizer" in state:
            save_tree(tmp / OPTIMIZER, state["optimizer"])
        for rank, tree in enumerate(state.get("ranks", [])):
            save_tree(tmp / rank_file(rank), tree)
        (tmp / STATE).write_text(json.dumps({"format_version": FORMAT_VERSION, **state["progress"]}, indent=2) + "\n")
        (tmp / CONFIG).write_text(config_toml, encoding="utf-8")
        shutil.copytree(tokenizer_dir, tmp / TOKENIZER)
        (tmp / MARKER).write_text("")  # last: a folder without it is never read
    return folder


# ---------------------------------------------------------------- reading a checkpoint folder


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_progress(folder: str | Path) -> dict:
    """state.json of a complete checkpoint, checked for the format version this code writes."""
    folder = Path(folder)
    if not is_complete(folder):
        raise TinyGPTError(f"{folder} is not a complete checkpoint (no {MARKER} marker)")
    progress = read_json(folder / STATE, "checkpoint state")
    if progress.get("format_version") != FORMAT_VERSION:
        raise TinyGPTError(
            f"{folder} has checkpoint format {progress.get('format_version')!r}; this tinygpt reads {FORMAT_VERSION}"
        )
    return progress


def read_config(folder: str | Path) -> Config:
    return load_config(str(Path(folder) / CONFIG))


def read_training_state(folder: str | Path, rank: int, world_size: int) -> dict:
    """What resuming needs, in the layout `save_checkpoint` takes, with this rank's entry as "rank"."""
    folder = Path(folder)
    progress = read_progress(folder)
    if not (folder / OPTIMIZER).is_file():
        raise TinyGPTError(
            f"{folder} holds weights only and cannot be resumed: start a new run from it with --init-from"
        )
    if progress["world_size"] != world_size:
        raise TinyGPTError(
            f"{folder} was written by {progress['world_size']} process(es), this run has {world_size}: "
            "resume with the same number (or start a new run from it with --init-from)"
        )
    return {
        "model": read_weights(folder / WEIGHTS),
        "optimizer": {name: _optimizer_state(part) for name, part in load_tree(folder / OPTIMIZER).items()},
        "rank": load_tree(folder / rank_file(rank)),
        "progress": progress,
    }


def _optimizer_state(tree: dict) -> dict:
    """One torch optimizer's state_dict as load_tree gives it back: parameter numbers as ints,
    and AdamW's betas as a tuple (Muon's groups have none; a list elsewhere does no harm)."""
    tree["state"] = {int(i): s for i, s in tree.get("state", {}).items()}
    for group in tree["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return tree


def check_architecture(saved: ModelConfig, wanted: ModelConfig, folder: Path) -> None:
    """Weights fit only the architecture they were trained with; dropout is a training choice and may differ."""
    diffs = [
        f"model.{key} {getattr(saved, key)!r} -> {getattr(wanted, key)!r}"
        for key in (f.name for f in dataclasses.fields(saved))
        if key != "dropout" and getattr(saved, key) != getattr(wanted, key)
    ]
    if diffs:
        raise TinyGPTError(f"the config changes the architecture of the checkpoint {folder}: {', '.join(diffs)}")
