"""Transfer strategies: each decides what trains and at which learning rate.

The trainer knows nothing about freezing: it asks the strategy for the optimizer's parameter
groups once (``param_groups``), lets it set module modes whenever training mode is entered
(``train_mode``), and asks at the start of every epoch whether new groups join (``on_epoch``,
for gradual unfreezing). Stages come from the backbone registry (``model.stages()``, shallow →
deep); everything else in the model (decoder, head) is "the head" here.

Names (``--strategy``): ``finetune``, ``frozen``, ``partial:N``, ``gradual[:E]``,
``discriminative[:D]``, ``gradual+discriminative[:D]``, ``bn-only``, ``adabn``; a leading
``adabn+`` (e.g. ``adabn+finetune``) first re-estimates the encoder's BatchNorm statistics on the
training images, without labels."""

from __future__ import annotations

import difflib

from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.shift.adabn import BN_TYPES


def encoder_stages(model: nn.Module) -> list[nn.Module]:
    stages = model.stages() if hasattr(model, "stages") else []
    if not stages:
        raise MedTransferError("this network has no pretrained encoder stages; use --strategy finetune")
    return list(stages)


def _params(modules) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _head_params(model: nn.Module, stages) -> list[nn.Parameter]:
    enc = {id(p) for p in _params(stages)}
    return [p for p in model.parameters() if id(p) not in enc]


def _group(name: str, params, lr: float) -> dict:
    return {"name": name, "params": list(params), "lr": lr}


def _bn_eval(modules) -> None:
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, BN_TYPES):
                sub.eval()


class Strategy:
    name = "base"
    adapt_bn_first = False   # re-estimate encoder BN statistics on the training images first
    needs_pretrained = True  # keeps (some) encoder weights as they are: pointless if random

    def params(self) -> dict:
        return {}

    def spec(self) -> str:
        return ("adabn+" if self.adapt_bn_first and self.name != "adabn" else "") + self.name

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        raise NotImplementedError

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose BatchNorm layers stay in eval mode (statistics fixed) while training."""
        return []

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        _bn_eval(self.frozen_modules(model))

    def on_epoch(self, epoch: int, model: nn.Module) -> list[dict]:
        """Groups joining the optimizer at the start of ``epoch`` (1-based); none by default."""
        return []

    def describe(self, model: nn.Module) -> dict:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return {"strategy": self.spec(), "params": self.params(), "trainable_parameters": trainable,
                "total_parameters": total}


class FineTune(Strategy):
    """Every layer trains at one learning rate (more capacity, more risk of forgetting)."""

    name = "finetune"
    needs_pretrained = False

    def param_groups(self, model, lr):
        model.requires_grad_(True)
        return [_group("all", model.parameters(), lr)]


class Frozen(Strategy):
    """Feature extraction: the pretrained encoder is fixed — weights *and* BatchNorm running
    statistics (encoder kept in eval mode); only the decoder and head train."""

    name = "frozen"

    def param_groups(self, model, lr):
        stages = encoder_stages(model)
        model.requires_grad_(True)
        for s in stages:
            s.requires_grad_(False)
        return [_group("decoder+head", _head_params(model, stages), lr)]

    def frozen_modules(self, model):
        return encoder_stages(model)


class Partial(Strategy):
    """Only the deepest N encoder stages (plus decoder and head) train; the shallower, more
    generic stages keep their weights and statistics."""

    name = "partial"

    def __init__(self, n: int = 2):
        self.n = int(n)
        if self.n < 1:
            raise MedTransferError("partial:N needs N ≥ 1 (the number of deepest stages to train)")

    def params(self):
        return {"stages": self.n}

    def spec(self):
        return super().spec() + f":{self.n}"

    def _split(self, model):
        stages = encoder_stages(model)
        if self.n > len(stages):
            raise MedTransferError(f"partial:{self.n} asks for more stages than the encoder has "
                                   f"({len(stages)}); use finetune")
        return stages[:-self.n], stages[-self.n:]

    def param_groups(self, model, lr):
        frozen, trained = self._split(model)
        model.requires_grad_(True)
        for s in frozen:
            s.requires_grad_(False)
        return [_group(f"encoder (deepest {self.n} stages)", _params(trained), lr),
                _group("decoder+head", _head_params(model, encoder_stages(model)), lr)]

    def frozen_modules(self, model):
        return self._split(model)[0]


class Discriminative(Strategy):
    """Layer-wise learning rates: the decoder and head at the base rate, encoder stage i (0 =
    stem) at ``lr × decay^(S − i)`` — the deepest stage at ``lr × decay``, the stem smallest, so
    generic early features change least."""

    name = "discriminative"
    needs_pretrained = False

    def __init__(self, decay: float = 0.5):
        self.decay = float(decay)
        if not 0 < self.decay <= 1:
            raise MedTransferError("discriminative:D needs a decay D in (0, 1]")

    def params(self):
        return {"decay": self.decay}

    def spec(self):
        return super().spec() + f":{self.decay:g}"

    def stage_lr(self, lr: float, i: int, n: int) -> float:
        return lr * self.decay ** (n - i)

    def param_groups(self, model, lr):
        stages = encoder_stages(model)
        model.requires_grad_(True)
        groups = [_group(f"stage {i}", _params([s]), self.stage_lr(lr, i, len(stages)))
                  for i, s in enumerate(stages)]
        return groups + [_group("decoder+head", _head_params(model, stages), lr)]


class Gradual(Strategy):
    """ULMFiT-style gradual unfreezing: the encoder starts frozen (decoder and head train); every
    ``every`` epochs the next stage from the top unfreezes and joins the optimizer, with its
    BatchNorm layers back in training mode. With ``discriminative`` each stage joins at its
    layer-wise rate."""

    name = "gradual"

    def __init__(self, every: int = 2, discriminative: Discriminative | None = None):
        self.every = int(every)
        if self.every < 1:
            raise MedTransferError("gradual:E needs E ≥ 1 epochs between unfreezing steps")
        self.disc = discriminative
        self.unfrozen = 0
        self.lr = None

    def params(self):
        return {"every_epochs": self.every, **({"decay": self.disc.decay} if self.disc else {})}

    def spec(self):
        return super().spec() + f":{self.every}" + (f"+discriminative:{self.disc.decay:g}" if self.disc else "")

    def schedule(self, n_stages: int) -> dict[int, int]:
        """Epoch → stage index unfrozen at its start (deepest first)."""
        return {1 + self.every * (j + 1): n_stages - 1 - j for j in range(n_stages)}

    def param_groups(self, model, lr):
        stages = encoder_stages(model)
        self.lr, self.unfrozen = lr, 0
        model.requires_grad_(True)
        for s in stages:
            s.requires_grad_(False)
        return [_group("decoder+head", _head_params(model, stages), lr)]

    def frozen_modules(self, model):
        stages = encoder_stages(model)
        return stages[:len(stages) - self.unfrozen]

    def on_epoch(self, epoch, model):
        stages = encoder_stages(model)
        i = self.schedule(len(stages)).get(epoch)
        if i is None:
            return []
        stages[i].requires_grad_(True)
        self.unfrozen += 1
        lr = self.disc.stage_lr(self.lr, i, len(stages)) if self.disc else self.lr
        return [_group(f"stage {i}", _params([stages[i]]), lr)]

    def describe(self, model):
        info = super().describe(model)
        info["unfreeze_schedule"] = {str(e): s for e, s in self.schedule(len(encoder_stages(model))).items()}
        return info


class BNOnly(Strategy):
    """Only the encoder's BatchNorm affine parameters (γ, β) train, plus decoder and head; the
    encoder's BN layers run in training mode, so their running statistics are re-estimated on
    the target data. Every convolution keeps its pretrained weights."""

    name = "bn-only"

    def param_groups(self, model, lr):
        stages = encoder_stages(model)
        model.requires_grad_(True)
        bn = []
        for s in stages:
            s.requires_grad_(False)
            for m in s.modules():
                if isinstance(m, BN_TYPES) and m.affine:
                    m.requires_grad_(True)
                    bn += [m.weight, m.bias]
        if not bn:
            raise MedTransferError("bn-only: this encoder has no BatchNorm layers; use partial:N")
        return [_group("encoder BatchNorm γ/β", bn, lr), _group("decoder+head", _head_params(model, stages), lr)]


class AdaBN(Frozen):
    """AdaBN (Li et al. 2016): re-estimate the encoder's BatchNorm statistics on the target
    images without labels, keep every pretrained weight, then train only the decoder and head
    (the re-estimated statistics stay fixed)."""

    name = "adabn"
    adapt_bn_first = True


_SIMPLE = {s.name: s for s in (FineTune, Frozen, BNOnly, AdaBN)}


NAMES = ["finetune", "frozen", "partial:N", "gradual[:E]", "discriminative[:D]",
         "gradual+discriminative[:D]", "bn-only", "adabn", "adabn+<strategy>"]


def get_strategy(spec: str) -> Strategy:
    """Parse a strategy name such as ``partial:2``, ``gradual:3+discriminative:0.5`` or
    ``adabn+bn-only``."""
    text = str(spec).strip()
    adapt = False
    if text.startswith("adabn+"):
        adapt, text = True, text[len("adabn+"):]
    parts = text.split("+")
    try:
        strategy = _parse(parts)
    except ValueError:
        raise MedTransferError(f"strategy '{spec}' has a malformed parameter; e.g. partial:2, "
                               f"gradual:3, discriminative:0.5") from None
    if strategy is None:
        close = difflib.get_close_matches(text.split(":")[0], list(_SIMPLE) + ["partial", "gradual",
                                                                             "discriminative"], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise MedTransferError(f"unknown strategy '{spec}'; {hint}choose one of {', '.join(NAMES)}")
    strategy.adapt_bn_first = strategy.adapt_bn_first or adapt
    return strategy


def _parse(parts: list[str]) -> Strategy | None:
    def split(p):
        name, _, arg = p.partition(":")
        return name, arg

    names = [split(p) for p in parts]
    if len(names) == 1:
        name, arg = names[0]
        if name in _SIMPLE and not arg:
            return _SIMPLE[name]()
        if name == "partial":
            return Partial(int(arg) if arg else 2)
        if name == "gradual":
            return Gradual(int(arg) if arg else 2)
        if name == "discriminative":
            return Discriminative(float(arg) if arg else 0.5)
        return None
    if len(names) == 2 and {n for n, _ in names} == {"gradual", "discriminative"}:
        args = dict(names)
        return Gradual(int(args["gradual"]) if args["gradual"] else 2,
                       Discriminative(float(args["discriminative"]) if args["discriminative"] else 0.5))
    return None
