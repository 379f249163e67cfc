"""The one training loop shared by segmentation and classification (2.5D and 3D). What is
trained on, the loss and the validation score are the caller's; the step (mixed precision,
out-of-memory handling), AdaBN, validation with early stopping and checkpoints are hooks
(:mod:`.hooks`, :mod:`.checkpoints`)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from MedTransferLib.core import distributed
from MedTransferLib.core.device import memory_format
from MedTransferLib.training.hooks import AdaBNFirst, LoopState, TrainStep


def batches(next_batch: Callable, n: int, device: torch.device):
    """``n`` calls of ``next_batch()``, in order. On a GPU one thread makes the next batch while
    the card trains on this one (sampling from the cached arrays and the upload cost the host
    milliseconds a step that would otherwise leave the card idle; a thread, not a process:
    numpy's crops and torch release the GIL, and nothing is copied between processes). Exactly
    ``n`` calls per epoch, in the same order, so the random generators stand where they would
    without it when the epoch's state is saved. On the CPU the cores are busy training: no thread."""
    if device.type != "cuda":
        for _ in range(n):
            yield next_batch()
        return
    from concurrent.futures import ThreadPoolExecutor

    index = torch.cuda.current_device()   # per thread in CUDA: the worker makes its batches on ours
    with ThreadPoolExecutor(1, thread_name_prefix="medtransfer-batches",
                            initializer=torch.cuda.set_device, initargs=(index,)) as pool:
        pending = pool.submit(next_batch) if n else None
        for i in range(n):
            batch = pending.result()
            pending = pool.submit(next_batch) if i + 1 < n else None
            yield batch


def fit(model, strategy, opt, config, device: torch.device, next_batch: Callable, loss_fn: Callable,
        reporter, metric: str = "val_score", hooks=()) -> tuple[list, dict]:
    """Train ``config.epochs × config.steps_per_epoch`` steps; returns ``(history, metrics)``.

    ``next_batch()`` gives ``(x, y)`` ready for the network (on the CPU, or already on the
    device; on a GPU the next is made while the card runs this one: :func:`batches`);
    ``metric``: the validation score's name; ``hooks``: :class:`~.hooks.Hook` objects (``None``
    entries are skipped), e.g. ``[AdaBNFirst(...), EarlyStopping(...), Checkpoints(...)]`` —
    their ``epoch_end`` runs in this order. The best weights (with validation) are restored at
    the end."""
    hooks = [h for h in hooks if h is not None]
    if getattr(strategy, "adapt_bn_first", False) and not any(isinstance(h, AdaBNFirst) for h in hooks):
        raise ValueError("this strategy re-estimates BatchNorm statistics first: give an AdaBNFirst hook")
    s = LoopState(model, strategy, opt, reporter, metric, resumed=any(h.resuming for h in hooks))
    for h in hooks:
        h.start(s)
    train_step = TrainStep(model, loss_fn, opt.optimizer, device)
    fmt = memory_format(device, getattr(model, "spatial_dims", 2))
    t_start = time.monotonic()
    stopped_early = False
    for epoch in range(s.first_epoch, config.epochs + 1):
        s.epoch = epoch
        joining = strategy.on_epoch(epoch, model)
        if joining:
            opt.add_groups(joining)
            reporter.emit("note", message=f"epoch {epoch}: " + ", ".join(
                f"{g['name']} unfreezes ({sum(p.numel() for p in g['params'])} parameters, "
                f"lr {g['initial_lr']:.2e})" for g in joining))
        strategy.train_mode(model)
        losses = []
        for x, y in batches(next_batch, config.steps_per_epoch, device):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if fmt is not None and x.ndim == (5 if fmt is torch.channels_last_3d else 4):
                x = x.contiguous(memory_format=fmt)
            loss = train_step(x, y)
            opt.schedule.step()
            distributed.average_buffers(model)
            s.step += 1
            losses.append(float(loss.detach()))
            total, eta = s.remaining(opt.total, time.monotonic() - t_start)
            reporter.emit("step", epoch=epoch, step=s.step, steps_total=total, loss=losses[-1],
                          lr=opt.optimizer.param_groups[-1]["lr"], eta_s=eta)
            if any([h.step_end(s) for h in hooks]):
                break
        s.record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        s.history.append(s.record)
        for h in hooks:
            h.epoch_end(s)
        reporter.emit("epoch", epoch=epoch, epochs=config.epochs, train_loss=s.record["train_loss"],
                      **{metric: s.record.get(metric)}, eta_s=s.remaining(opt.total, time.monotonic() - t_start)[1])
        if any(h.should_stop(s) for h in hooks):
            stopped_early = True
            break
    if s.best_state is not None:
        model.load_state_dict(s.best_state)
    for h in hooks:
        h.end(s)
    metrics = {f"best_{metric}": s.best if s.validating else None, "epochs_run": len(s.history),
               "steps_run": s.step, "stopped_early": stopped_early,
               "train_seconds": round(time.monotonic() - t_start, 1)}
    return s.history, metrics
