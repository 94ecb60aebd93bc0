"""Interruptions at any moment and full disks: a run killed before its first checkpoint starts again
from its record, a deletion cut short never leaves a folder that looks complete, Ctrl-C and SIGTERM
end every stage in one line with 130 or 143, a full disk names the file, and identical runs write
identical files."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import tinygpt.common
from conftest import one_line, wait_until
from tinygpt import checkpoint as ckpt
from tinygpt.cli import main
from tinygpt.common import Terminated
from tinygpt.config import load_config
from tinygpt.run import Run, find_checkpoint, load_model
from tinygpt.train import Trainer

TINY = {
    "train.device": "cpu",  # identical runs write identical files on the CPU (see tests/test_train.py's TINY)
    "model.n_layer": "1",
    "model.n_embd": "32",
    "model.block_size": "32",
    "model.dropout": "0.1",  # dropout on: the random streams must come out the same too
    "train.batch_size": "4",
    "train.eval_windows": "4",
    "train.threads": "1",
    "train.sample_tokens": "0",
}


def args(**settings) -> list[str]:
    return ["--config", "tiny", *(a for k, v in {**TINY, **settings}.items() for a in (f"--{k}", str(v)))]


@pytest.fixture(autouse=True)
def children_take_ctrl_c():
    """Children that Ctrl-C reaches, however the suite was started: a shell starts a background
    job (`cmd &`) with SIGINT ignored, children inherit that, and Python then keeps ignoring it
    (a suite run that way saw training finish despite the signal). A handled signal is reset
    to its default in a child, so a handler here gives them the default."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def start(*command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinygpt", *map(str, command)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# ---------------------------------------------------------------- starting again, and identical files


def run_files(run: Path) -> dict[str, bytes]:
    """What identical runs must write byte for byte: weights, optimizer and random states, configs, tokenizers, shards."""
    keep = re.compile(r".*\.safetensors|.*config\.toml|.*/tokenizer/.*|data/.*\.bin")
    return {
        str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and keep.fullmatch(str(p.relative_to(run)))
    }


def test_a_run_killed_before_its_first_checkpoint_starts_again_and_writes_the_same_files(text_files, tmp_path, tinygpt_command):
    """One run straight, in a process of its own; the same run killed before its first checkpoint, then
    `--resume auto` (in this process) starts it again from RUN/run.json: every file the same, byte for byte."""
    train_txt, _ = text_files
    settings = args(**{
        "tokenizer.kind": "bpe", "tokenizer.vocab_size": 300, "data.workers": 1,
        "train.max_iters": 6, "train.ckpt_interval": 3, "train.eval_interval": 3,
    })  # fmt: skip
    straight = tinygpt_command.run("train", "--data", train_txt, "--out", tmp_path / "straight", *settings)
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "killed"
    proc = start("train", "--data", train_txt, "--out", killed, *settings)
    wait_until(Run(killed).start.exists, proc, "run.json")
    proc.kill()
    proc.communicate()
    assert Run(killed).latest() is None

    assert main(["train", "--out", str(killed), "--resume", "auto"]) == 0
    expected = run_files(tmp_path / "straight")
    assert len([name for name in expected if name.endswith(".safetensors")]) == 3 * 2 + 1  # 2 checkpoints, best/
    assert run_files(killed) == expected
    for folder in Run(killed).checkpoints():
        states = [json.loads((run / "checkpoints" / folder.name / "state.json").read_text()) for run in (killed, tmp_path / "straight")]
        for state in states:
            del state["elapsed_s"], state["data"]  # time taken, and where each run prepared its data
        assert states[0] == states[1]


# ---------------------------------------------------------------- pruning cut short


def test_a_deletion_cut_short_never_leaves_a_folder_that_looks_complete(char_data, tmp_path, monkeypatch):
    cfg = load_config("tiny", {**TINY, "train.max_iters": "4", "train.ckpt_interval": "2", "train.keep_last": "0"})
    Trainer(cfg, char_data, tmp_path).fit()
    run = Run(tmp_path, keep_last=1)
    old, newest = run.checkpoints()
    files = sorted(p for p in old.rglob("*") if p.is_file())

    seen_marker = []

    def killed_after(n: int):
        def rmtree(folder, *args, **kwargs):
            seen_marker.append((Path(folder) / ckpt.MARKER).exists())
            for path in files[:n]:
                path.unlink(missing_ok=True)
            raise KeyboardInterrupt  # the kill, n files into the deletion

        return rmtree

    for n in range(len(files) + 1):
        monkeypatch.setattr(ckpt.shutil, "rmtree", killed_after(n))
        with pytest.raises(KeyboardInterrupt):
            run.prune()
        monkeypatch.undo()
        assert not ckpt.is_complete(old) and run.checkpoints() == [newest]
        assert find_checkpoint(tmp_path / "checkpoints" / newest.name) == newest
        load_model(tmp_path)  # the run still opens: best/, else the newest
        (old / ckpt.MARKER).write_text("")  # as before the prune, for the next n
    assert seen_marker == [False] * (len(files) + 1)  # the marker went first, every time

    run.prune()  # the deletion done; a marker-less leftover would be dropped too
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [newest.name]


# ---------------------------------------------------------------- Ctrl-C and SIGTERM at any moment


def has_loaded_torch(pid: int) -> bool:
    """Whether the process is importing torch, or has (its shared libraries are mapped)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see a process import torch")
def test_a_signal_during_the_imports_at_start_up(char_data, tmp_path):
    procs = {
        signum: start("train", "--data", char_data, "--out", tmp_path / str(int(signum)), *args())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    for signum, proc in procs.items():
        wait_until(lambda proc=proc: has_loaded_torch(proc.pid), proc, "torch being imported")
        proc.send_signal(signum)
    for signum, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        word = "interrupted" if signum == signal.SIGINT else "terminated"
        assert (proc.returncode, one_line(err)) == (128 + signum, f"tinygpt train: {word}")


def test_a_signal_to_the_whole_process_group_while_preparing(train_txt, tmp_path):
    """Ctrl-C in a terminal, or `kill -TERM -PGID`, reaches the encoding workers too.

    Each run is signalled as soon as it has written its first tokens, while it still has most of
    25 MB to encode (BPE in 2 workers: seconds even on a fast machine; char was done before the
    signal came on a quiet one)."""
    big = tmp_path / "big.txt"
    big.write_bytes(train_txt.read_bytes() * 12)
    procs = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f"prepared-{int(signum)}"
        command = ["prepare", big, "--out", out, "--tokenizer", "bpe", "--vocab-size", "300", "--workers", "2",
                   "--tokenizer.train_bytes", "100000"]  # fmt: skip
        procs[signum] = (out, start(*command, start_new_session=True))
    waiting, deadline = dict(procs), time.monotonic() + 120
    while waiting:
        for signum, (out, proc) in list(waiting.items()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            if list(tmp_path.glob(f".{out.name}.*.tmp/train_000000.bin")):
                os.killpg(proc.pid, signum)
                del waiting[signum]
        time.sleep(0.01)
    for signum, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=120)
        word = "interrupted" if signum == signal.SIGINT else "terminated"
        assert (proc.returncode, one_line(err)) == (128 + signum, f"tinygpt prepare: {word}")
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}.*"))  # nothing half-written left


@pytest.mark.parametrize("interrupt,code,word", [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated")])
def test_a_signal_after_training_finished(char_data, tmp_path, monkeypatch, capsys, interrupt, code, word):
    def interrupted(*args, **kwargs):
        raise interrupt

    monkeypatch.setattr("tinygpt.train.plot_run", interrupted)  # the signal arrives while the curve is drawn
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path), *args(**{"train.max_iters": 2})]) == code
    assert one_line(capsys.readouterr().err) == f"tinygpt train: {word}"
    assert ckpt.read_progress(Run(tmp_path).latest())["step"] == 2


# ---------------------------------------------------------------- full disks


class FullDisk:
    """A file opened for writing on a full disk: write() fails as the kernel's does, with no file name."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_copying_the_tokenizer_names_the_file(char_data, tmp_path, monkeypatch, capsys):
    real_open = open

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullDisk(file) if "w" in mode and "tokenizer" in Path(path).parts else file

    monkeypatch.setattr(tinygpt.common, "open", open_on_full_disk, raising=False)
    run = tmp_path / "run"
    assert main(["train", "--data", str(char_data), "--out", str(run), *args(**{"train.max_iters": 2})]) == 1
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(rf"tinygpt train: error: no space left on device while writing {run}/(best|checkpoints/step-\d+)/tokenizer/\S+", line)
    assert not list(run.rglob("*.tmp"))  # the checkpoint's temporary folder was removed


def test_a_full_disk_while_drawing_the_curve_keeps_a_finished_run_finished(char_data, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", disk_full)
    assert main(["train", "--data", str(char_data), "--out", str(tmp_path), *args(**{"train.max_iters": 2})]) == 0
    out = capsys.readouterr().out
    assert f"curve not drawn (No space left on device: {tmp_path / 'loss.png'}; 'tinygpt plot {tmp_path}' draws it)" in out
    assert ckpt.read_progress(Run(tmp_path).latest())["step"] == 2
