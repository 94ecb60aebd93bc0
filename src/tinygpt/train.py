"""Training: a Trainer that turns prepared token shards into checkpoints, and the `tinygpt train` command.

One optimizer step, in order:
  1. set the learning rate, a function of the step and of the budget's decisions (the final
     step, the step the decay starts), which every checkpoint stores;
  2. for each of grad_accum micro-batches: draw a batch, forward under autocast, backward
     (under DDP the gradients are averaged across processes only on the last one);
  3. agree across processes on the loss and on whether to stop; stop before updating on NaN;
  4. clip the gradient norm, take the optimizers' step (AdamW, and Muon for hidden matrices: optim.py).
Every eval_interval steps the model is measured on a fixed sample of validation windows spread
evenly over the whole split, in bits per byte, and writes a short sample of text to
RUN/samples.jsonl (from its own generator, so the random streams below are untouched); a
wall-clock budget is re-estimated then (budget.py). At the end the whole validation split is
scored: the run's result. Every ckpt_interval steps (and at the end, and on SIGINT/SIGTERM) a checkpoint
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
from .budget import TimeBudget
from .common import PROCESS_START, TinyGPTError, autodetect_device, interrupt_for, keep_freed_memory
from .config import Config, TrainConfig, add_config_arguments, differences, dump_toml, load_config, parse_duration
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
from .loader import TrainLoader, count_eval_windows
from .metrics import Metrics, plot_run
from .model import GPT
from .optim import make_optimizer
from .prepare import prepare
from .run import Run, find_checkpoint
from .shards import ShardSet, is_prepared, tokenizer_dir
from .tokenizers import load_tokenizer

CALIBRATION_STEPS = 3  # timed steps that turn a wall-clock budget into a step count
BUDGET_KEYS = ("max_iters", "max_tokens", "max_time")
# What a resumed run reads from its checkpoint's state.json (Trainer.state_dict's "progress"), with the JSON types
PROGRESS = {
    "step": (int,),
    "max_steps": (int, type(None)),
    "tokens": (int,),
    "elapsed_s": (int, float),
    "best_val_bpb": (int, float, type(None)),
    "grad_scaler": (dict,),
    "tokenizer_hash": (str,),
    "data": (str,),
}

# ---------------------------------------------------------------- pure pieces: schedule, budget, precision


def lr_at(step: int, train: TrainConfig, max_steps: int, decay_start: int | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant, cosine down
    to min_lr at max_steps, or warmup-stable-decay ("wsd": the peak until `decay_start`, None
    while not decided, then down to min_lr at max_steps, linearly or, with decay_shape "1-sqrt",
    as 1 - sqrt(progress), which falls faster early in the decay; both from Hägele et al. 2024,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", section 3)."""
    if step < train.warmup_iters:
        return train.lr * (step + 1) / (train.warmup_iters + 1)
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "wsd":
        if decay_start is None or step < decay_start:
            return train.lr
        progress = min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
        if train.decay_shape == "1-sqrt":
            progress = math.sqrt(progress)
        return train.lr + progress * (train.min_lr - train.lr)
    progress = min(1.0, (step - train.warmup_iters) / max(1, max_steps - train.warmup_iters))
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)


def wsd_decay_start(train: TrainConfig, max_steps: int) -> int:
    """The step a step budget's decay starts: the last decay_frac of the steps decay."""
    return max_steps - round(train.decay_frac * max_steps)


def steps_for_tokens(train: TrainConfig, tokens_per_step: int) -> int:
    """The step budget of max_tokens (when set) or max_iters; a wall-clock budget is measured instead."""
    if train.max_tokens:
        return math.ceil(train.max_tokens / tokens_per_step)
    return train.max_iters


def cpu_multiplies_bfloat16() -> bool:
    """Whether this CPU has bfloat16 products in hardware (AVX512-BF16 or AMX). Without them torch
    emulates bfloat16, and autocast makes training slower, not faster: a `cpu-10min` step cost 7.8x
    float32's on an AVX2-only EPYC, against 1/1.6 of it with AVX512-BF16 (BENCHMARKS.md, issue 13)."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: bfloat16 on a CUDA GPU that has it, float16 (with loss scaling) on one that does not,
    bfloat16 on a CPU that multiplies in it natively (`cpu_multiplies_bfloat16`), float32 on other
    CPUs and on MPS. Resolved on the machine that runs, so a run resumed elsewhere may change it.
    Raises TinyGPTError for bfloat16 on a GPU without it."""
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if device == "cpu" and cpu_multiplies_bfloat16() else torch.float32
    if name == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise TinyGPTError("config: train.dtype bfloat16 is not supported by this GPU: use float16 or auto")
    return getattr(torch, name)


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
    Raises TinyGPTError for an invalid config (it is validated here, as the command line does),
    data or checkpoint.
    clock: seconds, for a wall-clock budget (time.perf_counter; tests inject their own);
    started: the clock's reading when this process's share of the budget began (default: now;
    `tinygpt train` passes its process start).
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
        clock=time.perf_counter,
        started: float | None = None,
    ):
        self.cfg, t = cfg.validate(), cfg.train
        self.clock = clock
        self.session_start = clock() if started is None else started
        self.data_dir = Path(data_dir)
        self.run = Run(run_dir, ckpt_interval=t.ckpt_interval, keep_last=t.keep_last)
        self.dist = dist or Dist(device=autodetect_device(t.device))
        t.check_seed(self.dist.world_size)
        self.device = self.dist.device
        if t.threads:
            torch.set_num_threads(t.threads)
        if self.device == "cpu":
            keep_freed_memory()  # no fresh pages to fault in every step: a tenth of a seed step
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
            self.train_shards,
            cfg.model.block_size,
            t.batch_size,
            t.seed,
            self.dist.rank,
            self.dist.world_size,
            short_block_size=t.short_block_size,
        )
        self.dtype = resolve_dtype(t.dtype, self.device)
        device_type = self.device.split(":")[0]
        self.autocast = torch.autocast(device_type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.dtype == torch.float16)
        self.tokens_per_step = t.batch_size * cfg.model.block_size * t.grad_accum * self.dist.world_size

        self.val_windows = count_eval_windows(self.val_shards, cfg.model.block_size)
        self.step, self.tokens, self.elapsed = 0, 0, 0.0  # elapsed: seconds of the budget spent before this session
        self.max_steps: int | None = None  # resolved in fit() when the budget is wall-clock time
        self.decay_start: int | None = None  # the wsd schedule's; under a time budget decided as the run goes
        self.budget = TimeBudget(parse_duration(t.max_time), self._decay_frac()) if t.max_time else None
        self.end_s = 0.0  # measured seconds the end of the run takes (full validation, last checkpoint)
        self.eval_s = self.sample_s = self.save_s = 0.0  # seconds of the last evaluation, its text sample, checkpoint
        if resume:
            self._resume(start)
            self._keep_or_reset_budget(saved.train)
        else:
            if init_from:
                ckpt.load_weights(self.model, start)
            if not t.max_time:
                self._set_step_budget()
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
        if self.tokenizer.hash != manifest["tokenizer_hash"] or self.tokenizer.vocab_size != manifest["vocab_size"]:
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
        saved = ckpt.read_progress(folder, {"tokenizer_hash": PROGRESS["tokenizer_hash"]})["tokenizer_hash"]
        if saved != self.tokenizer.hash:
            raise TinyGPTError(
                f"the data in {self.data_dir} was tokenized with another tokenizer than the checkpoint {folder} "
                f"(hash {self.tokenizer.hash} vs {saved}): prepare it with --tokenizer-from {folder}"
            )

    def _decay_frac(self) -> float | None:
        return self.cfg.train.decay_frac if self.cfg.train.schedule == "wsd" else None

    def _set_step_budget(self) -> None:
        self.max_steps = steps_for_tokens(self.cfg.train, self.tokens_per_step)
        self.decay_start = wsd_decay_start(self.cfg.train, self.max_steps)
        t = self.cfg.train
        if t.short_block_size and self.decay_start >= self.max_steps:
            raise TinyGPTError(
                f"config: train.short_block_size: no step of {self.max_steps:,} would train on full windows (they start "
                f"with the decay, train.decay_frac {t.decay_frac:g} of the steps: none): raise train.decay_frac or the budget"
            )

    def _keep_or_reset_budget(self, saved: TrainConfig) -> None:
        """Keep the resumed run's budget and its decisions, so its schedule is the one it started
        with; a budget changed on the command line is resolved again (see EPILOG)."""
        if all(getattr(saved, k) == getattr(self.cfg.train, k) for k in BUDGET_KEYS):
            return
        if not self.cfg.train.max_time:
            self.budget = None
            self._set_step_budget()
            return
        decisions = self.budget.decisions if self.budget else []
        self.budget = TimeBudget(parse_duration(self.cfg.train.max_time), self._decay_frac(), decisions)
        self.max_steps = None  # calibrated again in fit(); a decay already started goes on

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
                "decay_start": self.decay_start,
                "time_budget": self.budget.state_dict() if self.budget else None,
                "tokens": self.tokens,
                "elapsed_s": self.elapsed_now(),
                **self.run.state_dict(),
                "grad_scaler": self.scaler.state_dict(),
                "world_size": self.dist.world_size,
                "tokenizer_hash": self.tokenizer.hash,
                "data": str(self.data_dir.resolve()),
            },
        }

    def _resume(self, folder: Path) -> None:
        """Take the state of a checkpoint folder; raises TinyGPTError naming what does not fit or is damaged."""
        state = ckpt.read_training_state(folder, self.dist.rank, self.dist.world_size, PROGRESS)
        if state["model"].keys() != self.model.upgraded(state["model"]).keys():  # its optimizer state holds the old parameters
            raise TinyGPTError(
                f"{folder} was written by an older tinygpt (one fused q/k/v matrix): it cannot be resumed, "
                "but a new run can start from its weights with --init-from"
            )
        ckpt.check_weights(self.model, state["model"], folder)
        try:
            self.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # hand-edited or damaged files
            raise TinyGPTError(f"{folder} cannot be resumed: its optimizer, random or loader state is damaged ({e!r})") from None

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rank"]["rng"], self.device)
        self.loader.load_state_dict(state["rank"]["loader"])
        p = state["progress"]
        self.step, self.max_steps, self.tokens = p["step"], p["max_steps"], p["tokens"]
        self.elapsed = p["elapsed_s"] - (self.clock() - self.session_start)  # elapsed_now() goes on from the saved figure
        self.decay_start = p.get("decay_start")
        if self.budget and p.get("time_budget"):  # replay the decisions taken before the checkpoint
            self.budget = TimeBudget(self.budget.seconds, self.budget.decay_frac, p["time_budget"]["decisions"])
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
        error, start = None, self.clock()
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
        if not best:
            self.save_s = self.clock() - start

    # ------------------------------------------------------------ one step

    def train_step(self) -> dict:
        """One optimizer step; returns its loss, bits per byte, learning rate, gradient norm and whether to stop."""
        t = self.cfg.train
        lr = lr_at(self.step, t, self.max_steps, self.decay_start)
        self.optimizer.set_lr(lr)
        # Summed over micro-batches and (below) processes: loss, target bytes, stop requests, and
        # rank 0's elapsed budget seconds, so that every process takes the same budget decisions.
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        short = self.short_windows
        for micro in range(t.grad_accum):
            x, y = self.loader.next_batch(short)
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
        totals[3] = self.elapsed_now() if self.dist.is_main else 0.0
        loss_sum, n_bytes, stop_votes, elapsed_s = all_reduce_sum(totals).tolist()
        loss = loss_sum / (t.grad_accum * self.dist.world_size)
        if not math.isfinite(loss):
            last_good = self.run.latest()
            raise TinyGPTError(
                f"the loss is {loss} at step {self.step + 1}: lower --train.lr (now {t.lr:g}), "
                "keep --train.grad_clip on (e.g. 1.0) or try --train.dtype float32; "
                f"the last good checkpoint is {last_good or 'none (no checkpoint was written yet)'}"
            )
        self.optimizer.unscale_(self.scaler)  # the gradient norm is about the true gradients
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        else:  # measure only: clip_grad_norm_ with an infinite bound would still multiply every gradient by 1
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        self.optimizer.step(self.scaler)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": loss,
            "bpb": bits_per_byte(loss * self.tokens_per_step, n_bytes),
            "lr": lr,
            "grad_norm": grad_norm,
            "stop": stop_votes > 0,  # decided together, so every process saves and stops at the same step
            "elapsed_s": elapsed_s,  # rank 0's, before the optimizer's update
        }

    @property
    def short_windows(self) -> bool:
        """Whether the next step trains on windows of train.short_block_size tokens: until the decay starts."""
        return self.cfg.train.short_block_size > 0 and (self.decay_start is None or self.step < self.decay_start)

    def elapsed_now(self) -> float:
        """Seconds of the budget spent: the sessions before this one, and this one since it started."""
        return self.elapsed + self.clock() - self.session_start

    def evaluate(self, every_window: bool = False) -> dict:
        """Validation loss and bits per byte: the fixed, evenly spread sample of train.eval_windows
        windows, or every window of the split (`every_window`, the run's result)."""
        return evaluate(
            self.model,
            self.val_shards,
            self.token_bytes,
            block_size=self.cfg.model.block_size,
            batch_size=self.cfg.train.batch_size,
            max_windows=0 if every_window else self.cfg.train.eval_windows,
            device=self.device,
            autocast=self.autocast,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def calibrate(self) -> None:
        """The time budget's first estimate of the final step: time a few steps and one evaluation, then undo them.

        The steps run on a snapshot of the whole state, restored afterwards, so the run
        proper starts exactly as it would have. The calibration's own time counts against
        the budget. Rank 0's figures are used by every process. Before the decay of a run with
        train.short_block_size, full-length steps are timed too: their cost over the short ones
        is what the decay decision scales its estimate by.
        """
        snapshot = copy.deepcopy(self.state_dict())
        self.max_steps = self.step + 2 * (CALIBRATION_STEPS + 1)  # any budget will do for timing; the snapshot restores it
        per_step = self._time_steps()
        decay_step_cost = 1.0
        if self.cfg.train.short_block_size and self.decay_start is None:
            self.decay_start = self.step  # the steps from here on train on full windows
            decay_step_cost = self._time_steps() / per_step
        start = self.clock()
        self.evaluate()
        self.eval_s = self.clock() - start
        start = self.clock()
        if self.dist.is_main and self.cfg.train.sample_tokens:  # as every evaluation does
            self.sample_text()
        self.sample_s = self.clock() - start
        per_step += (self.eval_s + self.sample_s) / self.cfg.train.eval_interval
        elapsed = self.elapsed
        self.load_state_dict(snapshot)
        self.elapsed = elapsed  # the calibration's time stays spent
        per_step = broadcast_from_main(per_step, self.device)
        decay_step_cost = broadcast_from_main(decay_step_cost, self.device)
        self._measure_end()
        self.max_steps = self.budget.calibrate(self.step, self.elapsed_now(), per_step, self.end_s, decay_step_cost)

    def _time_steps(self) -> float:
        """Seconds per training step, the mean of CALIBRATION_STEPS after one untimed step
        (compilation, memory allocation, caches)."""
        self.train_step()
        self._synchronize()
        start = self.clock()
        for _ in range(CALIBRATION_STEPS):
            self.train_step()
        self._synchronize()
        return (self.clock() - start) / CALIBRATION_STEPS

    def _measure_end(self) -> None:
        """What the end of the run will take, from the last evaluation, text sample and checkpoint: the
        full validation pass, the last checkpoint and the final sample. Rank 0's figure, on every process."""
        sampled = min(self.cfg.train.eval_windows or self.val_windows, self.val_windows)
        end_s = self.eval_s * self.val_windows / sampled + self.save_s + self.sample_s
        self.end_s = broadcast_from_main(end_s, self.device)

    def _follow_budget(self, elapsed_s: float, evaluated: bool) -> None:
        """Take the time budget's decisions due after this step (all processes alike: rank 0's clock)."""
        self.budget.update(self.step, elapsed_s, self.end_s, evaluated)
        self.max_steps, self.decay_start = self.budget.max_steps, self.budget.decay_start

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ the loop

    def fit(self) -> int | None:
        """Train until the step budget is spent or a stop signal arrives; return that signal's number (None: finished)."""
        t = self.cfg.train
        main = self.dist.is_main
        if self.max_steps is None:
            self.calibrate()
            self._print(f"time budget {t.max_time}: measured speed gives {self.max_steps:,} steps in all (first estimate)")
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

                bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=False, disable=None)
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
                evaluated = self.step % t.eval_interval == 0 or self.step == self.max_steps
                if evaluated:
                    self._evaluate(metrics, bar)
                if self.budget:
                    elapsed_s = broadcast_from_main(self.elapsed_now(), self.device) if evaluated else out["elapsed_s"]
                    self._follow_budget(elapsed_s, evaluated)
                    if bar:
                        bar.total = self.max_steps
                if self.run.should_save(self.step, final=self.step == self.max_steps or out["stop"]):
                    self.save()
                if out["stop"]:
                    stopped_by = self.stop_signal or signal.SIGTERM  # or the signal went to another process
                    self._print(f"stopped by signal {stopped_by} at step {self.step}; resume with --resume auto")
                    return stopped_by
            result = self.evaluate(every_window=True)  # the run's result: every validation window
            if metrics:
                metrics.write("result", self.step, loss=result["loss"], bpb=result["bpb"], tokens=self.tokens)
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            if bar:
                bar.close()
            if metrics:
                metrics.close()
        if main:
            self._finish(session, result)
        return None

    def _evaluate(self, metrics: Metrics | None, bar=None) -> None:
        start = self.clock()
        result = self.evaluate()
        self.eval_s = self.clock() - start
        self._measure_end()
        best = self.run.update_best(self.step, result["bpb"])
        if best:
            self.save(best=True)
        if metrics:
            metrics.write("eval", self.step, loss=result["loss"], bpb=result["bpb"], tokens=self.tokens)
            if self.cfg.train.sample_tokens:
                start = self.clock()
                metrics.sample(self.step, result["bpb"], self.sample_text())
                self.sample_s = self.clock() - start
            self._print(
                f"step {self.step}: val loss {result['loss']:.4f} | val bpb {result['bpb']:.4f}"
                + ("" if result["exact"] else f" (estimate: {result['windows']} windows spread over the split)")
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

    def sample_text(self) -> str:
        """train.sample_tokens of text from the model as it is now: a new document (after an end-of-text
        token), temperature 1.0, seed train.seed. The draws come from the sample's own generator,
        so the training's random streams, and an exact resume, are untouched."""
        from .generate import Sampler

        t = self.cfg.train
        sampler = Sampler(self.model, self.tokenizer, self.device)  # the engine's steps leave the model in its own mode
        return sampler.generate("", max_new_tokens=t.sample_tokens, temperature=1.0, seed=t.seed, stop_at_eot=False)

    def _finish(self, session: StepTimer, result: dict) -> None:
        """The end of a run: a sample of text (the samples timeline's last), the loss curve and a summary
        with `result`, the bits per byte over the whole validation split (best val bpb is the sampled windows')."""
        t = self.cfg.train
        if t.sample_tokens:
            print(f"--- sample ({t.sample_tokens} tokens, temperature 1.0) ---\n{self.sample_text()}\n---")
        if t.schedule == "wsd" and (self.decay_start is None or self.decay_start >= self.step):
            short = f", and every step trained on windows of {t.short_block_size}" if t.short_block_size else ""
            print(f"note: the run ended before its learning-rate decay started (train.decay_frac {t.decay_frac:g}){short}")
        try:
            plot = plot_run(self.run.folder)
        except OSError as e:  # the run is finished and saved: a picture is no reason to fail it
            plot = f"not drawn ({e.strerror}: {e.filename}; 'tinygpt plot {self.run.folder}' draws it)"
        best = f"{self.run.best_val_bpb:.4f}" if self.run.best_val_bpb is not None else "n/a"
        print(
            f"done: {self.step:,} steps, {self.tokens:,} tokens in {_duration(self.elapsed_now())} "
            f"({session.tokens_per_s(self.tokens_per_step):,.0f} tokens/s this session); best val bpb {best} "
            f"(sampled windows)\nresult: val bpb {result['bpb']:.4f} over the whole validation split "
            f"({result['tokens']:,} tokens, {result['bytes']:,} bytes), final weights\n"
            f"checkpoint {self.run.step_folder(self.step)} | best {self.run.best} | curve {plot}"
        )

    def _describe(self) -> str:
        m, t = self.cfg.model, self.cfg.train
        what = f"resuming at step {self.step:,}" if self.resumed_from is not None else "starting"
        return (
            f"{what}: {m.family} model, {self.model.num_params():,} parameters, {m.n_layer} layers x {m.n_embd} wide, "
            f"context {m.block_size}{self._short_note()}, {self.tokenizer.kind} tokenizer of {self.tokenizer.vocab_size:,} | "
            f"{self.max_steps:,} steps of {self.tokens_per_step:,} tokens ({t.batch_size} x {m.block_size} x "
            f"{t.grad_accum} accum x {self.dist.world_size} processes) | {self.device}, {str(self.dtype).removeprefix('torch.')}{self._dtype_note()}"
        )

    def _dtype_note(self) -> str:
        if self.dtype != torch.bfloat16 or self.device != "cpu" or cpu_multiplies_bfloat16():
            return ""
        return " (emulated: this CPU has no bfloat16 products; --train.dtype auto uses float32 here, which is faster)"

    def _short_note(self) -> str:
        if not self.short_windows:
            return ""
        batch, short = self.loader.shape(short=True)
        until = "the decay starts" if self.decay_start is None else f"step {self.decay_start:,}, where the decay starts"
        return f" (windows of {short}, {batch} a batch, until {until})"

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
                raise interrupt_for(signum)
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
--train.max_iters. A time budget counts from the process's start to its exit (data preparation,
evaluations, checkpoints and the end of the run included). A few timed steps give a first
estimate of the final step; it is re-estimated at every evaluation from the measured seconds
per step; with --train.schedule wsd the decay starts when the elapsed time reaches
1 - --train.decay_frac of the budget. Every decision is saved in the checkpoints, so a resumed
run replays those taken before its checkpoint and counts the time of the sessions before it.
A resumed run given another budget keeps the decisions taken so far (a decay already started
goes on), times a few steps again and spends what is left of the new budget (a budget smaller
than the time already spent: one more step, then the end). A step or token budget changed on resume is a new
final step, and the schedule stretches or shrinks to it.

checkpoints: RUN/checkpoints/step-NNNNNNNNNN/ every --train.ckpt_interval steps and at the
end (the newest --train.keep_last kept; 0 keeps all), RUN/best/ for the best validation bits
per byte. A checkpoint that cannot be written (full disk) stops the run; the previous stays.
SIGINT (Ctrl-C) or SIGTERM: a checkpoint after the current step, then exit code 130 or 143
(128 + the signal); a second signal quits at once. Exact resume needs the same number of
processes, and on CPU the same --train.threads.

train bpb is the bits per byte of each logged batch; val bpb covers a fixed sample of
--train.eval_windows windows spread evenly over the validation split (0 = all of it), which
also picks RUN/best/; at the end the whole split is scored: the run's result.

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
    record = run.read_start() if args.resume == "auto" and resume is None else None
    if record:  # stopped before its first checkpoint: it starts again as it was asked
        cfg, data, init_from = _restart(run, record, args, overrides)
    else:
        init_from = find_checkpoint(args.init_from) if args.init_from else None
        if args.config is None and (resume or init_from):  # the checkpoint's own config, with the command line's changes
            cfg = load_config(None, overrides, base=ckpt.read_config(resume or init_from).to_dict())
        else:
            cfg = load_config(args.config or "tiny", overrides)
        data = args.data or (ckpt.read_progress(resume, {"data": PROGRESS["data"]})["data"] if resume else None)
    start = resume or init_from
    run = run or Run(Path("runs") / Path(args.config or "tiny").stem)
    if not resume and run.latest():
        raise TinyGPTError(
            f"{run.folder} already holds checkpoints: continue it with --resume auto, or choose another --out"
        )
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
        trainer = Trainer(cfg, data_dir, run.folder, resume=resume, init_from=init_from, dist=dist, started=PROCESS_START)
        stopped_by = trainer.fit()
        barrier()  # nobody tears the process group down while rank 0 still writes the sample and plot
    finally:
        cleanup_distributed()
    return 128 + stopped_by if stopped_by else 0


def _restart(run: Run, record: dict, args: argparse.Namespace, overrides: dict[str, str]) -> tuple[Config, str, Path | None]:
    """The config (with the command line's overrides), data and starting weights of a run stopped
    before its first checkpoint, from its start record. A --config or --data given again must agree
    with the record: raises TinyGPTError saying what differs."""
    cfg = load_config(None, overrides, base=record["config"])
    if args.config:
        diffs = differences(cfg, load_config(args.config, overrides))
        if diffs:
            raise TinyGPTError(
                f"--config {args.config} differs from the config {run.start} records (recorded -> given): "
                f"{', '.join(diffs)}; leave --config out to start the run again as it was"
            )
    if args.data and Path(args.data).resolve() != Path(record["data"]):
        raise TinyGPTError(
            f"--data {args.data} differs from the data {run.start} records ({record['data']}): "
            "leave --data out, or start a new run with another --out"
        )
    return cfg, record["data"], Path(record["init_from"]) if record["init_from"] else None
