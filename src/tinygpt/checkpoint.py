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

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .common import TinyGPTError, atomic_folder, copy_folder, fsync_path, read_json, write_file
from .config import Config, ModelConfig, differences, load_config

if TYPE_CHECKING:
    from .model import GPT

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
    """The dict `save_tree` wrote (dict keys come back as strings, tuples as lists).

    Raises TinyGPTError when the file is missing or damaged."""
    tensors, header = _read_safetensors(path)
    tree: dict = {}
    for name, value in {**_header_json(header, "json", path), **tensors}.items():
        *parents, leaf = name.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Serialize in memory and write the bytes ourselves: safetensors' own writer reports a full
    disk as a SafetensorError, and the command line explains an OSError (ENOSPC, EFBIG) in one line.

    The header is written again with its keys sorted: safetensors keeps the metadata in a hash map
    whose order changes from process to process, and identical runs must write identical files.
    Layout (the safetensors format): 8 bytes little-endian header length, the JSON header padded
    with spaces to a multiple of 8 bytes, then the tensors' bytes, which the header's offsets index.
    """
    data = save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    header_bytes = header.encode() + b" " * (-len(header.encode()) % 8)
    write_file(path, len(header_bytes).to_bytes(8, "little") + header_bytes + data[8 + length :])


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; every way it can be broken becomes one error."""
    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}  # noqa: SIM118 (not iterable)
    except FileNotFoundError:
        raise TinyGPTError(f"checkpoint file missing: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise TinyGPTError(f"cannot read {path}: {e}") from None


def _header_json(header: dict[str, str], key: str, path: Path) -> dict:
    """The JSON object a safetensors header holds under `key` ({} when absent); raises TinyGPTError when it is damaged."""
    try:
        value = json.loads(header.get(key, "{}"))
    except json.JSONDecodeError as e:
        raise TinyGPTError(f"cannot read {path}: its header's {key!r} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise TinyGPTError(f"cannot read {path}: its header's {key!r} is not a JSON object")
    return value


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
    """The tensors of a weights file by name, a tied tensor under each of its names. Raises TinyGPTError when damaged."""
    tensors, header = _read_safetensors(path)
    for alias, name in _header_json(header, "tied", path).items():
        if name not in tensors:
            raise TinyGPTError(f"cannot read {path}: {alias!r} is tied to {name!r}, which it does not hold")
        tensors[alias] = tensors[name]
    return tensors


def check_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], folder: str | Path) -> None:
    """Raise TinyGPTError unless `tensors` are exactly the model's parameters and buffers, by name and
    shape; the message names the missing, extra and mis-shaped tensors (the first few of each)."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    misshaped = [
        f"{name} {list(tensors[name].shape)} (the model's: {list(t.shape)})"
        for name, t in expected.items()
        if name in tensors and tensors[name].shape != t.shape
    ]
    problems = [
        f"{what} {_some(names)}"
        for what, names in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped))
        if names
    ]
    if problems:
        raise TinyGPTError(f"the weights in {folder} do not fit this model: {'; '.join(problems)}")


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_weights(model: GPT, folder: str | Path) -> None:
    """Load a checkpoint folder's weights into `model` (an older tinygpt's layout too: GPT.upgraded);
    raises TinyGPTError when they do not fit (see check_weights)."""
    tensors = model.upgraded(read_weights(Path(folder) / WEIGHTS))
    check_weights(model, tensors, folder)
    model.load_state_dict(tensors)


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
        write_file(tmp / STATE, (json.dumps({"format_version": FORMAT_VERSION, **state["progress"]}, indent=2) + "\n").encode())
        write_file(tmp / CONFIG, config_toml.encode())
        copy_folder(tokenizer_dir, tmp / TOKENIZER)
        write_file(tmp / MARKER, b"")  # last: a folder without it is never read
    return folder


def delete_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder, its completion marker first and flushed to disk: a deletion cut
    short (a kill, a power cut) leaves a folder that no reader takes for a checkpoint."""
    (folder / MARKER).unlink(missing_ok=True)
    fsync_path(folder)
    shutil.rmtree(folder)


# ---------------------------------------------------------------- reading a checkpoint folder


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def read_progress(folder: str | Path, required: dict[str, tuple[type, ...]] | None = None) -> dict:
    """state.json of a complete checkpoint, checked for the format version this code writes and
    for the `required` keys with their JSON types (the reader says what it needs: the progress is
    free JSON to this module). Raises TinyGPTError naming the file and what is wrong with it.
    """
    folder = Path(folder)
    if not is_complete(folder):
        raise TinyGPTError(f"{folder} is not a complete checkpoint (no {MARKER} marker)")
    path = folder / STATE
    progress = read_json(path, "checkpoint state")
    if not isinstance(progress, dict):
        raise TinyGPTError(f"{path} is not a JSON object: the checkpoint is damaged")
    if progress.get("format_version") != FORMAT_VERSION:
        raise TinyGPTError(
            f"{folder} has checkpoint format {progress.get('format_version')!r}; this tinygpt reads {FORMAT_VERSION}"
        )
    missing = [key for key in required or {} if key not in progress]
    if missing:
        raise TinyGPTError(f"{path} lacks {', '.join(missing)}: the checkpoint is damaged")
    for key, types in (required or {}).items():
        if not isinstance(progress[key], types) or isinstance(progress[key], bool) and bool not in types:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise TinyGPTError(f"{path} has {key} = {progress[key]!r} where {names} belongs: the checkpoint is damaged")
    return progress


def read_config(folder: str | Path) -> Config:
    return load_config(str(Path(folder) / CONFIG))


def read_training_state(
    folder: str | Path, rank: int, world_size: int, required: dict[str, tuple[type, ...]] | None = None
) -> dict:
    """What resuming needs, in the layout `save_checkpoint` takes, with this rank's entry as "rank".

    required: the progress keys the caller needs (see read_progress); "world_size" is checked here.
    Raises TinyGPTError for a weights-only checkpoint, another number of processes, or damage.
    """
    folder = Path(folder)
    progress = read_progress(folder, {**(required or {}), "world_size": (int,)})
    if not (folder / OPTIMIZER).is_file():
        raise TinyGPTError(
            f"{folder} holds weights only and cannot be resumed: start a new run from it with --init-from"
        )
    if progress["world_size"] != world_size:
        raise TinyGPTError(
            f"{folder} was written by {progress['world_size']} process(es), this run has {world_size}: "
            "resume with the same number (or start a new run from it with --init-from)"
        )
    try:
        optimizer = {name: _optimizer_state(part) for name, part in load_tree(folder / OPTIMIZER).items()}
        if not optimizer:
            raise ValueError("no optimizer in it")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TinyGPTError(f"cannot read {folder / OPTIMIZER}: it is not an optimizer's state ({e!r})") from None
    return {
        "model": read_weights(folder / WEIGHTS),
        "optimizer": optimizer,
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
    """Weights fit only the architecture they were trained with; the training-only keys (dropout,
    initialisation: ModelConfig.TRAINING_ONLY) may differ. Raises TinyGPTError naming each change."""
    training_only = tuple(f"model.{key} " for key in ModelConfig.TRAINING_ONLY)
    diffs = [d for d in differences(saved, wanted, "model.") if not d.startswith(training_only)]
    if diffs:
        raise TinyGPTError(f"the config changes the architecture of the checkpoint {folder}: {', '.join(diffs)}")
