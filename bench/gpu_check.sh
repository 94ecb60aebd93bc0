#!/usr/bin/env bash
# The CUDA paths in one run (bf16 autocast, fused AdamW, Muon, torch.compile, NCCL, the sampler on
# the GPU), under 10 minutes on one GPU, with no package registry in reach.
#
#   bash bench/gpu_check.sh            on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --cpu      the same steps with tiny sizes on the CPU (CI keeps it working)
#
# Before: `make gpu-wheels` here puts wheels of the packages tinygpt needs and the GPU machine's
# image lacks in wheels/gpu/ (never torch: the machine's own CUDA build is used) and a copy of
# train.txt in bench/gpu-data/, so both travel with the repository folder. The script installs
# those wheels (pip --no-index --no-deps), then:
#   1. llama-15m (8,192 tokens) trained for a fixed number of steps (bf16, torch.compile on CUDA) on
#      bench/gpu-data/train.txt, with Muon for the hidden matrices: tokens/s and MFU (model FLOPs
#      per token x tokens/s / the GPU's peak dense bf16 FLOP/s, looked up by name);
#   2. resumed once from its checkpoint for as many steps again;
#   3. a sample on the GPU: tokens/s of generation; then torch.profiler over 10 training steps
#      (its table in profile.txt: the ops by time on the GPU, to see where a step goes);
#   4. torchrun --nproc_per_node 1 (NCCL on CUDA, gloo on the CPU) for a few steps;
#   5. the test suite, with the GPU visible (skipped with --cpu: the suite runs this script), last so
#      that a lease too short for it still brings back 1-4; GPU_CHECK_TEST_SECONDS caps it, and a
#      module whose library is not installed there (llama-cpp-python compiles llama.cpp) is left out
#      with a line saying so.
# Prints one "gpu_check:" line per result; exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0
[[ "${1:-}" == "--cpu" ]] && CPU=1
PY=${PYTHON:-}
[[ -z $PY && -x .venv/bin/python ]] && PY=.venv/bin/python
PY=${PY:-python3}
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
DATA_TXT=bench/gpu-data/train.txt
[[ -f $DATA_TXT ]] || { mkdir -p bench/gpu-data && cp ../shared/data/tinystories/train.txt "$DATA_TXT"; }
say() { echo "gpu_check: $*"; }

if (( ! CPU )) && [[ -d wheels/gpu ]]; then  # built for the GPU machine's Python (pip picks its own from several)
    $PY -m pip install -q --no-index --no-deps --no-cache-dir --find-links wheels/gpu -r wheels/gpu/requirements.txt tinygpt
    # a dependency missing there would only skip the tests that importorskip it
    $PY -c "import fastapi, uvicorn, gguf" || { say "wheels/gpu lacks a dependency of the packages above (Makefile: GPU_MISSING)"; exit 1; }
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

if (( CPU )); then
    DEVICE=cpu; PRESET=tiny; STEPS=6; SIZES=(--model.n_layer 1 --model.n_embd 32 --model.n_head 2
        --model.block_size 32 --train.batch_size 4 --train.grad_accum 1 --train.eval_windows 4
        --train.eval_interval 3 --train.ckpt_interval 3 --train.log_interval 1 --train.threads 1
        --tokenizer.vocab_size 300 --tokenizer.train_bytes 200000)
    head -c 300000 "$DATA_TXT" > "$OUT/train.txt"; TEXT=$OUT/train.txt
else
    # llama-15m's model with 8,192 tokens (2 MB of text is too little for its 32,000), a quarter of its batch
    DEVICE=cuda; PRESET=llama-15m; STEPS=300; SIZES=(--train.grad_accum 1 --train.warmup_iters 30
        --train.eval_interval 150 --train.ckpt_interval 150 --train.log_interval 50 --train.eval_windows 200
        --tokenizer.vocab_size 8192)
    TEXT=$DATA_TXT
    say "device $($PY -c 'import torch; print(torch.cuda.get_device_name(0))'), torch $($PY -c 'import torch; print(torch.__version__)')"
fi
COMMON=(--config "$PRESET" --device "$DEVICE" --train.optimizer muon --train.schedule wsd
        --train.sample_tokens 0 "${SIZES[@]}")

$PY -m tinygpt prepare "$TEXT" --out "$OUT/data" --config "$PRESET" "${SIZES[@]}" --data.val_fraction 0.05 >/dev/null
$PY -m tinygpt train --data "$OUT/data" --out "$OUT/run" "${COMMON[@]}" --train.max_iters "$STEPS" > "$OUT/train.log"
$PY -m tinygpt train --out "$OUT/run" --resume auto --train.max_iters $((2 * STEPS)) > "$OUT/resume.log"
grep -q "resuming at step $STEPS" "$OUT/resume.log" && say "resumed at step $STEPS, trained to $((2 * STEPS))"

$PY - "$OUT/run" "$DEVICE" "$OUT/data" "$OUT" <<'EOF'
import json, sys, time
from pathlib import Path

import torch

from tinygpt.generate import Sampler
from tinygpt.run import load_model

PEAK_BF16 = {  # dense bf16 FLOP/s from the vendors' data sheets (SXM parts where two exist)
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
    "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}
run, device = Path(sys.argv[1]), sys.argv[2]
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in rows if r["kind"] == "train"]
tokens_per_s = sorted(r["tokens_per_s"] for r in train)[len(train) // 2]  # median of the logged intervals
model, tokenizer = load_model(run)
line = f"training {tokens_per_s:,.0f} tokens/s (median), {model.num_params():,} parameters"
if device == "cuda":
    name = torch.cuda.get_device_name(0)
    peak = next((flops for key, flops in PEAK_BF16.items() if key in name), None)
    achieved = tokens_per_s * model.flops_per_token()
    line += f", {achieved / 1e12:.1f} TFLOP/s" + (f", MFU {achieved / peak:.1%} of {name}'s {peak / 1e12:.0f}" if peak else f" ({name}: peak unknown)")
print("gpu_check:", line)
sampler = Sampler(model.to(device), tokenizer, device)
sampler.generate("Once upon a time", max_new_tokens=20, temperature=1.0, seed=0, stop_at_eot=False)  # warm-up
start = time.perf_counter()
n = 200 if device == "cuda" else 40
sampler.generate("Once upon a time", max_new_tokens=n, temperature=1.0, seed=1, stop_at_eot=False)
print(f"gpu_check: sampling {n / (time.perf_counter() - start):,.0f} tokens/s on {device} (batch 1, KV cache)")

from torch.profiler import ProfilerActivity, profile

from tinygpt import checkpoint as ckpt
from tinygpt.run import Run
from tinygpt.train import Trainer

out = Path(sys.argv[4])
trainer = Trainer(ckpt.read_config(Run(run).latest()), sys.argv[3], out / "profiled")
for _ in range(3):  # compiled graphs and optimizer state before the profile
    trainer.train_step()
cuda = device == "cuda"
with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
    start = time.perf_counter()
    for _ in range(10):
        trainer.train_step()
    ms = (time.perf_counter() - start) * 100  # per step
ops = prof.key_averages()
sort = "self_device_time_total" if cuda else "self_cpu_time_total"
(out / "profile.txt").write_text(ops.table(sort_by=sort, row_limit=30))
busy = sum(e.self_device_time_total for e in ops) / 1e4 if cuda else None  # microseconds over 10 steps -> ms a step
print(f"gpu_check: profile of 10 training steps: {ms:.1f} ms a step" + (f", {busy:.1f} ms of it in {device} kernels" if cuda else "")
      + f" (table in {out / 'profile.txt'})")
EOF

$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m tinygpt train --data "$OUT/data" \
    --out "$OUT/torchrun" "${COMMON[@]}" --train.max_iters 6 > "$OUT/torchrun.log"
grep -q "done: 6 steps" "$OUT/torchrun.log" && say "torchrun --nproc_per_node 1 trained 6 steps"

if (( ! CPU )); then
    SKIP=()
    $PY -c "import llama_cpp" 2>/dev/null || { SKIP+=(--ignore tests/test_gguf_export.py); say "tests: llama-cpp-python is not installed here, so tests/test_gguf_export.py is left out"; }
    XDIST=()
    $PY -c "import xdist" 2>/dev/null && XDIST=(-n 8)
    set +e
    timeout "${GPU_CHECK_TEST_SECONDS:-3600}" $PY -m pytest -v -p no:randomly -p no:cacheprovider "${XDIST[@]}" "${SKIP[@]}" tests \
        > "$OUT/tests.log" 2>&1
    rc=$?
    set -e
    summary=$(tail -1 "$OUT/tests.log")
    (( rc == 124 )) && summary="cut at ${GPU_CHECK_TEST_SECONDS:-3600} s, last: $summary"
    say "tests with the GPU visible: $summary (exit $rc${XDIST:+, ${XDIST[*]}})"
    (( rc == 0 )) || exit "$rc"
fi
say "all done (logs in $OUT)"
