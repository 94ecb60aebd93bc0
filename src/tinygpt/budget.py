"""A wall-clock training budget, turned into step decisions as the run goes.

A budget of B seconds counts from the `tinygpt train` process's start to its exit: imports,
calibration, evaluations, checkpoints and the end of the run (the final full validation pass,
the last checkpoint, the sample and the plot) all spend it. A step count is decided, not
measured once:

- calibration: before the first step, a few timed steps give the first estimate of the final step
  (and, for a short-to-long curriculum, `decay_step_cost`: a step of the decay over one before it);
- estimate: at every evaluation, the seconds per step measured since the previous decision
  (evaluations and checkpoints in between included) re-estimate the final step, leaving
  `end_s` (the measured cost of finishing) free at the end;
- decay: under the warmup-stable-decay schedule, the learning rate's decay starts at the first
  step after which the elapsed time reaches (1 - decay_frac) of the budget; the final step is
  re-estimated then too (with a curriculum, whose decay steps cost more, again after
  DECAY_CHECK_STEPS of them: the calibration timed only a few);
- out of time: after any step at which the time left no longer covers `end_s`, that step is the last.

Each decision is a JSON object stored, in order, in the run's checkpoint progress when it is
taken. A resumed run replays the decisions stored before its checkpoint (its state is that of
the last one) and takes later ones from its own clock, with the elapsed time of the sessions
before it added: with a clock that advances the same amount per step, a straight run and a
killed-and-resumed one take the same decisions and so the same steps.
"""

from __future__ import annotations

import math

DECAY_CHECK_STEPS = 20  # a curriculum's decay re-estimates the final step after this many of its own steps


class TimeBudget:
    """The decisions of a run with a wall-clock budget of `seconds`.

    decay_frac: the share of the budget the learning-rate decay takes (None: no decay decision,
    as for the cosine schedule, which follows the estimated final step). decisions: those taken
    before a checkpoint (from `state_dict`), replayed on resume.
    """

    def __init__(self, seconds: float, decay_frac: float | None, decisions: list[dict] | None = None):
        self.seconds = seconds
        self.decay_frac = decay_frac
        self.decisions: list[dict] = list(decisions or [])

    @property
    def max_steps(self) -> int | None:
        """The final step as last decided; None before the calibration."""
        return self.decisions[-1]["max_steps"] if self.decisions else None

    @property
    def decay_step_cost(self) -> float:
        """The last calibration's cost of a decay step over a step before it (1 unless a curriculum
        makes them differ: train.short_block_size)."""
        calibrations = [d for d in self.decisions if d["why"] == "calibration"]
        return calibrations[-1].get("decay_step_cost", 1.0) if calibrations else 1.0

    @property
    def decay_start(self) -> int | None:
        """The step at which the learning-rate decay started; None while it has not."""
        return self.decisions[-1]["decay_start"] if self.decisions else None

    def calibrate(
        self, step: int, elapsed_s: float, seconds_per_step: float, end_s: float, decay_step_cost: float = 1.0
    ) -> int:
        """The first estimate of the final step, from timed steps (at least one more step); returns it.
        decay_step_cost: the measured cost of a step of the decay over one before it."""
        return self._decide("calibration", step, elapsed_s, seconds_per_step, end_s, at_least=1, cost=decay_step_cost)

    def update(self, step: int, elapsed_s: float, end_s: float, evaluated: bool) -> None:
        """After optimizer step `step`, with `elapsed_s` seconds of the budget spent and `end_s` the
        seconds finishing the run would take now: take whatever decision is due (see the module)."""
        last = self.decisions[-1]
        per_step = (elapsed_s - last["elapsed_s"]) / max(1, step - last["step"])
        if self.decay_frac is not None and self.decay_start is None and elapsed_s >= (1 - self.decay_frac) * self.seconds:
            self._decide("decay", step, elapsed_s, per_step, end_s, decay_start=step)
        elif evaluated and step > last["step"] or self._decay_steps_timed(step):
            self._decide("estimate", step, elapsed_s, per_step, end_s)
        if step < self.max_steps and elapsed_s + end_s >= self.seconds:
            self._record("out of time", step, elapsed_s, step, self.decay_start)

    def _decay_steps_timed(self, step: int) -> bool:
        """Whether DECAY_CHECK_STEPS steps of a curriculum's decay have run since it started: their
        own time then corrects the estimate made from the calibration's few timed steps."""
        last = self.decisions[-1]
        return last["why"] == "decay" and step - last["step"] >= DECAY_CHECK_STEPS and self.decay_step_cost != 1.0

    def _decide(
        self, why: str, step: int, elapsed_s: float, per_step: float, end_s: float, decay_start=None, at_least=0, cost=None
    ) -> int:
        """Record the final step that the time left holds at `per_step` seconds a step; `cost`: a new
        decay_step_cost (a calibration's), else the last calibration's."""
        cost = self.decay_step_cost if cost is None else cost
        left = self.seconds - elapsed_s - end_s
        per_step = max(per_step, 1e-9)
        if cost == 1.0 or self.decay_start is not None or self.decay_frac is None:
            steps = left / per_step
        else:  # steps measured before the decay; the decay's share of the time left holds dearer ones
            stable = min(left, max(0.0, (1 - self.decay_frac) * self.seconds - elapsed_s))
            steps = stable / per_step + (left - stable) / (per_step * cost)
        max_steps = step + max(at_least, math.floor(steps))
        self._record(why, step, elapsed_s, max_steps, decay_start if decay_start is not None else self.decay_start)
        if cost != 1.0 and why == "calibration":
            self.decisions[-1]["decay_step_cost"] = cost
        return max_steps

    def _record(self, why: str, step: int, elapsed_s: float, max_steps: int, decay_start: int | None) -> None:
        self.decisions.append(
            {"why": why, "step": step, "elapsed_s": elapsed_s, "max_steps": max_steps, "decay_start": decay_start}
        )

    def state_dict(self) -> dict:
        """JSON for the checkpoint's progress: the budget and every decision so far."""
        return {"seconds": self.seconds, "decisions": self.decisions}
