"""The optimiser of every training run: AdamW over the strategy's parameter groups (fused where
the device has the kernel), linear warm-up then cosine decay, groups joining mid-run."""

from __future__ import annotations

import functools
import math

import torch


def adamw(groups: list[dict], **kw) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA: the same update in one kernel per step
    instead of a chain of per-tensor operations (measured: bench/NOTES.md, change 6). Other devices, and torch builds without a fused kernel for the device (CPU
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
        self.horizon = self.total       # the steps the schedule spans (see fit_horizon)
        fraction = config.warmup_fraction
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: (min(1.0, (s + 1) / max(1, int(fraction * self.horizon)))
                       * 0.5 * (1 + math.cos(math.pi * min(1.0, s / self.horizon)))))
        self.info = strategy.describe(model)   # after param_groups: counts what will train

    def fit_horizon(self, steps: int) -> None:
        """Fit the schedule (warm-up, then the cosine decay) into ``steps`` steps instead of the
        planned total: a run with a time budget that will not reach the total still warms up
        briefly and ends at a small learning rate."""
        self.horizon = max(1, min(self.total, int(steps)))

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
