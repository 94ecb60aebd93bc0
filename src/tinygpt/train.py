"""Training: a Trainer that turns prepared token shards into checkpoints, and the `tinygpt train` command.

One optimizer step, in order:
  1. set the learning rate, a pure function of the step (so resuming needs no schedule state);
  2. for each of grad_accum micro-batches: draw a batch, forward under autocast, backward
     (under DDP the gradients are averaged across processes only on the last one);
  3. agree across processes on the loss and on whether to stop; stop before updating on NaN;
  4. clip the gradient norm, take the AdamW step.
Every eval_interval steps the model is measured on a fixed slice of the validation shards, in
bits per byte; every ckpt_interval steps (and at the end, and on SIGINT/SIGTERM) a checkpoint
is written. Everything random (dropout, the order of batches) comes from generators whose
state is saved, so a resumed run takes exactly the steps the uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from .common import TinyGPTError, autodetect_device
from .config import Config, TrainConfig, add_config_arguments, dump_toml, load_config, parse_duration
from .distributed import (
    Dist,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    cleanup_distributed,
    gather_to_main,
    init_distributed,
)
from .evaluate import bits_per_byte, evaluate
from .loader import TrainLoader
from .metrics import Metrics, plot_run
from .model import GPT
from .prepare import prepare
from .run import Run, find_checkpoint
from .shards import ShardSet, is_prepared, tokenizer_dir
from .tokenizers import load_tokenizer

CALIBRATION_STEPS = 3  # timed steps that turn a wall-clock budget into a step count
BUDGET_KEYS = ("max_iters", "max_tokens", "max_time")

# ---------------------------------------------------------------- pure pieces: schedule, budget, precision


def lr_at(step: int, train: TrainConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine down to min_lr."""
    if step < train.warmup_iters:
        return train.lr * (step + 1) / (train.warmup_iters + 1)
    if train.schedule == "constant":
        return train.lr
    progress = min(1.0, (step - train.warmup_iters) / max(1, max_steps - train.warmup_iters))
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)


def steps_for_tokens(train: TrainConfig, tokens_per_step: int) -> int:
    """The step budget of max_tokens (when set) or max_iters; a wall-clock budget is measured instead."""
    if train.max_tokens:
        return math.ceil(train.max_tokens / tokens_per_step)
    return train.max_iters


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: bfloat16 on a CUDA GPU that has it, float16 (with loss scaling) on one that does not,
    float32 on CPU and MPS, where mixed precision gains little for small models."""
    cuda = device.startswith("cuda")
    if name == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if name == "bfloat16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TinyGPTError("config: train.dtype bfloat16 is not supported by this GPU: use float16 or auto")
    return getattr(torch, name)


def make_optimizer(model: torch.nn.Module, train: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW. Weight decay pulls matrices (linear weights, embeddings) toward zero, not biases and
    norm gains, whose size sets a scale rather than storing knowledge; decay_all decays every
    parameter, as torch.optim.AdamW does by default (the seed's recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.decay_all:
        groups = [{"params": params, "weight_decay": train.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    # One fused kernel for all parameters instead of about ten small ops per tensor, on CUDA
    # and on CPU (where small models have many small tensors); MPS has no fused AdamW.
    fused = True if device.startswith(("cuda", "cpu")) else None
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=train.lr, betas=(train.beta1, train.beta2), fused=fused
    )


# ---------------------------------------------------------------- speed


@dataclass
class StepTimer:
    """Time spent inside training steps only (not evaluations or checkpoints): the honest speed."""

    steps: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return tokens_per_step * self.steps / max(self.seconds, 1e-9)


# ---------------------------------------------------------------- the trainer


class Trainer:
    """One training run: model, optimizer, data and run folder. It never parses a command line.

    resume: a checkpoint folder to continue exactly (same step, optimizer, random streams).
    init_from: a checkpoint folder whose weights start a new run (fine-tuning): fresh
    optimizer and step 0. Either must match the data's tokenizer and the config's architecture.
    """

    def __init__(
        self,
        cfg: Config,
        data_dir: str | Path,
        run_dir: str | Path,
        *,
        resume: str | Path | None = None,
        init_from: str | Path | None = None,
        dist: Dist | None = None,
    ):
        self.cfg, t = cfg, cfg.train
        self.data_dir = Path(data_dir)
        self.run = Run(run_dir, ckpt_interval=t.ckpt_interval, keep_last=t.keep_last)
        self.dist = dist or Dist(device=autodetect_device(t.device))
        self.device = self.dist.device
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.device.startswith("cuda"):
            torch.set_float32_matmul_precision("high")  # TF32 matmuls where the GPU has them
        if self.dist.is_main:
            self.run.folder.mkdir(parents=True, exist_ok=True)

        self.train_shards, self.val_shards = ShardSet(self.data_dir, "train"), ShardSet(self.data_dir, "val")
        self.tokenizer = load_tokenizer(tokenizer_dir(self.data_dir))
        self.token_bytes = torch.from_numpy(self.tokenizer.token_bytes())
        start = Path(resume) if resume else find_checkpoint(init_from) if init_from else None
        if start:
            self._check_tokenizer(start)
        self._resolve_tokenizer(cfg)
        if start:
            saved = ckpt.read_config(start)
            ckpt.check_architecture(saved.model, cfg.model, start)

        seed = t.seed + self.dist.rank  # dropout differs per process; DDP copies rank 0's initial weights
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.model = GPT(cfg.model).to(self.device)
        self.optimizer = make_optimizer(self.model, t, self.device)
        self.loader = TrainLoader(
            self.train_shards, cfg.model.block_size, t.batch_size, t.seed, self.dist.rank, self.dist.world_size
        )
        self.dtype = resolve_dtype(t.dtype, self.device)
        device_type = self.device.split(":")[0]
        self.autocast = torch.autocast(device_type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.dtype == torch.float16)
        self.tokens_per_step = t.batch_size * cfg.model.block_size * t.grad_accum * self.dist.world_size

        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.max_steps: int | None = None  # resolved in fit() when the budget is wall-clock time
        if resume:
            self.load_state_dict(ckpt.read_training_state(start, self.dist.rank, self.dist.world_size))
            self._keep_or_reset_budget(saved.train)
        else:
            if init_from:
                ckpt.load_weights(self.model, start)
            if not t.max_time:
                self.max_steps = steps_for_tokens(t, self.tokens_per_step)
        self.resumed_from = self.step if resume else None

        # What runs the training steps: maybe compiled, maybe wrapped for DDP. Evaluation,
        # sampling and saving use self.model itself (no compiled graphs, no "module." prefixes).
        self.net = self.model
        if t.compile == "on" or (t.compile == "auto" and self.device.startswith("cuda")):
            self.net = torch.compile(self.net)
        if self.dist.world_size > 1:
            device_ids = [self.dist.local_rank] if self.device.startswith("cuda") else None
            self.net = DistributedDataParallel(self.net, device_ids=device_ids)
        self.stop_signal: int | None = None

    # ------------------------------------------------------------ setup checks

    def _resolve_tokenizer(self, cfg: Config) -> None:
        """The data decides the tokenizer: record it in the config, which is saved with every checkpoint."""
        manifest = self.train_shards.manifest
        if self.tokenizer.hash != manifest["tokenizer_hash"]:
            raise TinyGPTError(
                f"{self.data_dir}/tokenizer is not the tokenizer its shards were made with: prepare again"
            )
        if cfg.model.vocab_size not in (0, self.tokenizer.vocab_size):
            raise TinyGPTError(
                f"config: model.vocab_size {cfg.model.vocab_size} differs from the data's tokenizer "
                f"({self.tokenizer.vocab_size}): leave it 0 to take the tokenizer's"
            )
        cfg.model.vocab_size = self.tokenizer.vocab_size
        cfg.tokenizer.kind = self.tokenizer.kind
        if self.tokenizer.kind != "char":
            cfg.tokenizer.vocab_size = self.tokenizer.vocab_size

    def _check_tokenizer(self, folder: Path) -> None:
        """A model knows token ids only: data from another tokenizer would be noise to it."""
        saved = ckpt.read_progress(folder)["tokenizer_hash"]
        if saved != self.tokenizer.hash:
            raise TinyGPTError(
                f"the data in {self.data_dir} was tokenized with another tokenizer than the checkpoint {folder} "
                f"(hash {self.tokenizer.hash} vs {saved}): prepare it with --tokenizer-from {folder}"
            )

    def _keep_or_reset_budget(self, saved: TrainConfig) -> None:
        """Keep the resumed run's step budget, so its schedule is the one it started with;
        a budget changed on the command line is resolved again (the schedule then stretches)."""
        if all(getattr(saved, k) == getattr(self.cfg.train, k) for k in BUDGET_KEYS):
            return
        self.max_steps = None if self.cfg.train.max_time else steps_for_tokens(self.cfg.train, self.tokens_per_step)

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resumed run needs, in the layout checkpoint.save_checkpoint takes (with "rank" for this process)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rank": {"rng": ckpt.capture_rng(self.device), "loader": self.loader.state_dict()},
            "progress": {
                "step": self.step,
                "max_steps": self.max_steps,
                "tokens": self.tokens,
                "elapsed_s": round(self.elapsed, 3),
                **self.run.state_dict(),
                "grad_scaler": self.scaler.state_dict(),
                "world_size": self.dist.world_size,
                "tokenizer_hash": self.tokenizer.hash,
                "data": str(self.data_dir.resolve()),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rank"]["rng"], self.device)
        self.loader.load_state_dict(state["rank"]["loader"])
        p = state["progress"]
        self.step, self.max_steps, self.tokens, self.elapsed = p["step"], p["max_steps"], p["tokens"], p["elapsed_s"]
        self.run.load_state_dict(p)
        if p["grad_scaler"]:
            self.scaler.load_state_dict(p["grad_scaler"])

    def save(self, best: bool = False) -> None:
        """Write this step's checkpoint (with every rank's random state), or best/, from rank 0;
        all ranks learn if it failed."""
        state = self.state_dict()
        rank = state.pop("rank")  # this process's random streams and loader position
        if not best:
            state["ranks"] = gather_to_main(rank)  # every process's, on rank 0
        error = None
        if self.dist.is_main:
            files = dump_toml(self.cfg), tokenizer_dir(self.data_dir)
            try:
                if best:
                    self.run.save_best(state, *files)
                else:
                    self.run.save(self.step, state, *files)
            except OSError as e:
                error = e
        if broadcast_from_main(float(error is not None), self.device):
            folder = self.run.best if best else self.run.step_folder(self.step)
            raise error or TinyGPTError(f"rank 0 could not write the checkpoint {folder}")

    # ------------------------------------------------------------ one step

    def train_step(self) -> dict:
        """One optimizer step; returns its loss, bits per byte, learning rate, gradient norm and whether to stop."""
        t = self.cfg.train
        lr = lr_at(self.step, t, self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Summed over micro-batches and (below) processes: loss, target bytes, stop requests.
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for micro in range(t.grad_accum):
            x, y = self.loader.next_batch()
            totals[1] += int(self.token_bytes[y].sum())
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = micro == t.grad_accum - 1
            sync = nullcontext() if last or self.dist.world_size == 1 else self.net.no_sync()
            with sync:
                with self.autocast:
                    _, loss = self.net(x, y)
                self.scaler.scale(loss / t.grad_accum).backward()
            totals[0] += loss.detach()
        totals[2] = float(self.stop_signal is not None)
        loss_sum, n_bytes, stop_votes = all_reduce_sum(totals).tolist()
        loss = loss_sum / (t.grad_accum * self.dist.world_size)
        if not math.isfinite(loss):
            last_good = self.run.latest()
            raise TinyGPTError(
                f"the loss is {loss} at step {self.step + 1}: lower --train.lr (now {t.lr:g}), "
                "keep --train.grad_clip on (e.g. 1.0) or try --train.dtype float32; "
                f"the last good checkpoint is {last_good or 'none (no checkpoint was written yet)'}"
            )
        self.scaler.unscale_(self.optimizer)  # the gradient norm is about the true gradients
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        else:  # measure only: clip_grad_norm_ with an infinite bound would still multiply every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss,
            "bpb": bits_per_byte(loss * self.tokens_per_step, n_bytes),
            "lr": lr,
            "grad_norm": grad_norm,
            "stop": stop_votes > 0,  # decided together, so every process saves and stops at the same step
        }

    def evaluate(self) -> dict:
        return evaluate(
            self.model,
            self.val_shards,
            self.token_bytes,
            block_size=self.cfg.model.block_size,
            batch_size=self.cfg.train.batch_size,
            max_windows=self.cfg.train.eval_windows,
            device=self.device,
            autocast=self.autocast,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def calibrate(self, seconds: float) -> int:
        """Steps that fit in `seconds`: time a few steps and one evaluation, then undo them.

        The steps run on a snapshot of the whole state, restored afterwards, so the run
        proper starts exactly as it would have. The calibration's own time counts against
        the budget. Rank 0's figure is used by every process.
        """
        calibration_start = time.perf_counter()
        snapshot = copy.deepcopy(self.state_dict())
        self.max_steps = self.step + CALIBRATION_STEPS + 1  # any budget will do for timing; the snapshot restores None
        self.train_step()  # not timed: compilation, memory allocation, caches
        self._synchronize()
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            self.train_step()
        self._synchronize()
        per_step = (time.perf_counter() - start) / CALIBRATION_STEPS
        start = time.perf_counter()
        self.evaluate()
        per_step += (time.perf_counter() - start) / self.cfg.train.eval_interval
        self.load_state_dict(snapshot)
        seconds -= time.perf_counter() - calibration_start
        return int(broadcast_from_main(max(1, int(seconds / per_step)), self.device))

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ the loop

    def fit(self) -> int | None:
        """Train until the step budget is spent or a stop signal arrives; return that signal's number (None: finished)."""
        t = self.cfg.train
        main = self.dist.is_main
        started = time.perf_counter()
        previous_elapsed = self.elapsed
        if self.max_steps is None:
            remaining = parse_duration(t.max_time, "train.max_time") - self.elapsed
            self.max_steps = self.step + self.calibrate(remaining)
            self._print(f"time budget {t.max_time}: measured speed gives {self.max_steps:,} steps in all")
        if self.step >= self.max_steps:
            self._print(f"{self.run.folder} is already trained to its budget of {self.max_steps:,} steps")
            return None
        metrics = Metrics(self.run.folder, self.resumed_from) if main else None
        self._print(self._describe())
        old_handlers = self._install_signal_handlers()
        bar = None
        try:
            if self.step == 0:
                self._evaluate(metrics)
            if main:
                from tqdm import tqdm

                bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=False)
            session, interval = StepTimer(), StepTimer()  # this process's whole run; since the last log line
            while self.step < self.max_steps:
                step_start = time.perf_counter()
                out = self.train_step()
                self.step += 1
                self.tokens += self.tokens_per_step
                step_time = time.perf_counter() - step_start
                session.add(step_time)
                interval.add(step_time)
                if bar:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{out['loss']:.3f}", tok_s=f"{self.tokens_per_step / step_time:,.0f}", refresh=False
                    )
                if self.step % t.log_interval == 0 or self.step == self.max_steps:
                    self._log_train(metrics, bar, out, interval)
                    interval = StepTimer()
                if self.step % t.eval_interval == 0 or self.step == self.max_steps:
                    self._evaluate(metrics, bar)
                self.elapsed = previous_elapsed + time.perf_counter() - started
                if self.run.should_save(self.step, final=self.step == self.max_steps or out["stop"]):
                    self.save()
                if out["stop"]:
                    stopped_by = self.stop_signal or signal.SIGTERM  # or the signal went to another process
                    self._print(f"stopped by signal {stopped_by} at step {self.step}; resume with --resume auto")
                    return stopped_by
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            if bar:
                bar.close()
            if metrics:
                metrics.close()
        if main:
            self._finish(session)
        return None

    def _evaluate(self, metrics: Metrics | None, bar=None) -> None:
        result = self.evaluate()
        best = self.run.update_best(self.step, result["bpb"])
        if best:
            self.save(best=True)
        if metrics:
            metrics.write("eval", self.step, loss=result["loss"], bpb=result["bpb"], tokens=self.tokens)
            self._print(
                f"step {self.step}: val loss {result['loss']:.4f} | val bpb {result['bpb']:.4f}"
                + ("" if result["exact"] else f" (estimate: first {result['windows']} windows)")
                + (" (best)" if best else ""),
                bar,
            )

    def _log_train(self, metrics: Metrics | None, bar, out: dict, interval: StepTimer) -> None:
        if not metrics:
            return
        tokens_per_s = interval.tokens_per_s(self.tokens_per_step)
        ms_per_step = 1000 * interval.seconds / interval.steps
        grad_norm = float(out["grad_norm"])
        metrics.write(
            "train",
            self.step,
            loss=out["loss"],
            bpb=out["bpb"],
            lr=out["lr"],
            grad_norm=grad_norm,
            tokens=self.tokens,
            tokens_per_s=tokens_per_s,
            ms_per_step=ms_per_step,
        )
        self._print(
            f"step {self.step}/{self.max_steps} | loss {out['loss']:.4f} | bpb {out['bpb']:.4f} | lr {out['lr']:.2e} "
            f"| grad {grad_norm:.3f} | {tokens_per_s:,.0f} tok/s | {ms_per_step:.1f} ms/step",
            bar,
        )

    def _finish(self, session: StepTimer) -> None:
        """The end of a run: a sample of text, the loss curve and a summary."""
        from .generate import Sampler

        t = self.cfg.train
        if t.sample_tokens:
            sampler = Sampler(self.model, self.tokenizer, self.device)
            text = sampler.generate("", max_new_tokens=t.sample_tokens, temperature=1.0, seed=t.seed, stop_at_eot=False)
            print(f"--- sample ({t.sample_tokens} tokens, temperature 1.0) ---\n{text}\n---")
        plot = plot_run(self.run.folder)
        best = f"{self.run.best_val_bpb:.4f}" if self.run.best_val_bpb is not None else "n/a"
        print(
            f"done: {self.step:,} steps, {self.tokens:,} tokens in {_duration(self.elapsed)} "
            f"({session.tokens_per_s(self.tokens_per_step):,.0f} tokens/s this session); best val bpb {best}\n"
            f"checkpoint {self.run.step_folder(self.step)} | best {self.run.best} | curve {plot}"
        )

    def _describe(self) -> str:
        m, t = self.cfg.model, self.cfg.train
        what = f"resuming at step {self.step:,}" if self.resumed_from is not None else "starting"
        return (
            f"{what}: {m.family} model, {self.model.num_params():,} parameters, {m.n_layer} layers x {m.n_embd} wide, "
            f"context {m.block_size}, {self.tokenizer.kind} tokenizer of {self.tokenizer.vocab_size:,} | "
            f"{self.max_steps:,} steps of {self.tokens_per_step:,} tokens ({t.batch_size} x {m.block_size} x "
            f"{t.grad_accum} accum x {self.dist.world_size} processes) | {self.device}, {str(self.dtype).removeprefix('torch.')}"
        )

    def _print(self, text: str, bar=None) -> None:
        if not self.dist.is_main:
            return
        if bar:
            bar.write(text)
        else:
            print(text, flush=True)

    def _install_signal_handlers(self) -> dict:
        """SIGINT and SIGTERM end the run after the current step, with a checkpoint; a second one stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self._print(f"signal {signum}: saving a checkpoint after this step (send it again to quit at once)")

        return {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# ---------------------------------------------------------------- `tinygpt train`


def prepare_if_needed(path: Path, run: Run, cfg: Config, tokenizer_from: Path | None = None) -> Path:
    """The prepared-data folder to train on: `path` itself when prepared, else raw text
    (.txt/.jsonl/.json files, folders, globs) prepared once into RUN/data, with the tokenizer
    of `tokenizer_from` (the checkpoint a run starts from) or a new one as the config says."""
    if is_prepared(path):
        return path
    prepared = run.data
    if not is_prepared(prepared):  # otherwise an earlier start of this run prepared it
        prepare([str(path)], prepared, cfg, tokenizer_from=str(tokenizer_from) if tokenizer_from else None)
    return prepared


EPILOG = """\
examples:
  tinygpt train --data data/tinystories --config tiny
  tinygpt train --data data/tinystories --config cpu-10min --max-time 10m --out runs/cpu
  tinygpt train --out runs/cpu --resume auto           # continue after a crash or Ctrl-C
  tinygpt train --data data/other --init-from runs/cpu --out runs/finetune

budget: --train.max_time (or --max-time) wins over --train.max_tokens, which wins over
--train.max_iters. A time budget is turned into a step count by timing a few steps at the
start; that count is saved with the run, so the schedule and a resume stay exact.

checkpoints: RUN/checkpoints/step-NNNNNNNNNN/ every --train.ckpt_interval steps and at the
end (the newest --train.keep_last kept; 0 keeps all), RUN/best/ for the best validation bits
per byte. A checkpoint that cannot be written (full disk) stops the run; the previous stays.
SIGINT (Ctrl-C) or SIGTERM: a checkpoint after the current step, then exit code 130 or 143
(128 + the signal); a second signal quits at once. Exact resume needs the same number of
processes, and on CPU the same --train.threads.

train bpb is the bits per byte of each logged batch; val bpb covers a fixed slice of the
validation shards (--train.eval_windows windows; 0 = all of it).

several GPUs on one machine (one process per GPU; --train.batch_size is per process):
  torchrun --standalone --nproc_per_node 8 -m tinygpt train --data DATA --config llama-110m
several machines (the same command on each; DATA and RUN on a shared filesystem):
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
      --rdzv_id myrun -m tinygpt train --data DATA --out RUN --config llama-110m
(CPU processes communicate over gloo: torchrun --nproc_per_node 2 on a CPU-only machine works too.)

"""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train a model on prepared token shards (or raw text, prepared into RUN/data first).\n"
        "Config: --config PRESET (default: tiny; when resuming or fine-tuning, the checkpoint's own config)."
    )
    p.epilog = EPILOG
    p.add_argument(
        "--data",
        metavar="FOLDER",
        help="prepared data folder (from 'tinygpt prepare'); when resuming, defaults to the run's",
    )
    p.add_argument("--out", metavar="RUN", help="run folder for checkpoints, metrics and plots (default: runs/PRESET)")
    p.add_argument(
        "--resume",
        metavar="auto|CHECKPOINT",
        help="'auto': continue from the newest complete checkpoint in RUN, if any; or a checkpoint folder",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new run from these weights (a checkpoint or run folder): fine-tuning",
    )
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (same as --train.device)")
    p.add_argument(
        "--max-time", metavar="DURATION", help="wall-clock budget such as 90s, 10m, 2h (same as --train.max_time)"
    )
    add_config_arguments(p)


def run_train(args: argparse.Namespace) -> int:
    overrides = dict(args.overrides)
    if args.device:
        overrides["train.device"] = args.device
    if args.max_time:
        overrides["train.max_time"] = args.max_time
    if args.resume == "auto" and not args.out:
        raise TinyGPTError("--resume auto needs --out RUN: the run folder to continue")
    if args.resume and args.init_from:
        raise TinyGPTError("--resume continues a run and --init-from starts a new one: give one of them")
    run = Run(args.out) if args.out else Run.of_checkpoint(args.resume) if args.resume else None
    resume = run.resume_point(args.resume) if args.resume else None
    init_from = find_checkpoint(args.init_from) if args.init_from else None
    start = resume or init_from
    if args.config is None and start:  # the checkpoint's own config, with the command line's changes
        cfg = load_config(None, overrides, base=ckpt.read_config(start).to_dict())
    else:
        cfg = load_config(args.config or "tiny", overrides)
    run = run or Run(Path("runs") / Path(args.config or "tiny").stem)
    if not resume and run.latest():
        raise TinyGPTError(
            f"{run.folder} already holds checkpoints: continue it with --resume auto, or choose another --out"
        )
    data = args.data or (ckpt.read_progress(resume)["data"] if resume else None)
    if not data:
        raise TinyGPTError("--data FOLDER is required: the prepared token shards to train on")

    dist = init_distributed(cfg.train.device)
    try:
        # Rank 0 records a new run's start and prepares raw text; the other processes wait, then find it prepared.
        if not dist.is_main:
            barrier()
        elif not resume:
            run.record_start(cfg, data, init_from)
        data_dir = prepare_if_needed(Path(data), run, cfg, tokenizer_from=start)
        if dist.is_main:
            barrier()
        trainer = Trainer(cfg, data_dir, run.folder, resume=resume, init_from=init_from, dist=dist)
        stopped_by = trainer.fit()
        barrier()  # nobody tears the process group down while rank 0 still writes the sample and plot
    finally:
        cleanup_distributed()
    return 128 + stopped_by if stopped_by else 0
