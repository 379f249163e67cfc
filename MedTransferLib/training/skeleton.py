"""One training run, whatever the task: the skeleton every run follows, and the small seam a task
(segmentation, classification) fills in.

The skeleton copies and checks the settings, makes rank 0 the only one that speaks, seeds, picks
the device, lets the task prepare its data and network, asks the advisor when the strategy is
``auto``, builds the optimiser from the strategy, announces the run, trains with the shared loop
and its hooks (AdaBN, validation with early stopping, checkpoints), and lets the task write the
package. A task never repeats any of that; it says what is specific to it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from MedTransferLib.core import distributed
from MedTransferLib.core.defaults import EXIT_SECONDS
from MedTransferLib.core.device import resolve_device
from MedTransferLib.core.progress import Reporter
from MedTransferLib.package.manifest import Manifest
from MedTransferLib.training.checkpoints import STATE_DIR, Checkpoints
from MedTransferLib.training.config import TrainConfig, TrainResult, seed_everything
from MedTransferLib.training.hooks import (
    AdaBNFirst,
    EarlyStopping,
    SmallBatchesFirst,
    TimeBudget,
    Validation,
)
from MedTransferLib.training.loop import fit
from MedTransferLib.training.optim import Optimisation
from MedTransferLib.training.strategies import get_strategy


class Task:
    """What a task adds to the skeleton. :meth:`prepare` sets ``model`` (on the device),
    ``loss_fn``, ``rngs`` (the numpy generators a checkpoint saves), ``has_validation``,
    ``split_note``, ``patch`` and ``batch_size``; it may set ``small_first``, the batch size of the
    first ``config.small_batch_epochs`` epochs (:class:`~.hooks.SmallBatchesFirst`)."""

    name = "task"
    small_first: int | None = None
    metric = "val_score"        # the validation score's name in events, history and metrics

    def check_config(self, config: TrainConfig) -> None:
        """Refuse settings this task cannot use (before the general checks)."""

    def check_inputs(self, config: TrainConfig) -> None:
        """Refuse unusable inputs, before anything is seeded or built."""

    def prepare(self, config: TrainConfig, device, rng: np.random.Generator, reporter) -> None:
        raise NotImplementedError

    def advise(self, config: TrainConfig) -> tuple[str, str, dict]:
        """``(strategy, reason, record for the manifest)`` for ``--strategy auto``."""
        raise NotImplementedError

    def start_fields(self, config: TrainConfig, device) -> dict:
        """The task's fields of the ``start`` event, before the optimiser's."""
        return {}

    def notes(self, config: TrainConfig, reporter) -> None:
        """Notes after the start event (e.g. about the data or the weights kept)."""

    def manifest(self, config: TrainConfig, device, strategy: dict) -> Manifest:
        raise NotImplementedError

    def next_batch(self):
        raise NotImplementedError

    def set_batch_size(self, n: int) -> None:
        """The size of the batches :meth:`next_batch` gives from now on."""
        self.batch_size = n

    def validate(self) -> Validation:
        raise NotImplementedError

    def adapt_inputs(self):
        """Label-free input batches of the training images (AdaBN)."""
        raise NotImplementedError

    def preview_target(self):
        """What the live preview predicts and writes (:mod:`.preview`)."""
        from MedTransferLib.core.errors import MedTransferError

        raise MedTransferError(f"--preview shows a segmentation while it trains; a {self.name} model has none")

    def on_best(self, out: Path, manifest: Manifest):
        """Called at each validation improvement (``None``: nothing to do)."""
        return None

    volumes: list = []          # the training volumes (:meth:`prepare` sets them)

    def finish_steps(self) -> float:
        """What :meth:`finish` costs, in training steps: an estimate a time budget keeps back.
        The package's reference statistics predict about 56 whole slices (or 20 patches) of each
        training volume, about three steps' worth (2.2 s for one volume beside 0.74-s steps on a
        2-core CPU); writing the package about one, and one more is a margin for the estimates
        (a budgeted first run ended 0.3 s late without it)."""
        return 2.0 + 3.0 * len(self.volumes)

    def finish(self, out: Path, manifest: Manifest, history: list, metrics: dict, device) -> Path:
        """Write the package (rank 0 only) and return its folder."""
        raise NotImplementedError


def _preview(config: TrainConfig, target, device):
    from MedTransferLib.training.preview import DEFAULT_EVERY, Preview

    every = config.preview_seconds
    # a continued model (--from: the panel's Update) is useful already: shown after the first step
    return Preview(config.preview, target, DEFAULT_EVERY["cuda" if device.type == "cuda" else "cpu"]
                   if every is None else every, first=0.0 if config.init_from else None)


def run(task: Task, out, config: TrainConfig | None = None, reporter: Reporter | None = None,
        resume: bool = False) -> TrainResult:
    config = replace(config) if config else TrainConfig()   # a copy: 'auto' is resolved in it
    task.check_config(config)
    config.check()
    main = distributed.is_main()
    reporter = reporter if (reporter and main) else Reporter(stream=None, bar=False)   # rank 0 speaks
    out = Path(out)
    task.check_inputs(config)
    preview = task.preview_target if config.preview else None   # refused before anything runs
    if preview is not None and type(task).preview_target is Task.preview_target:
        preview()
    seed_everything(config.seed)   # the same initial network on every process
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed + distributed.rank())   # each process its own batches
    task.prepare(config, device, rng, reporter)

    advice = None
    if config.strategy == "auto":
        name, reason, advice = task.advise(config)
        config.strategy = name
    strategy = get_strategy(config.strategy)
    opt = Optimisation(task.model, strategy, config)
    info = opt.info
    reporter.emit("start", **task.start_fields(config, device), steps_total=opt.total, patch=task.patch,
                  batch_size=task.batch_size, param_groups=opt.summary(), **info)
    reporter.emit("note", message=task.split_note)
    if advice:
        reporter.emit("note", message=f"strategy auto → {name}: {reason}")
    task.notes(config, reporter)
    if task.small_first:
        reporter.emit("note", message=f"the first {config.small_batch_epochs} epoch(s) train on batches of "
                                      f"{task.small_first}, then {task.batch_size}: twice the steps a second early "
                                      f"on, for earlier useful previews (--small-batch-epochs 0: off)")
    manifest = task.manifest(config, device, {**info, "param_groups": opt.summary(),
                                              **({"advice": advice} if advice else {})})

    history, metrics = fit(task.model, strategy, opt, config, device, task.next_batch, task.loss_fn, reporter,
                           task.metric, [
                               AdaBNFirst(task.adapt_inputs, device),
                               EarlyStopping(task.validate, config.patience, task.on_best(out, manifest) if main else None)
                               if task.has_validation else None,
                               Checkpoints(out / STATE_DIR, task.rngs, resume) if main else None,
                               SmallBatchesFirst(config.small_batch_epochs, task.small_first, task.batch_size,
                                                 task.set_batch_size) if task.small_first else None,
                               TimeBudget(config.max_seconds, fit_schedule=bool(config.init_from),
                                          since=getattr(reporter, "t0", None), finish_steps=task.finish_steps(),
                                          exit_seconds=EXIT_SECONDS)
                               if config.max_seconds else None,
                               _preview(config, preview(), device) if preview is not None and main else None])
    if not main:   # rank 0 writes the package; the others hold the same model and are done
        distributed.barrier()
        return TrainResult(out / "model", metrics, history)
    package = task.finish(out, manifest, history, metrics, device)
    reporter.emit("done", package=str(package), message=f"model written to {package}", **metrics)
    distributed.barrier()
    return TrainResult(package, metrics, history)
