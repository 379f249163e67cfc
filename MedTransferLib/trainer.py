"""Training: Dice + cross-entropy, AdamW, warm-up + cosine schedule, AMP on CUDA, seeded,
early stopping on validation Dice, atomic checkpoints as model packages."""

from __future__ import annotations

import math
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import build_encoder, build_network, get_backbone, is_source, source_kind
from .case import IGNORE, Case
from .dataset import SlabSampler, Volume, augment, from_slices_first, largest_extent, split_train_val
from .dataset3d import PatchSampler3D, auto_patch_3d
from .device import memory_format, resolve_device
from .errors import MedTransferError
from .inference import bn_inputs_2d, bn_inputs_3d, dice_per_class, predict_slices, predict_volume_3d
from .labels import Label
from . import distributed
from .loop import STATE_DIR, Optimisation, Validation, fit
from .model import DECODER_CHANNELS, DECODER_CHANNELS_3D, SegmentationNet
from .package import array_fingerprint, save_package
from .preprocessing import Preprocessing, detect_modality
from .progress import Reporter
from .strategies import get_strategy


@dataclass
class TrainConfig:
    """Training settings. The defaults are the product's recommendation for a new task."""

    mode: str = "2.5d"                 # "2.5d" (k slices → 2D network) or "3d" (patches → 3D network)
    backbone: str = "efficientnet-lite0"
    weights: str | None = "pretrained" # the backbone's pretrained weights, a file path, or None
    strategy: str = "auto"             # the advisor picks from data size × domain distance
    slices: int = 3                    # 2.5D: k adjacent slices as channels
    axis: int | None = None            # voxel axis to slice along; None → the datalist's (default k)
    epochs: int = 16
    steps_per_epoch: int = 50
    batch_size: int | None = None      # None → 16 × 128² pixels (2.5D), 2 × 96³ voxels (3D)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    patience: int = 4                  # epochs without validation improvement before stopping
    val_fraction: float = 0.2
    patch: int | None = None           # crop edge; None → from the structures' size (2.5D
                                       # 128–256 pixels, 3D 64–128 voxels)
    overlap: float = 0.25              # 3D sliding-window overlap at validation and prediction
    stem: str = "mean"                 # how the first conv is adapted to k ≠ 3 channels
    modality: str | tuple = "auto"     # MR, CT or auto; or one per image channel (T1+T2: MR, MR)
    device: str = "auto"
    seed: int = 0
    histogram_standardise: bool = False  # MR: Nyúl landmarks learnt from the training images
    oom_retry: bool = False            # on an out-of-memory batch, start again with half the batch

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
        for name in ("epochs", "steps_per_epoch", "batch_size", "patch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MedTransferError(f"--{name.replace('_', '-')} must be at least 1")
        if not (self.lr > 0):
            raise MedTransferError("--lr must be positive")
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


def loss_function(smooth: float = 1.0):
    """Cross-entropy + batch soft Dice over the foreground classes present in the batch.

    Why not MONAI's ``DiceLoss(batch=True)``: it also scores classes absent from the batch,
    whose only optimum is probability ≈ 0 everywhere; on sparse labels most classes are absent
    from most batches, their logits saturate, and whole structures never get learned ("dying
    classes", measured here: 3 of 8 AAL structures at Dice 0 after 150 steps). Per-sample Dice
    with background is worse still (it rewards predicting background everywhere).
    """

    def loss(logits, target):
        # One log-softmax serves both terms, and the Dice sums are gathered per class instead of
        # multiplying the probabilities by a one-hot volume: the same values (Testing/
        # test_performance.py checks them against the one-hot formulation), 1.5× faster forward +
        # backward on a 2 × 9 × 64³ batch, where the loss was a fifth of a 3D step (bench/micro.py)
        c = logits.shape[1]
        valid = target != IGNORE
        safe = torch.where(valid, target, 0)
        logp = F.log_softmax(logits, 1)
        logp_true = logp.gather(1, safe[:, None])[:, 0]          # log-probability of the true class
        t, lp = safe[valid], logp_true[valid]
        counts = torch.bincount(t, minlength=c).to(logits.dtype)
        # cross-entropy averaged within each class present, then over classes: background's
        # sheer voxel count must not drown out a small structure
        sums = torch.zeros(c, dtype=logits.dtype, device=logits.device).index_add_(0, t, -lp)
        ce = (sums[counts > 0] / counts[counts > 0]).mean()
        present = counts[1:] > 0                                  # foreground classes in the batch
        if not present.any():
            return ce
        inter = torch.zeros(c, dtype=logits.dtype, device=logits.device).index_add_(0, t, lp.exp())[1:]
        dims = (0, *range(2, logits.ndim))                        # 2D or 3D
        probs = (logp[:, 1:].exp() * valid[:, None].to(logits.dtype)).sum(dims)
        dice = 1 - (2 * inter + smooth) / (probs + counts[1:] + smooth)
        return ce + dice[present].mean()

    return loss


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"medtransfer": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "monai", "SimpleITK", "numpy", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _check_labels(cases: list[Case], labels: list[Label], axis: int) -> None:
    if not labels:
        raise MedTransferError("no labels given: name at least one structure to learn")
    for case in cases:
        if case.label is None:
            raise MedTransferError(f"case '{case.case_id}' has no label map; every training case needs one")
        if case.image.ndim not in (3, 4):
            raise MedTransferError(f"case '{case.case_id}' is not a 3D volume")
        if case.channels != cases[0].channels:
            raise MedTransferError(f"case '{case.case_id}' has {case.channels} images, case "
                                   f"'{cases[0].case_id}' {cases[0].channels}; every case needs the "
                                   f"same images (modalities) in the same order")
        if not case.labelled_slices(axis):
            raise MedTransferError(f"case '{case.case_id}' has no labelled slice along axis {axis}; "
                                   f"label at least one slice or remove the case")
    present = set()
    for case in cases:
        present |= set(np.unique(case.label).tolist())
    missing = [lab.name for lab in labels if lab.value not in present]
    if missing:
        raise MedTransferError(f"structures {missing} appear in no training label map; label them "
                               f"on at least one slice or remove them from the labels")


def make_preprocessing(modality, case: Case, pretrain_mean, pretrain_std) -> Preprocessing:
    """The intensity recipe for these images: the given modality (one, or one per channel) or,
    with 'auto', each channel's detected modality."""
    channels = case.channels
    if isinstance(modality, (list, tuple)):
        mods = tuple(modality)
        if len(mods) != channels:
            raise MedTransferError(f"{len(mods)} modalities given ({', '.join(mods)}) for "
                                   f"{channels} images per case; name one per image")
    elif modality == "auto":
        mods = tuple(detect_modality(case.image if channels == 1 else case.image[c]) for c in range(channels))
    else:
        mods = (modality,) * channels
    return Preprocessing(modality=mods[0], channel_modalities=mods if channels > 1 else (),
                         target_mean=tuple(pretrain_mean), target_std=tuple(pretrain_std))


def train(cases: list[Case], labels: list[Label], out, config: TrainConfig | None = None,
          reporter: Reporter | None = None, axis_from_data: int = 2, resume: bool = False) -> TrainResult:
    """Fine-tune a pretrained segmentation network on ``cases``; write the model to ``out``
    (checked, locked and labelled with its state: :mod:`rundir`).

    Example:
        >>> dl = load_datalist("dataset.json")                      # doctest: +SKIP
        >>> result = train(dl.load_cases(), dl.labels, "runs/a")    # doctest: +SKIP
    """
    return managed_run(lambda cfg, resume_now: _train(cases, labels, out, cfg, reporter, axis_from_data, resume_now),
                       config or TrainConfig(), out, reporter, resume)


def managed_run(run, config: TrainConfig, out, reporter, resume: bool):
    """What every training (segmentation or classification) runs inside: torchrun's process group
    if there is one; the run folder checked, locked and labelled by rank 0 (rundir); ``run(config,
    resume)``, and with ``config.oom_retry`` again with half the batch (down to 1) after an
    out-of-memory batch, saying so — as a new run, not resumed; the training state removed once
    the package is written."""
    import contextlib

    from .errors import OutOfMemory
    from .rundir import run_directory

    distributed.init()
    if distributed.active() and resume:
        raise MedTransferError("--resume continues a run with one process; resuming a torchrun run "
                               "(several samplers' states) is not supported — start it again")
    with run_directory(out) if distributed.is_main() else contextlib.nullcontext():
        while True:
            try:
                result = run(config, resume)
                break
            except OutOfMemory as exc:
                if not config.oom_retry or exc.batch <= 1:
                    raise
                half = max(1, exc.batch // 2)
                if reporter is not None:
                    reporter.emit("note", message=f"out of memory at batch {exc.batch}: starting again with "
                                                  f"--batch-size {half} (--oom-retry)")
                shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)   # another batch size: a new run
                config, resume = replace(config, batch_size=half), False
    if distributed.is_main():
        shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)   # finished: the package is the result
    return result


def _train(cases: list[Case], labels: list[Label], out, config: TrainConfig | None = None,
           reporter: Reporter | None = None, axis_from_data: int = 2, resume: bool = False) -> TrainResult:
    config = replace(config) if config else TrainConfig()   # a copy: 'auto' is resolved in it
    config.check()
    main = distributed.is_main()
    reporter = reporter if (reporter and main) else Reporter(stream=None, bar=False)   # rank 0 speaks
    out = Path(out)
    axis = axis_from_data if config.axis is None else config.axis
    _check_labels(cases, labels, axis)
    seed_everything(config.seed)   # the same initial network on every process
    device = resolve_device(config.device)
    rank = distributed.rank()
    rng = np.random.default_rng(config.seed + rank)   # each process its own batches

    three_d = config.mode == "3d"
    num_classes = len(labels) + 1
    channels = cases[0].channels
    in_channels = channels * (1 if three_d else config.slices)
    model, model_config = build_for_training(config, in_channels, num_classes)
    prep = make_preprocessing(config.modality, cases[0], model_config.pop("_pretrain_mean"),
                              model_config.pop("_pretrain_std"))
    if config.histogram_standardise:
        if prep.modality != "MR" or channels != 1:
            raise MedTransferError("--histogram-standardise is for MR models with one image per case; "
                                   f"these images are {prep.channel_modalities or prep.modality}")
        from .shift import learn_landmarks

        prep = replace(prep, histogram_landmarks=learn_landmarks([c.image for c in cases]))
    modality = prep.channel_modalities or prep.modality
    values = [lab.value for lab in labels]
    _check_memory(cases, config)
    volumes = [Volume.from_case(c, prep, axis, values) for c in cases]
    profiles = _check_inputs(cases, volumes, prep, axis, reporter)
    train_items, val_items, split_note = split_train_val(volumes, config.val_fraction, config.seed)
    if three_d:
        patch = ((config.patch,) * 3 if config.patch else
                 auto_patch_3d(volumes, train_items, multiple=model.multiple))
        if any(p % model.multiple for p in patch):
            raise MedTransferError(f"--patch {config.patch} must be a multiple of {model.multiple} "
                                   f"for {config.backbone}")
        batch_size = config.batch_size or max(2, round(2 * 96 ** 3 / float(np.prod(patch))))
        if isinstance(model, SegmentationNet) and batch_size * np.prod([p // 32 for p in patch]) < 2:
            raise MedTransferError(f"--batch-size {batch_size} with a {patch[0]}-voxel patch leaves one "
                                   f"value per channel at the encoder's deepest level (BatchNorm cannot "
                                   f"train on that); use --batch-size 2 or a larger --patch")
        sampler = PatchSampler3D(volumes, train_items, num_classes, patch, seed=config.seed + rank)
    else:
        patch = config.patch or auto_patch(volumes, train_items)
        batch_size = config.batch_size or max(2, round(16 * (128 / patch) ** 2))
        sampler = SlabSampler(volumes, train_items, config.slices, num_classes, patch, seed=config.seed + rank)

    model = model.to(device)
    fmt = memory_format(device, 3 if three_d else 2)
    if fmt is not None:
        model = model.to(memory_format=fmt)
    advice = None
    if config.strategy == "auto":
        from .advisor import advise

        advice = advise(cases, labels, config.backbone, config.weights, config.mode, config.slices, axis,
                        config.modality, config.lr, epochs=config.epochs)
        config.strategy = advice.strategy
    strategy = get_strategy(config.strategy)
    opt = Optimisation(model, strategy, config)
    info = opt.info
    reporter.emit("start", device=str(device), modality=modality, backbone=config.backbone,
                  mode=config.mode, weights=config.weights or "none", train_slices=len(train_items),
                  val_slices=len(val_items), steps_total=opt.total, patch=patch, batch_size=batch_size,
                  param_groups=opt.summary(), **info)
    reporter.emit("note", message=split_note)
    if advice:
        reporter.emit("note", message=f"strategy auto → {advice.strategy}: {advice.reason}")
    if three_d:
        sp = cases[0].geometry.spacing            # (i, j, k) in mm
        thick, fine = sp[axis], min(v for i, v in enumerate(sp) if i != axis)
        if thick > 3 * fine:
            reporter.emit("note", message=f"voxels are {thick / fine:.1f}× longer along the slice axis "
                                          f"({thick:g} vs {fine:g} mm): 3D patches and strides are in "
                                          f"voxels, so context along that axis is wide and coarse; "
                                          f"for thick-slice data --mode 2.5d is usually better")
    report = getattr(model, "transfer_report", None)
    if report:
        reporter.emit("note", message=f"{config.backbone}: {report['loaded']} weight tensors kept, "
                                      f"{len(report['reinitialised'])} re-initialised for this task "
                                      f"({', '.join(report['reinitialised'][:4])})")

    manifest_base = {
        "task": "segmentation", "mode": config.mode,
        "labels": [lab.to_dict() for lab in labels],
        "preprocessing": prep.to_dict(),
        "model": model_config,
        "slicing": {"axis": axis, "slices": 1 if three_d else config.slices, "channels": channels},
        "inference": ({"patch": list(patch), "overlap": config.overlap} if three_d else {}),
        "strategy": {**info, "param_groups": opt.summary(),
                     **({"advice": advice.to_dict()} if advice else {})},
        "training": {**asdict(config), "axis": axis, "device": str(device),
                     "patch": list(patch) if three_d else patch,
                     "batch_size": batch_size},
        "provenance": {
            "inputs": [{"case_id": c.case_id, "fingerprint": array_fingerprint(c.image, c.label),
                        "labelled_slices": len(c.labelled_slices(axis))} for c in cases],
            "split": split_note, "versions": _versions(), "seed": config.seed,
        },
    }

    def next_batch():
        images, targets = sampler.sample(batch_size)
        x, y = torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64))
        if device.type == "cuda":   # augmented there: most of a batch's preparation on a CPU (augment)
            x, y = x.to(device), y.to(device)
        x, y = augment(x, y, rng)
        return prep.to_backbone(x), y

    def validate() -> Validation:
        scores = (_validate_3d(model, volumes, val_items, prep, device, num_classes, patch, config.overlap)
                  if three_d else
                  _validate(model, volumes, val_items, config.slices, prep, device, num_classes))
        finite = [s for s in scores if not math.isnan(s)]
        per_class = {lab.name: s for lab, s in zip(labels, scores)}
        return Validation(float(np.mean(finite)) if finite else 0.0, {"val_dice_per_class": per_class},
                          {"per_class": per_class})

    def adapt_inputs():
        for vi in sorted({v for v, _ in train_items}):
            if three_d:
                yield from bn_inputs_3d(volumes[vi].image, patch, prep, seed=config.seed)
            else:
                yield from bn_inputs_2d(volumes[vi].image, config.slices, prep)

    history, metrics = fit(model, strategy, opt, config, device, next_batch, loss_function(), reporter,
                           validate if val_items else None, "val_dice",
                           (lambda hist, epoch, best: _checkpoint(out, model, manifest_base, hist, epoch, best))
                           if main else None,
                           adapt_inputs, state_dir=out / STATE_DIR if main else None, rngs=[rng, sampler.rng],
                           resume=resume)
    best = metrics["best_val_dice"] if metrics["best_val_dice"] is not None else -1.0
    if not main:   # rank 0 writes the package; the others hold the same model and are done
        distributed.barrier()
        return TrainResult(out / "model", metrics, history)
    manifest_base["shift"], stats = _shift_reference(model, cases, volumes, profiles, labels, prep, config,
                                                     patch if three_d else None, device)
    package = _checkpoint(out, model, manifest_base, history, history[-1]["epoch"], best, final=True,
                          extra=metrics, extras={REFERENCE_STATS: stats} if stats else None)
    reporter.emit("done", package=str(package), message=f"model written to {package}", **metrics)
    distributed.barrier()
    return TrainResult(package, metrics, history)


def auto_patch(volumes, items) -> int:
    """In-plane crop size: 1.5× the largest structure's extent on a labelled slice, rounded up
    to a multiple of 32 and kept within 128–256 pixels (small structures train on tight crops,
    fast; large organs keep their whole extent in view)."""
    extent = largest_extent(volumes, items)
    return int(np.clip(math.ceil(1.5 * extent / 32) * 32, 128, 256))


def _validate(model, volumes, items, k, prep, device, num_classes) -> list[float]:
    preds, targets = [], []
    for vi in sorted({v for v, _ in items}):
        slices = [s for v, s in items if v == vi]
        preds.append(predict_slices(model, volumes[vi].image, k, prep, device, slices))
        targets.append(volumes[vi].target[slices])
    return dice_per_class(np.concatenate([p.ravel() for p in preds]),
                          np.concatenate([t.ravel() for t in targets]), num_classes)


def _validate_3d(model, volumes, items, prep, device, num_classes, patch, overlap) -> list[float]:
    preds, targets = [], []
    for vi in sorted({v for v, _ in items}):
        slices = [s for v, s in items if v == vi]
        full = predict_volume_3d(model, volumes[vi].image, prep, device, patch, num_classes, overlap)
        preds.append(full[slices])
        targets.append(volumes[vi].target[slices])
    return dice_per_class(np.concatenate([p.ravel() for p in preds]),
                          np.concatenate([t.ravel() for t in targets]), num_classes)


def build_for_training(config: TrainConfig, in_channels: int, num_classes: int):
    """The network to train and its ``manifest['model']`` config (from which a package rebuilds
    it without the pretrained source), plus the pretraining input statistics as ``_pretrain_*``."""
    dims = 3 if config.mode == "3d" else 2
    kind = source_kind(config.backbone)
    if kind == "network":
        if dims != 3:
            raise MedTransferError(f"{config.backbone} is a 3D network; add --mode 3d")
        net = build_network(config.backbone, config.weights, in_channels, num_classes)
        cfg = {"backbone": net.architecture, "kind": "network", "spatial_dims": 3,
               "in_channels": in_channels, "num_classes": num_classes,
               "_pretrain_mean": [0.0], "_pretrain_std": [1.0]}
        if getattr(net, "network_def", None) is not None:
            cfg["network_def"] = net.network_def
        return net, cfg
    encoder = build_encoder(config.backbone, config.weights, in_channels, dims, config.stem)
    model = SegmentationNet(encoder, num_classes, in_channels, spatial_dims=dims)
    cfg = {"backbone": encoder.architecture, "kind": "encoder", "spatial_dims": dims,
           "in_channels": in_channels, "num_classes": num_classes, "stem": config.stem,
           "decoder_channels": list(DECODER_CHANNELS_3D if dims == 3 else DECODER_CHANNELS),
           "_pretrain_mean": list(encoder.pretrain_mean), "_pretrain_std": list(encoder.pretrain_std)}
    return model, cfg


REFERENCE_STATS = "reference_stats.safetensors"


def available_memory_mb(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> float | None:
    """Memory this process may still use: ``MEDTRANSFER_MEMORY_LIMIT_MB`` if set (a cap the user
    chooses, e.g. on a shared workstation), else the system's available memory (Linux), else None.
    (``meminfo`` and ``cgroup`` are where Linux keeps the figures; tests point them elsewhere.)"""
    cap = os.environ.get("MEDTRANSFER_MEMORY_LIMIT_MB")
    if cap:
        try:
            return float(cap)
        except ValueError:
            raise MedTransferError(f"MEDTRANSFER_MEMORY_LIMIT_MB={cap!r} is not a number of MB") from None
    # Linux: MemAvailable (free memory plus what the page cache would give back — "free" alone
    # is near zero on any machine that has read files), within a cgroup's limit if there is one
    try:
        text = Path(meminfo).read_text()
    except OSError:
        return None   # not Linux: no reliable figure, no check
    avail = next((int(line.split()[1]) / 1024 for line in text.splitlines()
                  if line.startswith("MemAvailable:")), None)
    try:
        limit = (Path(cgroup) / "memory.max").read_text().strip()
        used = int((Path(cgroup) / "memory.current").read_text().strip())
        if limit != "max" and avail is not None:
            avail = min(avail, (int(limit) - used) / 2**20)
    except (OSError, ValueError):
        pass
    return avail


def _check_memory(cases, config) -> None:
    """Refuse before any work when the cached training arrays (float32 images + label maps) and
    the largest batch cannot fit, naming the numbers and what to lower."""
    avail = available_memory_mb()
    if avail is None:
        return
    voxels = sum(int(np.prod(c.image.shape)) for c in cases)
    label_voxels = sum(int(np.prod(c.label.shape)) for c in cases if c.label is not None)
    cache_mb = (4 * voxels + label_voxels) / 2**20
    patch = config.patch or (128 if config.mode == "3d" else 256)
    batch = config.batch_size or 2
    spatial = patch ** 3 if config.mode == "3d" else patch ** 2
    # activations of encoder + decoder kept for backpropagation: ~200 floats per input value
    batch_mb = batch * cases[0].channels * (1 if config.mode == "3d" else config.slices) * spatial * 4 * 200 / 2**20
    need = cache_mb * 1.5 + batch_mb       # standardisation makes one transient copy per case
    if need > avail:
        raise MedTransferError(
            f"training needs about {need:.0f} MB ({cache_mb:.0f} MB of cached volumes for {len(cases)} case(s), "
            f"{batch_mb:.0f} MB for a batch of {batch} at patch {patch}) but only {avail:.0f} MB are available; "
            f"use fewer or cropped volumes, a smaller --batch-size or --patch, or --mode 2.5d")


def _check_inputs(cases, volumes, prep, axis, reporter) -> list[dict]:
    """The input check before training: each case against the preprocessing (modality preset,
    the backbone's expected input) and against the other training cases; findings are notes.
    Works on the cached, already standardised volumes; returns each case's intensity profile."""
    from .shift import input_check, intensity_profile, training_reference

    profiles = [intensity_profile(c.image, prep, from_slices_first(v.image if c.image.ndim == 4 else v.image[0], axis))
                for c, v in zip(cases, volumes)]
    for i, c in enumerate(cases):
        others = profiles[:i] + profiles[i + 1:]
        ref = training_reference(others) if others else None
        for w in input_check(c.image, prep, ref, c.case_id, profiles[i]):
            reporter.emit("note", message=f"input check: {w}")
    return profiles


def _shift_reference(model, cases, volumes, profiles, labels, prep, config, patch, device) -> tuple[dict, dict]:
    """What prediction compares new cases with (shift.py): the training images' intensity
    profiles, each structure's voxel fraction per case, the training set's activation statistics
    (the OOD reference, returned as tensors for the package) and the OOD-score calibration from
    contiguous chunks of the training volumes (the trained model, eval mode)."""
    from .case import IGNORE
    from .shift import calibrate_ood, chunk_scores, class_fractions, reference_stats, training_reference

    model.eval()
    fractions = {lab.name: [] for lab in labels}
    for c in cases:
        for name, f in class_fractions(c.label, labels, ignore=IGNORE).items():
            fractions[name].append(round(f, 6))
    stats = reference_stats(model, [v.image for v in volumes], prep, config.mode, config.slices, patch, device)
    scores = []
    for v in volumes:
        scores += chunk_scores(model, v.image, prep, config.mode, config.slices, patch, device, stats)
    ood = calibrate_ood(scores)
    if ood:
        ood["stats_file"] = REFERENCE_STATS
    return ({"reference": training_reference(profiles),
             "fractions": fractions, "ood": ood}, stats)


def _checkpoint(out: Path, model, manifest_base, history, epoch, best, final=False, extra=None,
                extras=None) -> Path:
    manifest = dict(manifest_base, history=history,
                    metrics={"best_val_dice": best if best >= 0 else None, "epoch": epoch, **(extra or {})},
                    complete=final)
    return save_package(out / "model", model, manifest, extras)
