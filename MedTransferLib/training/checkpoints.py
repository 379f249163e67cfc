"""Checkpoints of the training state, for ``--resume``: after every epoch everything needed to
continue exactly is written atomically (safetensors + JSON, no pickle); a resumed run on the CPU
is bit-identical to an uninterrupted one with the same seed."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from MedTransferLib.training.hooks import Hook, LoopState
from MedTransferLib.training.optim import Optimisation, match_layouts

STATE_DIR = "train_state"


def save_state(folder, model, opt: Optimisation, rngs, loop: dict, best_state) -> None:
    """Everything needed to continue a run exactly (written atomically after each epoch): the
    model, the best weights so far, AdamW's moments, the schedule, torch's and the samplers'
    random states and the loop counters. Tensors in safetensors, the rest in JSON — no pickle."""
    from safetensors.torch import save_file

    from MedTransferLib.core.files import atomic_dir, write_json

    with atomic_dir(folder) as tmp:
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


def load_state(folder) -> tuple[dict, dict]:
    import json

    from safetensors.torch import load_file

    from MedTransferLib.core.errors import MedTransferError

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


class Checkpoints(Hook):
    """Saves the state after every epoch into ``folder``; with ``resume``, first restores the
    state saved there (the strategy's groups replayed in order, model, best weights, AdamW's
    moments with their parameters' layouts, schedule, torch's and the caller's random states,
    the loop's counters)."""

    def __init__(self, folder, rngs=(), resume: bool = False):
        self.folder, self.rngs = Path(folder), list(rngs)
        self.saved = load_state(self.folder) if resume else None
        self.resuming = self.saved is not None

    def start(self, s: LoopState) -> None:
        if self.saved is None:
            return
        state, tensors = self.saved
        s.resumed = True
        for e in range(1, state["epoch"] + 1):   # the same parameter groups, in the same order
            joining = s.strategy.on_epoch(e, s.model)
            if joining:
                s.opt.add_groups(joining)
        s.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if state["has_best"]:
            s.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        opt_state = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        optimizer, schedule = s.opt.optimizer, s.opt.schedule
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_groups"]})
        match_layouts(optimizer)
        schedule.last_epoch = state["schedule"]["last_epoch"]
        schedule._step_count = state["schedule"]["step_count"]
        schedule.base_lrs = list(state["schedule"]["base_lrs"])
        torch.set_rng_state(tensors["rng.torch"])
        for g, st in zip(self.rngs, state["numpy_rngs"]):
            g.bit_generator.state = st
        s.history, s.step, s.stale = state["history"], state["step"], state["stale"]
        s.best = -math.inf if state["best"] is None else state["best"]
        s.first_epoch = state["epoch"] + 1
        s.reporter.emit("note", message=f"resumed after epoch {state['epoch']} (step {s.step} of {s.opt.total})")

    def epoch_end(self, s: LoopState) -> None:
        save_state(self.folder, s.model, s.opt, self.rngs,
                   {"epoch": s.epoch, "step": s.step, "stale": s.stale, "history": s.history,
                    "best": None if s.best == -math.inf else s.best}, s.best_state)
