"""bench/gpu_check.sh --cpu: the GPU check's every step (train, resume, sample, profile, torchrun) with tiny
sizes on the CPU, so that the script still works the day a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("gpu_check: ")]
    assert lines[0] == "gpu_check: resumed at step 6, trained to 12"
    assert lines[1].startswith("gpu_check: training ") and " tokens/s (median)" in lines[1]
    assert lines[2].startswith("gpu_check: sampling ") and lines[2].endswith("tokens/s on cpu (batch 1, KV cache)")
    assert lines[3].startswith("gpu_check: profile of 10 training steps: ") and " ms a step (table in " in lines[3]
    assert "aten::mm" in (tmp_path / "profile.txt").read_text()  # the table of a real training step's ops
    assert lines[4] == "gpu_check: torchrun --nproc_per_node 1 trained 6 steps"
    assert lines[5].startswith("gpu_check: all done")
