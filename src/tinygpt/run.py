"""A training run's folder: its layout, and the one way every command opens a run or a checkpoint in it.

    RUN/
        run.json                    the start record: config, data and starting weights of a new run
        data/                       raw text given to `tinygpt train`, prepared once for this run
        checkpoints/step-0000001000/
                                    a resumable checkpoint (checkpoint.py: what a checkpoint folder holds)
        best/                       the weights of the best validation bits per byte so far
        metrics.jsonl               one JSON object per logged point (metrics.py)
        tensorboard/                the same points, when TensorBoard is installed
        loss.png                    train and validation bits per byte against the step
        samples.jsonl               a short text sampled at every evaluation: {"step", "val_bpb", "text"} a line

`Run` is the one owner of this layout (no other module spells these names) and makes the
decisions about it, in the spirit of torchtitan's checkpointer: the trainer asks it whether a
step is saved, hands it the state to write (it prunes the old checkpoints), tells it every
validation score (it decides what is best) and learns from it where to resume. `sample`,
`eval`, `export`, `serve` and `info` open a run with `find_checkpoint` or `load_model` (its
best/ checkpoint, else its newest), which also take a checkpoint folder itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import checkpoint as ckpt
from .common import TinyGPTError, atomic_write_json, read_json
from .config import Config

START = "run.json"
START_FORMAT_VERSION = 1
DATA = "data"
CHECKPOINTS = "checkpoints"
BEST = "best"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
PLOT = "loss.png"
SAMPLES = "samples.jsonl"
_STEP_PREFIX = "step-"
_STEP_NAME = re.compile(rf"{_STEP_PREFIX}(\d+)")


class Run:
    """A training run's folder (it need not exist yet): where each of its files goes, which checkpoints
    it holds, and the decisions about them.

    Its files are attributes: start, data, best, metrics, tensorboard, plot, samples (see the
    module's docstring); step checkpoints come from step_folder. ckpt_interval: a step checkpoint
    every this many steps (0: only after the final step); keep_last: how many step checkpoints to
    keep (0: all). The best validation bits per byte so far is the run's state (`state_dict`),
    saved in every checkpoint's progress.
    """

    def __init__(self, folder: str | Path, *, ckpt_interval: int = 0, keep_last: int = 0):
        self.folder = Path(folder)
        self.start = self.folder / START  # see record_start
        self.data = self.folder / DATA  # raw text given to `tinygpt train`, prepared once
        self.best = self.folder / BEST
        self.metrics = self.folder / METRICS
        self.tensorboard = self.folder / TENSORBOARD
        self.plot = self.folder / PLOT
        self.samples = self.folder / SAMPLES  # metrics.Metrics.sample writes it, metrics.read_samples reads it
        self.ckpt_interval, self.keep_last = ckpt_interval, keep_last
        self.best_val_bpb: float | None = None

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> Run:
        """The run a checkpoint folder belongs to; for one kept outside a run, the folder that holds it."""
        return cls(run_of(checkpoint) or Path(checkpoint).parent)

    # ------------------------------------------------------------ the checkpoints it holds

    def step_folder(self, step: int) -> Path:
        return self.folder / CHECKPOINTS / f"{_STEP_PREFIX}{step:010d}"

    def checkpoints(self) -> list[Path]:
        """The complete step checkpoints, oldest first."""
        found = []
        for path in (self.folder / CHECKPOINTS).glob(f"{_STEP_PREFIX}*"):
            match = _STEP_NAME.fullmatch(path.name)
            if match and ckpt.is_complete(path):
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete step checkpoint, None when there is none yet."""
        found = self.checkpoints()
        return found[-1] if found else None

    # ------------------------------------------------------------ decisions

    def resume_point(self, resume: str | Path) -> Path | None:
        """The checkpoint to continue from: for "auto" the newest complete one (None when there is
        none yet: the run starts from the beginning), else the checkpoint folder given.

        Raises TinyGPTError when the folder given is not a complete, readable checkpoint.
        """
        if resume == "auto":
            return self.latest()
        ckpt.read_progress(resume)
        return Path(resume)

    def should_save(self, step: int, final: bool) -> bool:
        """Whether to write a step checkpoint after `step`: every ckpt_interval steps, and after the
        final step (`final`: the budget is spent or a stop was asked for)."""
        return final or (self.ckpt_interval > 0 and step % self.ckpt_interval == 0)

    def update_best(self, step: int, val_bpb: float) -> bool:
        """Whether `val_bpb` (validation bits per byte at `step`) is the best of the run so far, which
        it then becomes. The untrained model's score (step 0) never is."""
        best = step > 0 and (self.best_val_bpb is None or val_bpb < self.best_val_bpb)
        if best:
            self.best_val_bpb = val_bpb
        return best

    def state_dict(self) -> dict:
        """What the run's decisions depend on, as JSON values for a checkpoint's progress."""
        return {"best_val_bpb": self.best_val_bpb}

    def load_state_dict(self, progress: dict) -> None:
        self.best_val_bpb = progress["best_val_bpb"]

    # ------------------------------------------------------------ writing (one process: rank 0)

    def record_start(self, cfg: Config, data: str | Path, init_from: str | Path | None) -> None:
        """Write run.json when a new run starts, before any data is prepared or step taken: the config
        as given (before the data's tokenizer fills in the vocabulary), the data (raw text or a
        prepared folder) and the checkpoint whose weights it starts from, as absolute paths. It is
        what a run killed before its first checkpoint was asked to do. Raises OSError (no space, no
        permission) from the file system.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "format_version": START_FORMAT_VERSION,
            "config": cfg.to_dict(),
            "data": str(Path(data).resolve()),
            "init_from": str(Path(init_from).resolve()) if init_from else None,
        }
        atomic_write_json(self.start, record)

    def read_start(self) -> dict | None:
        """run.json as record_start wrote it ("config" a dict, "data" a path, "init_from" a path or
        None), or None when the run recorded no start. Raises TinyGPTError when it is damaged."""
        if not self.start.is_file():
            return None
        record = read_json(self.start, "run start record")
        if not isinstance(record, dict) or record.get("format_version") != START_FORMAT_VERSION:
            raise TinyGPTError(f"{self.start} is not a start record this tinygpt reads (format {START_FORMAT_VERSION})")
        kinds = {"config": (dict,), "data": (str,), "init_from": (str, type(None))}
        wrong = [key for key, types in kinds.items() if not isinstance(record.get(key, 0), types)]
        if wrong:
            raise TinyGPTError(
                f"{self.start} lacks or has damaged {', '.join(wrong)}: start the run again without --resume auto"
            )
        return record

    def save(self, step: int, state: dict, config_toml: str, tokenizer_dir: str | Path) -> Path:
        """Write the resumable checkpoint of `step`, then drop all but the keep_last newest.

        state: as checkpoint.save_checkpoint takes it; its "progress" is free JSON, kept as given:
        the step, the step budget and whatever a budget was decided from belong there. Raises
        OSError (a full disk) with the previous checkpoints untouched.
        """
        folder = ckpt.save_checkpoint(self.step_folder(step), state, config_toml, tokenizer_dir)
        self.prune()
        return folder

    def save_best(self, state: dict, config_toml: str, tokenizer_dir: str | Path) -> Path:
        """Replace best/ with `state`'s weights and progress: a checkpoint to use, not to resume (no
        optimizer or random state). Raises OSError (a full disk) with the previous best/ untouched."""
        weights_only = {key: value for key, value in state.items() if key not in ("optimizer", "ranks")}
        return ckpt.save_checkpoint(self.best, weights_only, config_toml, tokenizer_dir)

    def prune(self) -> None:
        """Keep the `keep_last` newest step checkpoints (0: all), each dropped marker first (see
        checkpoint.delete_checkpoint), and drop leftovers: half-written folders, and step folders
        without a marker (only a deletion cut short leaves one: writers fill a temporary folder)."""
        folder = self.folder / CHECKPOINTS
        leftovers = [*folder.glob(".*.tmp"), *(p for p in folder.glob(f"{_STEP_PREFIX}*") if not ckpt.is_complete(p))]
        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
        if self.keep_last:
            for path in self.checkpoints()[: -self.keep_last]:
                ckpt.delete_checkpoint(path)


# ---------------------------------------------------------------- opening a run or checkpoint


def run_of(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (RUN/best, RUN/checkpoints/step-N); None for one kept elsewhere."""
    checkpoint = Path(checkpoint)
    if checkpoint.name == BEST:
        return checkpoint.parent
    if checkpoint.parent.name == CHECKPOINTS:
        return checkpoint.parent.parent
    return None


def is_best(checkpoint: str | Path) -> bool:
    """Whether a checkpoint folder is a run's best/: its weights scored the run's best validation bits per byte."""
    return Path(checkpoint).name == BEST


def is_run_or_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a folder that holds a run (its start record, checkpoints or best/) or is a checkpoint.

    This decides what a name on the command line means: such a folder is that run, whatever else
    the name could be (a preset's, say)."""
    path, run = Path(path), Run(path)
    marks = (path / ckpt.MARKER, path / ckpt.STATE, run.start, path / CHECKPOINTS, run.best)
    return path.is_dir() and (any(mark.exists() for mark in marks) or _STEP_NAME.fullmatch(path.name) is not None)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or for a run folder its best/ checkpoint, else its newest one.

    Raises TinyGPTError when there is none: for a folder that is neither a run nor a checkpoint,
    a run stopped before its first checkpoint, or a step folder without its marker.
    """
    path = Path(path)
    if ckpt.is_complete(path):
        return path
    if not is_run_or_checkpoint(path):
        missing = "" if path.is_dir() else " (it does not exist)" if not path.exists() else " (it is a file)"
        raise TinyGPTError(f"{path} is not a run or checkpoint folder{missing}")
    run = Run(path)
    if ckpt.is_complete(run.best):
        return run.best
    latest = run.latest()
    if latest is None:
        if _STEP_NAME.fullmatch(path.name):
            raise TinyGPTError(
                f"{path} is an incomplete checkpoint (no {ckpt.MARKER} marker): its writer was interrupted"
            )
        raise TinyGPTError(
            f"the run {path} has no checkpoint yet: continue it with 'tinygpt train --out {path} --resume auto'"
        )
    return latest


def load_model(path: str | Path):
    """The model (on the CPU, in eval mode) and tokenizer of a checkpoint or run folder (see find_checkpoint)."""
    from .model import GPT
    from .tokenizers import load_tokenizer

    folder = find_checkpoint(path)
    ckpt.read_progress(folder)
    model = GPT(ckpt.read_config(folder).model)
    ckpt.load_weights(model, folder)
    return model.eval(), load_tokenizer(folder / ckpt.TOKENIZER)
