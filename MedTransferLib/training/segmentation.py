"""Training a segmentation model: the segmentation part of the training skeleton
(:mod:`.skeleton`) — data, network, batches, validation by Dice, the package with its shift
references."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from MedTransferLib.core import distributed
from MedTransferLib.core.case import Case
from MedTransferLib.core.device import memory_format
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.augment import augment
from MedTransferLib.data.orientation import orientation_code, to_order
from MedTransferLib.data.preprocessing import make_preprocessing
from MedTransferLib.data.sampling import (
    PatchSampler3D,
    SlabSampler,
    bn_inputs_2d,
    bn_inputs_3d,
)
from MedTransferLib.data.slabs import (
    Volume,
    auto_patch_3d,
    from_slices_first,
    largest_extent,
)
from MedTransferLib.data.split import split_train_val
from MedTransferLib.inference.windows import (
    dice_per_class,
    predict_slices,
    predict_volume_3d,
)
from MedTransferLib.models.segmentation import SegmentationNet
from MedTransferLib.package.manifest import Inference, Manifest, Slicing
from MedTransferLib.package.store import array_fingerprint, save_package
from MedTransferLib.training.config import TrainConfig, TrainResult
from MedTransferLib.training.config import versions as _versions
from MedTransferLib.training.hooks import Validation
from MedTransferLib.training.losses import loss_function
from MedTransferLib.training.run import check_memory, managed_run
from MedTransferLib.training.skeleton import Task, run
from MedTransferLib.training.start import build_for_training, continued


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


def train(cases: list[Case], labels: list[Label], out, config: TrainConfig | None = None,
          reporter: Reporter | None = None, axis_from_data: int = 2, resume: bool = False) -> TrainResult:
    """Fine-tune a pretrained segmentation network on ``cases``; write the model to ``out``
    (checked, locked and labelled with its state: :mod:`~MedTransferLib.core.rundir`).

    Example:
        >>> dl = load_datalist("dataset.json")                      # doctest: +SKIP
        >>> result = train(dl.load_cases(), dl.labels, "runs/a")    # doctest: +SKIP
    """
    return managed_run(lambda cfg, resume_now: run(Segmentation(cases, labels, axis_from_data), out, cfg, reporter,
                                                    resume_now), config or TrainConfig(), out, reporter, resume)


class Segmentation(Task):
    """Segmentation on sparse slice labels (2.5D slabs or 3D patches), scored by Dice."""

    name = "segmentation"
    metric = "val_dice"

    def __init__(self, cases: list[Case], labels: list[Label], axis_from_data: int = 2):
        self.cases, self.labels, self.axis_from_data = cases, labels, axis_from_data

    def check_inputs(self, config):
        self.start = continued(config, self.labels, self.cases[0].channels) if config.init_from else None
        if self.start is not None:   # recorded as what the run starts from
            config.backbone, config.weights = self.start.manifest.model["backbone"], str(self.start.path)
        self.axis = (self.start.axis if self.start is not None else
                     self.axis_from_data if config.axis is None else config.axis)
        # one voxel order for the network: the continued model's, else the first case's (data/orientation.py)
        self.order = self.start.manifest.slicing.orientation if self.start else orientation_code(self.cases[0].geometry)
        self.given, (self.cases, self.turns) = self.cases, to_order(self.cases, self.order)
        _check_labels(self.cases, self.labels, self.axis)

    def prepare(self, config, device, rng, reporter):
        cases, labels, axis = self.cases, self.labels, self.axis
        self.config, self.device, self.rng = config, device, rng
        rank = distributed.rank()
        self.three_d = three_d = config.mode == "3d"
        num_classes = self.num_classes = len(labels) + 1
        channels = self.channels = cases[0].channels
        in_channels = channels * (1 if three_d else config.slices)
        if self.start is not None:   # the earlier model whole, and its intensity recipe
            model, self.model_config, prep = self.start.build_model(), dict(self.start.manifest.model), self.start.preprocessing
        else:
            model, self.model_config = build_for_training(config, in_channels, num_classes)
            prep = make_preprocessing(config.modality, cases[0], self.model_config.pop("_pretrain_mean"),
                                      self.model_config.pop("_pretrain_std"))
        if config.histogram_standardise and self.start is None:
            if prep.modality != "MR" or channels != 1:
                raise MedTransferError("--histogram-standardise is for MR models with one image per case; "
                                       f"these images are {prep.channel_modalities or prep.modality}")
            from MedTransferLib.data.histogram import learn_landmarks

            prep = replace(prep, histogram_landmarks=learn_landmarks([c.image for c in cases]))
        self.prep = prep
        values = [lab.value for lab in labels]
        check_memory(cases, config)
        volumes = self.volumes = [Volume.from_case(c, prep, axis, values) for c in cases]
        self.profiles = _check_inputs(cases, volumes, prep, axis, reporter)
        self.train_items, self.val_items, self.split_note = split_train_val(volumes, config.val_fraction, config.seed, config.brief_continuation)
        train_items = self.train_items
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
            self.sampler = PatchSampler3D(volumes, train_items, num_classes, patch, seed=config.seed + rank)
        else:
            patch = config.patch or auto_patch(volumes, train_items)
            if patch < model.multiple:   # padded up to it: a tiny crop buys a huge batch of padding
                raise MedTransferError(f"--patch {patch} is below {config.backbone}'s {model.multiple} pixels; use "
                                       f"--patch {model.multiple} or more, or leave it out (automatic)")
            batch_size = config.batch_size or max(2, round(16 * (128 / patch) ** 2))
            self.sampler = SlabSampler(volumes, train_items, config.slices, num_classes, patch,
                                       seed=config.seed + rank)
            if config.small_batch_epochs and self.start is None and device.type == "cpu" and not config.batch_size:
                self.small_first = batch_size // 2   # a new run starts on half batches (hooks.SmallBatchesFirst)
        self.patch, self.batch_size = patch, batch_size
        model = model.to(device)
        fmt = memory_format(device, 3 if three_d else 2)
        if fmt is not None:
            model = model.to(memory_format=fmt)
        self.model, self.loss_fn = model, loss_function()
        self.rngs, self.has_validation = [rng, self.sampler.rng], bool(self.val_items)

    def advise(self, config):
        if self.start is not None:
            reason = "continuing a model trained on this task: every layer already fits it, all adapt together"
            return "finetune", reason, {"strategy": "finetune", "reason": reason}
        from MedTransferLib.training.advisor import advise

        advice = advise(self.cases, self.labels, config.backbone, config.weights, config.mode, config.slices,
                        self.axis, config.modality, config.lr, epochs=config.epochs)
        return advice.strategy, advice.reason, advice.to_dict()

    def start_fields(self, config, device):
        prep = self.prep
        return dict(device=str(device), modality=prep.channel_modalities or prep.modality, backbone=config.backbone,
                    mode=config.mode, weights=config.weights or "none", train_slices=len(self.train_items),
                    val_slices=len(self.val_items))

    def notes(self, config, reporter):
        if self.three_d:
            sp = self.cases[0].geometry.spacing            # (i, j, k) in mm
            thick, fine = sp[self.axis], min(v for i, v in enumerate(sp) if i != self.axis)
            if thick > 3 * fine:
                reporter.emit("note", message=f"voxels are {thick / fine:.1f}× longer along the slice axis "
                                              f"({thick:g} vs {fine:g} mm): 3D patches and strides are in "
                                              f"voxels, so context along that axis is wide and coarse; "
                                              f"for thick-slice data --mode 2.5d is usually better")
        report = getattr(self.model, "transfer_report", None)
        if report:
            reporter.emit("note", message=f"{config.backbone}: {report['loaded']} weight tensors kept, "
                                          f"{len(report['reinitialised'])} re-initialised for this task "
                                          f"({', '.join(report['reinitialised'][:4])})")

    def manifest(self, config, device, strategy):
        three_d, patch, axis = self.three_d, self.patch, self.axis
        return Manifest(
            task="segmentation", mode=config.mode, labels=list(self.labels), preprocessing=self.prep,
            model=self.model_config, slicing=Slicing(axis, 1 if three_d else config.slices, self.channels, self.order),
            inference=Inference(patch=list(patch), overlap=config.overlap) if three_d else Inference(),
            strategy=strategy,
            training={**asdict(config), "axis": axis, "device": str(device),
                      "patch": list(patch) if three_d else patch, "batch_size": self.batch_size,
                      "first_batch_size": self.small_first},
            provenance={
                "inputs": [{"case_id": c.case_id, "fingerprint": array_fingerprint(c.image, c.label),
                            "labelled_slices": len(c.labelled_slices(axis))} for c in self.given],
                "split": self.split_note, "versions": _versions(), "seed": config.seed,
            },
        )

    def next_batch(self):
        images, targets = self.sampler.sample(self.batch_size)
        x, y = torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64))
        if self.device.type == "cuda":   # augmented there: most of a batch's preparation on a CPU (augment)
            x, y = x.to(self.device), y.to(self.device)
        x, y = augment(x, y, self.rng)
        return self.prep.to_backbone(x), y

    def validate(self) -> Validation:
        c = self.config
        args = (self.model, self.volumes, self.val_items)
        scores = (_validate_3d(*args, self.prep, self.device, self.num_classes, self.patch, c.overlap) if self.three_d
                  else _validate(*args, c.slices, self.prep, self.device, self.num_classes))
        finite = [s for s in scores if not math.isnan(s)]
        per_class = {lab.name: s for lab, s in zip(self.labels, scores)}
        return Validation(float(np.mean(finite)) if finite else 0.0, {"val_dice_per_class": per_class},
                          {"per_class": per_class})

    def adapt_inputs(self):
        for vi in sorted({v for v, _ in self.train_items}):
            if self.three_d:
                yield from bn_inputs_3d(self.volumes[vi].image, self.patch, self.prep, seed=self.config.seed)
            else:
                yield from bn_inputs_2d(self.volumes[vi].image, self.config.slices, self.prep)

    def preview_target(self):
        from MedTransferLib.training.preview import SlicePreview

        def predict(case, slices):
            image = self.volumes[case].image
            if self.three_d:   # a sliding window predicts the volume, not a slice alone
                return predict_volume_3d(self.model, image, self.prep, self.device, self.patch, self.num_classes,
                                         self.config.overlap)[slices]
            return predict_slices(self.model, image, self.config.slices, self.prep, self.device, slices,
                                  probabilities=True)

        return SlicePreview(self.cases, self.axis, [lab.value for lab in self.labels], predict, self.three_d, self.turns)

    def on_best(self, out, manifest):
        return lambda hist, epoch, best: _checkpoint(out, self.model, manifest, hist, epoch, best)

    def finish(self, out, manifest, history, metrics, device):
        best = metrics["best_val_dice"] if metrics["best_val_dice"] is not None else -1.0
        manifest.shift, stats = _shift_reference(self.model, self.cases, self.volumes, self.profiles, self.labels,
                                                 self.prep, self.config, self.patch if self.three_d else None,
                                                 device)
        return _checkpoint(out, self.model, manifest, history, history[-1]["epoch"], best, final=True,
                           extra=metrics, extras={REFERENCE_STATS: stats} if stats else None)


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


REFERENCE_STATS = "reference_stats.safetensors"


def _check_inputs(cases, volumes, prep, axis, reporter) -> list[dict]:
    """The input check before training: each case against the preprocessing (modality preset,
    the backbone's expected input) and against the other training cases; findings are notes.
    Works on the cached, already standardised volumes; returns each case's intensity profile."""
    from MedTransferLib.shift.input_check import (
        input_check,
        intensity_profile,
        training_reference,
    )

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
    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.shift.input_check import training_reference
    from MedTransferLib.shift.ood import calibrate_ood, chunk_scores, reference_stats
    from MedTransferLib.shift.prior import class_fractions

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
    manifest = replace(manifest_base, history=history,
                       metrics={"best_val_dice": best if best >= 0 else None, "epoch": epoch, **(extra or {})},
                       complete=final)
    return save_package(out / "model", model, manifest, extras)

