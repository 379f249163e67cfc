"""Training settings and results."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from MedTransferLib.core.defaults import TRAINING as D
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.models.backbones import get_backbone
from MedTransferLib.package.sources import is_source
from MedTransferLib.training.strategies import get_strategy


@dataclass
class TrainConfig:
    """Training settings. The defaults are the product's recommendation for a new task."""

    mode: str = D["mode"]  # "2.5d" (k slices → 2D network) or "3d" (patches → 3D network)
    backbone: str = D["backbone"]
    weights: str | None = D["weights"]  # the backbone's pretrained weights, a file path, or None
    strategy: str = D["strategy"]  # the advisor picks from data size × domain distance
    slices: int = D["slices"]  # 2.5D: k adjacent slices as channels
    axis: int | None = None            # voxel axis to slice along; None → the datalist's (default k)
    epochs: int = D["epochs"]
    steps_per_epoch: int = D["steps_per_epoch"]
    batch_size: int | None = None      # None → 16 × 128² pixels (2.5D), 2 × 96³ voxels (3D)
    lr: float = D["lr"]
    weight_decay: float = D["weight_decay"]
    warmup_fraction: float = D["warmup_fraction"]
    patience: int = D["patience"]  # epochs without validation improvement before stopping
    val_fraction: float = D["val_fraction"]
    patch: int | None = None           # crop edge; None → from the structures' size (2.5D
                                       # 128–256 pixels, 3D 64–128 voxels)
    overlap: float = D["overlap"]  # 3D sliding-window overlap at validation and prediction
    stem: str = D["stem"]  # how the first conv is adapted to k ≠ 3 channels
    modality: str | tuple = D["modality"]  # MR, CT or auto; or one per image channel (T1+T2: MR, MR)
    device: str = D["device"]
    seed: int = D["seed"]
    histogram_standardise: bool = False  # MR: Nyúl landmarks learnt from the training images
    oom_retry: bool = False            # on an out-of-memory batch, start again with half the batch
    init_from: str | None = None       # continue from this model (run folder or package): --from
    max_seconds: float | None = D["max_seconds"]  # stop training within this many seconds (None: no limit)
    small_batch_epochs: int = D["small_batch_epochs"]  # 2.5D, CPU, new run, automatic batch: the first
                                       # epochs on half batches, twice the steps a second (training/hooks.py)
    preview: str | None = None         # folder for the live preview while training (training.preview)
    preview_seconds: float | None = None  # seconds between previews (None: 5 on a GPU, 25 on a CPU)

    @property
    def brief_continuation(self) -> bool:
        """A short continuation of an earlier model: ``--from`` with no more epochs than the
        early-stopping patience (``--from``'s default 4) — the panel's Update after the user
        corrected or added slices. It holds nothing out for validation: early stopping could not
        end it, and a correction held out would never be learnt."""
        return self.init_from is not None and self.epochs <= self.patience

    def check(self) -> None:
        if self.mode not in ("2.5d", "3d"):
            raise MedTransferError(f"mode '{self.mode}' is unknown; use --mode 2.5d or --mode 3d")
        if not is_source(self.backbone):
            info = get_backbone(self.backbone)
            if info.dims == 3 and self.mode != "3d":
                raise MedTransferError(f"backbone {self.backbone} is 3D; add --mode 3d")
            if self.mode == "3d" and info.dims == 2 and not info.inflatable:
                raise MedTransferError(f"backbone {self.backbone} cannot be inflated to 3D; pick "
                                       f"another (medtransfer backbones lists which can)")
        if self.strategy == "auto":
            strategy = get_strategy("finetune")   # the advisor decides in train()
        else:
            strategy = get_strategy(self.strategy)
        if strategy.needs_pretrained and self.weights in (None, "none", "random"):
            raise MedTransferError(f"--strategy {self.strategy} keeps encoder weights fixed; with "
                                   f"--weights none they would stay random. Use pretrained weights or "
                                   f"--strategy finetune")
        if not 0 <= self.overlap < 1:
            raise MedTransferError("--overlap must be in [0, 1)")
        if self.slices < 1 or self.slices % 2 == 0:
            raise MedTransferError(f"--slices must be an odd number ≥ 1 (centre slice ± neighbours), not {self.slices}")
        if self.small_batch_epochs < 0:
            raise MedTransferError(f"--small-batch-epochs must be 0 (off) or more, not {self.small_batch_epochs}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "patch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MedTransferError(f"--{name.replace('_', '-')} must be at least 1")
        if not (self.lr > 0):
            raise MedTransferError("--lr must be positive")
        if self.max_seconds is not None and not (self.max_seconds > 0):
            raise MedTransferError(f"--max-seconds must be positive, not {self.max_seconds}")
        if self.preview_seconds is not None and not (self.preview_seconds >= 0):
            raise MedTransferError(f"--preview-seconds must be 0 or more, not {self.preview_seconds}")
        if not 0 <= self.val_fraction < 1:
            raise MedTransferError("--val-fraction must be in [0, 1)")
        mods = self.modality if isinstance(self.modality, (list, tuple)) else [self.modality]
        if any(m not in ("MR", "CT") for m in mods) if len(mods) > 1 else mods[0] not in ("auto", "MR", "CT"):
            raise MedTransferError(f"modality must be MR, CT or auto (or one MR/CT per image), "
                                   f"not {self.modality!r}")


@dataclass
class TrainResult:
    package: Path
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from MedTransferLib import __version__

    out = {"medtransfer": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "monai", "SimpleITK", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
