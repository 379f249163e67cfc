"""The one training loop shared by segmentation and classification (2.5D and 3D): optimizer and
schedule from the strategy's parameter groups, AMP on CUDA, per-epoch validation, early stopping,
best weights restored. What is trained on, the loss and the validation score are the caller's."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import distributed
from .device import autocast, memory_format


@dataclass
class Validation:
    score: float                                # higher is better
    record: dict = field(default_factory=dict)  # stored in the epoch's history entry
    event: dict = field(default_factory=dict)   # extra fields of the 'validation' event


def adamw(groups: list[dict], **kw) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA: the same update in one kernel per step
    instead of a chain of per-tensor operations (bench/micro.py --only optimizer: the optimizer
    step 2.8-3.0x faster on the 2.5D network and 2.1-2.2x on the 3D UNet on a 2-core CPU, a few
    ms per step). Other devices, and torch builds without a fused kernel for the device (CPU
    before torch 2.4; Slicer's PyTorch extension may install one), get the default implementation."""
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = bool(devices) and all(_fused_adamw_works(d) for d in devices)
    return torch.optim.AdamW(groups, fused=True, **kw) if fused else torch.optim.AdamW(groups, **kw)


@functools.lru_cache(maxsize=None)
def _fused_adamw_works(device_type: str) -> bool:
    """Whether one fused AdamW step runs on this device type (older torch builds refuse some
    devices when the optimizer is made, newer ones at the first step; a probe finds either)."""
    if device_type not in ("cpu", "cuda"):
        return False
    try:
        probe = torch.zeros(2, device=device_type, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        torch.optim.AdamW([probe], fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment the memory layout of its parameter. Saved moments come back
    contiguous while a channels-last network's weights are not, and torch's fused AdamW walks
    parameter, gradient and moments as if they were laid out alike: without this, a resumed run
    takes silently wrong steps on the CPU (Testing/test_reliability.py's kill -9 test found it)
    and stops with "must have same dtype, device, and layout" on CUDA (bench/gpu_check.sh, H100)."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


class Optimisation:
    """AdamW over the strategy's parameter groups, linear warm-up then cosine decay."""

    def __init__(self, model: torch.nn.Module, strategy, config):
        self.groups = strategy.param_groups(model, config.lr)
        self.optimizer = adamw(self.groups, lr=config.lr, weight_decay=config.weight_decay)
        self.total = config.epochs * config.steps_per_epoch
        warmup = max(1, int(config.warmup_fraction * self.total))
        total = self.total
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        self.info = strategy.describe(model)   # after param_groups: counts what will train

    def summary(self) -> list[dict]:
        return [{"name": g["name"], "lr": g.get("initial_lr", g["lr"]),
                 "parameters": sum(p.numel() for p in g["params"])} for g in self.groups]


    def add_groups(self, groups: list[dict]) -> None:
        """Groups that join mid-run (gradual unfreezing) follow the same schedule from now on."""
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
            factor = self.schedule.lr_lambdas[0](self.schedule.last_epoch)
            base = g["lr"]
            g["lr"] = base * factor
            self.optimizer.add_param_group(g)
            self.schedule.base_lrs.append(base)
            self.schedule.lr_lambdas.append(self.schedule.lr_lambdas[0])
            self.groups.append(g)


STATE_DIR = "train_state"


def save_state(folder, model, opt: Optimisation, rngs, loop: dict, best_state) -> None:
    """Everything needed to continue a run exactly (written atomically after each epoch): the
    model, the best weights so far, AdamW's moments, the schedule, torch's and the samplers'
    random states and the loop counters. Tensors in safetensors, the rest in JSON — no pickle."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from .fileutil import replace_dir, write_json

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v.contiguous() for k, v in best_state.items()})
        osd = opt.optimizer.state_dict()
        for idx, st in osd["state"].items():
            for key, v in st.items():
                tensors[f"opt.{idx}.{key}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "tensors.safetensors"))
        groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in osd["param_groups"]]
        write_json(tmp / "state.json", {
            **loop, "optimizer_groups": groups, "has_best": best_state is not None,
            "schedule": {"last_epoch": opt.schedule.last_epoch, "step_count": opt.schedule._step_count,
                         "base_lrs": list(opt.schedule.base_lrs)},
            "numpy_rngs": [g.bit_generator.state for g in rngs]})
        replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_state(folder) -> tuple[dict, dict]:
    import json

    from safetensors.torch import load_file

    from .errors import MedTransferError

    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")   # a crash between the two renames
        folder = old if (old / "state.json").is_file() else folder
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError) as exc:
        raise MedTransferError(f"no resumable training state in '{folder.parent}' ({exc}); the run ended "
                               f"before its first epoch or finished — train again without --resume") from None
    return state, tensors


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


def fit(model, strategy, opt: Optimisation, config, device, next_batch: Callable, loss_fn: Callable,
        reporter, validate: Callable[[], Validation] | None = None, metric: str = "val_score",
        on_best: Callable[[list, int, float], None] | None = None,
        adapt_inputs: Callable | None = None, state_dir=None, rngs=(), resume: bool = False) -> tuple[list, dict]:
    """Train ``config.epochs × config.steps_per_epoch`` steps; returns ``(history, metrics)``.

    ``next_batch()`` gives ``(x, y)`` ready for the network (on the CPU, or already on the
    device; on a GPU the next is made while the card runs this one: :func:`batches`); ``validate()`` scores
    the model after each epoch; ``on_best(history, epoch, score)`` runs at each improvement
    (e.g. to write a checkpoint); ``adapt_inputs()`` yields label-free input batches for a
    strategy that re-estimates BatchNorm statistics first (AdaBN).

    ``state_dir``: after every epoch the full training state goes there (:func:`save_state`);
    ``rngs`` are the caller's numpy generators (sampling, augmentation) saved with it.
    ``resume``: continue from that state — on CPU the result is bit-identical to an
    uninterrupted run with the same seed.
    """
    from .strategies import _stages, adapt_bn

    saved = load_state(state_dir) if resume else None
    if saved is not None:
        pass   # AdaBN (if any) ran before the first epoch; its statistics are in the saved model
    elif strategy.adapt_bn_first:
        if adapt_inputs is None:
            raise ValueError("this strategy re-estimates BatchNorm statistics first: give adapt_inputs")
        n = adapt_bn(model, (x.to(device) for x in adapt_inputs()), _stages(model))
        reporter.emit("note", message=f"AdaBN: re-estimated the running statistics of {n} encoder "
                                      f"BatchNorm layers on the training images (no labels used)")
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    fmt = memory_format(device, getattr(model, "spatial_dims", 2))
    optimizer, schedule, total = opt.optimizer, opt.schedule, opt.total
    best, best_state, stale, history, step = -math.inf, None, 0, [], 0
    t_start = time.monotonic()
    stopped_early = False
    first = 1
    if saved is not None:
        state, tensors = saved
        for e in range(1, state["epoch"] + 1):   # the same parameter groups, in the same order
            joining = strategy.on_epoch(e, model)
            if joining:
                opt.add_groups(joining)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if state["has_best"]:
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        opt_state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_groups"]})
        match_layouts(optimizer)
        schedule.last_epoch = state["schedule"]["last_epoch"]
        schedule._step_count = state["schedule"]["step_count"]
        schedule.base_lrs = list(state["schedule"]["base_lrs"])
        torch.set_rng_state(tensors["rng.torch"])
        for g, st in zip(rngs, state["numpy_rngs"]):
            g.bit_generator.state = st
        history, step, stale = state["history"], state["step"], state["stale"]
        best = -math.inf if state["best"] is None else state["best"]
        first = state["epoch"] + 1
        reporter.emit("note", message=f"resumed after epoch {state['epoch']} (step {step} of {total})")
    for epoch in range(first, config.epochs + 1):
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
            try:
                with autocast(device):
                    out = model(x)
                loss = loss_fn(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(model)    # torchrun: every process, the same step
            except torch.OutOfMemoryError:
                from .errors import OutOfMemory

                out = loss = None
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()   # leave the GPU usable (Slicer, the next run)
                raise OutOfMemory(len(x), tuple(x.shape), str(device)) from None
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            distributed.average_buffers(model)
            step += 1
            losses.append(float(loss.detach()))
            elapsed = time.monotonic() - t_start
            reporter.emit("step", epoch=epoch, step=step, steps_total=total, loss=losses[-1],
                          lr=optimizer.param_groups[-1]["lr"], eta_s=round(elapsed / step * (total - step), 1))
        record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        if validate is not None:
            v = validate()
            improved = v.score > best
            record.update({metric: v.score, **v.record})
            reporter.emit("validation", epoch=epoch, **{metric: v.score}, best=improved,
                          train_loss=record["train_loss"], **v.event)
            if improved:
                best, stale = v.score, 0
                best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
                if on_best is not None:
                    on_best(history + [record], epoch, best)
            else:
                stale += 1
        history.append(record)
        if state_dir is not None:
            save_state(state_dir, model, opt, rngs, {"epoch": epoch, "step": step, "stale": stale, "history": history,
                                                      "best": None if best == -math.inf else best}, best_state)
        elapsed = time.monotonic() - t_start
        reporter.emit("epoch", epoch=epoch, epochs=config.epochs, train_loss=record["train_loss"],
                      **{metric: record.get(metric)}, eta_s=round(elapsed / step * (total - step), 1))
        if validate is not None and stale >= config.patience:
            stopped_early = True
            reporter.emit("note", message=f"early stop: {metric.replace('val_', 'validation ').replace('_', ' ')} "
                                          f"did not improve for {config.patience} epochs (best {best:.3f})")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    metrics = {f"best_{metric}": best if validate is not None else None, "epochs_run": len(history),
               "steps_run": step, "stopped_early": stopped_early,
               "train_seconds": round(time.monotonic() - t_start, 1)}
    return history, metrics
