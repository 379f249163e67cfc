"""The parts of a training run around the loop, each testable alone (the idea of MONAI's
handlers): the training step with mixed precision and out-of-memory handling, AdaBN before the
first epoch, validation with early stopping, and (in :mod:`.checkpoints`) the resumable state.

The loop (:func:`.loop.fit`) owns a :class:`LoopState` and calls every hook's ``start`` once,
``epoch_end`` after each epoch (in the order given: validation before the checkpoint, so the
checkpoint holds the epoch's score) and ``should_stop`` after the epoch's event."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from MedTransferLib.core import distributed
from MedTransferLib.core.device import autocast


@dataclass
class Validation:
    score: float                                # higher is better
    record: dict = field(default_factory=dict)  # stored in the epoch's history entry
    event: dict = field(default_factory=dict)   # extra fields of the 'validation' event


@dataclass
class LoopState:
    """What the loop and its hooks share."""

    model: torch.nn.Module
    strategy: object
    opt: object                   # training.optim.Optimisation
    reporter: object
    metric: str = "val_score"     # the validation score's name in records and events
    epoch: int = 0
    first_epoch: int = 1
    step: int = 0
    history: list = field(default_factory=list)
    record: dict = field(default_factory=dict)   # the current epoch's history entry
    best: float = -math.inf
    best_state: dict | None = None
    stale: int = 0                # epochs since the score last improved
    resumed: bool = False         # restored from a checkpoint (AdaBN already in the weights)
    validating: bool = False
    aside: float = 0.0            # seconds hooks spent beside training (the live preview)
    after: float = 0.0            # seconds hooks will spend once training ends (the last preview)
    steps_due: int | None = None  # a time budget's estimate of the steps the run will make
    ends_in: float | None = None  # and of the seconds until the job ends
    stopping: bool = False        # a hook ended training at this step (hooks after it see it)

    def remaining(self, planned: int, elapsed: float) -> tuple[int, float]:
        """``(steps in all, seconds left)`` for the progress events: the ``planned`` schedule at
        the pace so far (``elapsed`` seconds for the steps made); where a time budget will end the
        run first, its estimated steps and the seconds until the job ends."""
        total = planned if self.steps_due is None else max(self.step, min(planned, self.steps_due))
        eta = elapsed / max(self.step, 1) * (total - self.step)
        if self.ends_in is not None:
            eta = max(self.ends_in, 0.0) if total < planned else min(eta, max(self.ends_in, 0.0))
        return total, round(eta, 1)


class Hook:
    resuming = False   # restores a saved run at start

    def start(self, s: LoopState) -> None: ...

    def epoch_end(self, s: LoopState) -> None: ...

    def should_stop(self, s: LoopState) -> bool:
        return False

    def step_end(self, s: LoopState) -> bool:
        """After every step; True ends the run now (the epoch is closed and scored as usual)."""
        return False

    def end(self, s: LoopState) -> None:
        """Once, after the last epoch, with the best validated weights restored."""


class SmallBatchesFirst(Hook):
    """The first ``epochs`` epochs train on batches of ``small`` samples, the rest on the task's
    own size: ``set_batch(n)`` sets the size the task's next batches have. Early in a run more,
    noisier steps teach a new decoder more per second than fewer exact ones (Smith et al. 2018,
    "Don't decay the learning rate, increase the batch size"); on a CPU a step's time follows its
    batch, so the first live previews come from about twice the steps. Measured in
    bench/interactive.py (bench/RESULTS.md). A resumed run takes up where its epoch was."""

    def __init__(self, epochs: int, small: int, full: int, set_batch: Callable[[int], None]):
        self.epochs, self.small, self.full, self.set_batch = epochs, small, full, set_batch

    def start(self, s: LoopState) -> None:
        self.set_batch(self.small if s.first_epoch <= self.epochs else self.full)

    def epoch_end(self, s: LoopState) -> None:
        if s.epoch >= self.epochs:
            self.set_batch(self.full)


RECENT = 10   # steps a time budget averages to estimate the work after training


class TimeBudget(Hook):
    """Keeps a run within ``seconds``: from ``since`` (a ``clock`` reading, the job's start — the
    command's, torch loading included; ``None``: the loop's start) to the package written.
    Training ends once the next step (as long as the longest seen so far), closing the epoch (its
    validation and checkpoint, as long as the longest epoch end seen) and the work after training
    (``finish_steps`` steps' worth at the average of the last ``RECENT``: the package's reference
    statistics — not the longest step, which is the first one, slowed by its allocations, nor the
    average of all, which a first run's half batches make cheaper than a step is by then; and the
    last live preview, ``LoopState.after``) would not fit in what is left. The run still writes a
    valid package.

    ``fit_schedule``: every ``every`` steps, fit the learning-rate schedule into the steps the
    budget leaves at the average pace, so a run cut short still ends at a small rate. Used when a
    run continues a trained model, where it measured better (bench/interactive.py,
    bench/RESULTS.md); a first run keeps the planned schedule, whose new decoder learns at the full
    rate for as long as the budget allows."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, every: int = 10,
                 fit_schedule: bool = False, since: float | None = None, finish_steps: float = 0.0,
                 exit_seconds: float = 0.0):
        self.seconds, self.clock, self.every, self.fit_schedule = float(seconds), clock, every, fit_schedule
        self.since, self.finish_steps, self.exit_seconds = since, float(finish_steps), float(exit_seconds)
        self.spent = False

    def start(self, s: LoopState) -> None:
        self.t0 = self.last = self.clock()
        if self.since is None:
            self.since = self.t0
        self.longest = self.closing = 0.0
        self.first_step = s.step
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.aside = s.aside

    def _own(self, s: LoopState, now: float) -> float:
        """Seconds since the last mark, less what other hooks spent meanwhile (a preview)."""
        aside, self.aside = s.aside - self.aside, s.aside
        own, self.last = now - self.last - aside, now
        return own

    def left(self, now: float, after: float = 0.0) -> float:
        """Seconds left for training at ``now``: the budget less the time spent and kept back
        (``after``: what other hooks will spend after training, ``LoopState.after``)."""
        return self.seconds - (now - self.since) - self.kept(after)

    def kept(self, after: float = 0.0) -> float:
        """Seconds kept back from training: closing the epoch, the package, ``after`` (the last
        preview) and the exit."""
        return self.closing + self.finish_steps * self.average() + after + self.exit_seconds

    def average(self) -> float:
        """The average of the last ``RECENT`` steps (their own time: previews and epoch ends not
        counted); 0 before any."""
        return sum(self.recent) / max(1, len(self.recent))

    def step_end(self, s: LoopState) -> bool:
        now = self.clock()
        own = self._own(s, now)
        self.longest = max(self.longest, own)
        self.recent.append(own)
        done = s.step - self.first_step
        pace, left = (now - self.t0) / done, max(self.left(now, s.after), 0.0)
        if self.fit_schedule and done % self.every == 0:
            s.opt.fit_horizon(s.step + left / pace)
        s.steps_due, s.ends_in = s.step + int(left / pace), self.seconds - (now - self.since)
        if left >= self.longest:
            return False
        self.spent = s.stopping = True
        kept = self.kept(s.after)
        s.reporter.emit("note", message=f"time budget: stopping after step {s.step} ({now - self.since:.0f} of "
                                        f"{self.seconds:g} s; ~{kept:.0f} s kept to close the epoch, write "
                                        f"the model and exit)")
        return True

    def epoch_end(self, s: LoopState) -> None:
        # the hooks before this one closed the epoch (validation, checkpoint): its cost is kept back
        self.closing = max(self.closing, self._own(s, self.clock()))

    def should_stop(self, s: LoopState) -> bool:
        return self.spent


class TrainStep:
    """One optimisation step: forward under autocast (bf16, or fp16 with a gradient scaler, on
    CUDA; nothing on the CPU), the loss in float32, backward, gradients averaged across processes
    (torchrun), the optimizer step. Out of memory → :class:`~MedTransferLib.core.errors.OutOfMemory`
    naming the batch, with the gradients dropped and CUDA's cache emptied so the device stays
    usable (``--oom-retry`` then halves the batch: :mod:`.run`)."""

    def __init__(self, model, loss_fn: Callable, optimizer, device: torch.device):
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        try:
            with autocast(self.device):
                out = self.model(x)
            loss = self.loss_fn(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.average_gradients(self.model)    # torchrun: every process, the same step
        except torch.OutOfMemoryError:
            from MedTransferLib.core.errors import OutOfMemory

            out = loss = None
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()   # leave the GPU usable (Slicer, the next run)
            raise OutOfMemory(len(x), tuple(x.shape), str(self.device)) from None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


class AdaBNFirst(Hook):
    """For a strategy that re-estimates BatchNorm statistics before training (``adabn``):
    the encoder's running statistics from ``inputs()`` (label-free batches of the training
    images). Skipped on resume: the statistics are in the saved weights."""

    def __init__(self, inputs: Callable, device: torch.device):
        self.inputs, self.device = inputs, device

    def start(self, s: LoopState) -> None:
        if s.resumed or not getattr(s.strategy, "adapt_bn_first", False):
            return
        from MedTransferLib.shift.adabn import adapt_bn
        from MedTransferLib.training.strategies import encoder_stages

        n = adapt_bn(s.model, (x.to(self.device) for x in self.inputs()), encoder_stages(s.model))
        s.reporter.emit("note", message=f"AdaBN: re-estimated the running statistics of {n} encoder "
                                        f"BatchNorm layers on the training images (no labels used)")


class EarlyStopping(Hook):
    """Scores the model after every epoch (``validate()``), keeps the best weights (restored by
    the loop at the end), calls ``on_best(history, epoch, score)`` at each improvement (e.g. to
    write a checkpoint package) and stops after ``patience`` epochs without one."""

    def __init__(self, validate: Callable[[], Validation], patience: int,
                 on_best: Callable[[list, int, float], None] | None = None):
        self.validate, self.patience, self.on_best = validate, patience, on_best

    def start(self, s: LoopState) -> None:
        s.validating = True

    def epoch_end(self, s: LoopState) -> None:
        v = self.validate()
        improved = v.score > s.best
        s.record.update({s.metric: v.score, **v.record})
        s.reporter.emit("validation", epoch=s.epoch, **{s.metric: v.score}, best=improved,
                        train_loss=s.record["train_loss"], **v.event)
        if improved:
            s.best, s.stale = v.score, 0
            s.best_state = {k: t.detach().cpu().clone() for k, t in s.model.state_dict().items()}
            if self.on_best is not None:
                self.on_best(list(s.history), s.epoch, s.best)
        else:
            s.stale += 1

    def should_stop(self, s: LoopState) -> bool:
        if s.stale < self.patience:
            return False
        name = s.metric.replace("val_", "validation ").replace("_", " ")
        s.reporter.emit("note", message=f"early stop: {name} did not improve for {self.patience} epochs "
                                        f"(best {s.best:.3f})")
        return True
