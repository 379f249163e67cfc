"""Transfer strategies: each decides what trains and at which learning rate.

The trainer knows nothing about freezing: it asks the strategy for optimizer parameter groups
once (``param_groups``) and lets it set module modes whenever training mode is entered
(``train_mode``).
"""

from __future__ import annotations

import difflib

from torch import nn

from .errors import MedTransferError


class Strategy:
    name = "base"

    def params(self) -> dict:
        return {}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        raise NotImplementedError

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def describe(self, model: nn.Module) -> dict:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return {"strategy": self.name, "params": self.params(), "trainable_parameters": trainable,
                "total_parameters": total}


class FineTune(Strategy):
    """Every layer trains at one learning rate (more capacity, more risk of forgetting)."""

    name = "finetune"

    def param_groups(self, model, lr):
        model.requires_grad_(True)
        return [{"name": "all", "params": [p for p in model.parameters()], "lr": lr}]


class Frozen(Strategy):
    """Feature extraction: the pretrained encoder is fixed — weights *and* BatchNorm running
    statistics (encoder kept in eval mode); only the decoder and head train."""

    name = "frozen"

    def param_groups(self, model, lr):
        encoder = model.encoder
        frozen = {id(p) for p in encoder.parameters()}
        if not frozen:
            from .errors import MedTransferError

            raise MedTransferError("this network has no separate pretrained encoder to freeze; use "
                                   "--strategy finetune")
        model.requires_grad_(True)
        encoder.requires_grad_(False)
        params = [p for p in model.parameters() if id(p) not in frozen]
        return [{"name": "decoder+head", "params": params, "lr": lr}]

    def train_mode(self, model):
        model.train()
        model.encoder.eval()


STRATEGIES = {s.name: s for s in (FineTune, Frozen)}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise MedTransferError(f"unknown strategy '{name}'; {hint}choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
