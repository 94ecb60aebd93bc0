"""Data-parallel training through torchrun on the CPU (gloo): two processes with half the batch
each must train the same model as one process with the whole batch, and resume from their checkpoint;
with Muon for the hidden matrices and AdamW for the rest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tinygpt import checkpoint as ckpt
from tinygpt.config import load_config
from tinygpt.run import Run
from tinygpt.train import Trainer

# dropout off: each process draws its own dropout masks, which no single process reproduces
SETTINGS = {
    "model.n_layer": "1",
    "model.n_embd": "32",
    "model.block_size": "32",
    "model.dropout": "0.0",
    "train.grad_accum": "2",  # exercises no_sync on all but the last micro-batch
    "train.max_iters": "6",
    "train.ckpt_interval": "3",
    "train.eval_interval": "3",
    "train.eval_windows": "24",
    "train.log_interval": "1",
    "train.threads": "1",
    "train.device": "cpu",  # gloo: the same on a machine with one GPU or none
    "train.sample_tokens": "0",
}
# Muon: every process steps it on the averaged gradients. Its Newton-Schulz iterations run in
# bfloat16 (torch.optim.Muon), which turns the last-bit differences of summing gradients over
# processes into differences of about 1e-5 in the loss and 1e-3 in the weights, where AdamW's
# stay below 1e-6. Tolerances: (loss, weights).
OPTIMIZERS = {"adamw": (1e-5, 1e-5), "muon": (1e-4, 1e-2)}
PER_PROCESS_BATCH = 4


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tinygpt",
        "train",
        *args,
    ]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result


def metrics(run) -> dict[tuple[str, int], dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["kind"], r["step"]): r for r in rows}


def assert_close_weights(a, b, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module", params=OPTIMIZERS)
def ddp_run(request, char_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    overrides = [a for k, v in {**SETTINGS, "train.optimizer": request.param}.items() for a in (f"--{k}", v)]
    torchrun(
        "--data",
        str(char_data),
        "--out",
        str(run),
        "--config",
        "tiny",
        "--train.batch_size",
        str(PER_PROCESS_BATCH),
        *overrides,
    )
    return run


def test_two_processes_train_like_one_with_the_whole_batch(ddp_run, char_data, tmp_path):
    single = tmp_path / "single"
    optimizer = ckpt.read_config(Run(ddp_run).step_folder(6)).train.optimizer
    cfg = load_config("tiny", {**SETTINGS, "train.optimizer": optimizer, "train.batch_size": str(2 * PER_PROCESS_BATCH)})
    Trainer(cfg, char_data, single).fit()

    ddp, one, (loss_tolerance, weight_tolerance) = metrics(ddp_run), metrics(single), OPTIMIZERS[optimizer]
    assert ddp.keys() == one.keys()
    for key in ddp:
        assert ddp[key]["loss"] == pytest.approx(one[key]["loss"], abs=loss_tolerance), key
        assert ddp[key]["tokens"] == one[key]["tokens"]
    assert_close_weights(Run(ddp_run).step_folder(6), Run(single).step_folder(6), atol=weight_tolerance)

    folder = Run(ddp_run).step_folder(6)
    assert {"rank-00000.safetensors", "rank-00001.safetensors"} <= {p.name for p in folder.iterdir()}
    assert ckpt.read_progress(folder)["world_size"] == 2


def test_a_ddp_checkpoint_resumes_under_ddp(ddp_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(Run(ddp_run).step_folder(3), Run(run).step_folder(3))
    result = torchrun("--out", str(run), "--resume", "auto")
    assert "resuming at step 3" in result.stdout
    assert_close_weights(Run(ddp_run).step_folder(6), Run(run).step_folder(6), atol=0)
