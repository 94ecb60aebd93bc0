"""A training run's numbers: RUN/metrics.jsonl (always), TensorBoard (when installed), the samples of
text taken at each evaluation (RUN/samples.jsonl), the loss curve, and the `tinygpt plot` command
that redraws it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import TinyGPTError, naming_errors, read_jsonl
from .run import METRICS, PLOT, Run


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The points of RUN/metrics.jsonl, each with a "kind" and a "step"; damaged lines are skipped (read_jsonl)."""
    path = Run(run_dir).metrics
    if not path.is_file():
        raise TinyGPTError(f"no {METRICS} in {run_dir}: is it a training run folder?")
    return read_jsonl(path, {"kind": str, "step": int})


def read_samples(run_dir: str | Path) -> list[dict]:
    """RUN/samples.jsonl, oldest first: {"step", "val_bpb", "text"} per evaluation; [] when there is none."""
    path = Run(run_dir).samples
    return read_jsonl(path, {"step": int}) if path.is_file() else []


def _resumed_lines(path: Path, resume_step: int | None):
    """A JSON-lines file opened for appending: a new run starts it empty; a resumed one keeps the rows
    up to its checkpoint's step, since those after it are about to be written again."""
    kept = [row for row in read_jsonl(path, {"step": int}) if row["step"] <= resume_step] if resume_step is not None and path.is_file() else []
    with naming_errors(path):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept), encoding="utf-8")
        return path.open("a", encoding="utf-8")


class Metrics:
    """Where numbers go: RUN/metrics.jsonl always (one JSON object per line), TensorBoard when installed,
    and a sample of text per evaluation in RUN/samples.jsonl."""

    def __init__(self, run_dir: str | Path, resume_step: int | None):
        """A new run starts empty files; a resumed one drops the rows its interrupted run
        wrote after the checkpoint, since they are about to be written again."""
        run = Run(run_dir)
        self.file = _resumed_lines(run.metrics, resume_step)
        self.samples = _resumed_lines(run.samples, resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run.tensorboard))
        except ImportError:
            self.tensorboard = None

    def write(self, kind: str, step: int, **values) -> None:
        """Append one point; raises OSError naming the file (a full disk)."""
        with naming_errors(self.file.name):
            self.file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
            self.file.flush()
        if self.tensorboard:
            for key, value in values.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def sample(self, step: int, val_bpb: float, text: str) -> None:
        """One row of the samples timeline: the text the model wrote at `step`, and its validation bits per byte then."""
        with naming_errors(self.samples.name):
            self.samples.write(json.dumps({"step": step, "val_bpb": val_bpb, "text": text}, ensure_ascii=False) + "\n")
            self.samples.flush()

    def close(self) -> None:
        self.file.close()
        self.samples.close()
        if self.tensorboard:
            self.tensorboard.close()


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw train and validation bits per byte against the step, as a PNG (Agg: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(run_dir)
    fig = Figure(figsize=(8, 5), layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, label, style in (("train", "train (one batch)", "-"), ("eval", "validation", "o-")):
        points = [(r["step"], r["bpb"]) for r in rows if r["kind"] == kind and isinstance(r.get("bpb"), (int, float))]
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out) if out else Run(run_dir).plot
    with naming_errors(out):
        fig.savefig(out, dpi=120)
    return out


# ---------------------------------------------------------------- `tinygpt plot`


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=f"a training run folder (holding {METRICS})")
    p.add_argument("--out", metavar="PNG", help=f"where to write the picture (default: RUN/{PLOT})")


def run_plot(args: argparse.Namespace) -> int:
    print(plot_run(args.run, args.out))
    return 0
