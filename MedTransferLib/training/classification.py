"""Training a classifier (one class per case or per slice)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.augment import augment
from MedTransferLib.data.class_datalist import ClassDatalist, load_class_datalist
from MedTransferLib.data.class_inputs import content_slices, slab_batch, square_resize
from MedTransferLib.data.metrics import classification_metrics
from MedTransferLib.data.orientation import orientation_code, to_order
from MedTransferLib.data.slabs import to_slices_first, with_channels
from MedTransferLib.inference.classify import REFERENCE_STATS
from MedTransferLib.inference.classify import ood_inputs as _ood_inputs
from MedTransferLib.inference.classify import volume_logits as _volume_logits
from MedTransferLib.models.classification import ClassificationNet
from MedTransferLib.training.skeleton import Task

if TYPE_CHECKING:
    from MedTransferLib.training.config import TrainResult


@dataclass
class _Item:
    case: int
    slice: int | None   # None: the whole volume (3D, or a volume label in 2.5D sampled per slice)
    label: int


def entry_in_order(entry, turn):
    """A datalist entry of a case brought into another voxel order: its slice axis and slice
    labels in that order."""
    if turn is None:
        return entry
    axis, slices = turn.slices_forward(entry.slice_axis, list(entry.slice_labels or {}))
    labels = dict(zip(slices, entry.slice_labels.values())) if entry.slice_labels else entry.slice_labels
    return replace(entry, slice_axis=axis, slice_labels=labels)


def _items(entries, images, three_d) -> list[_Item]:
    items = []
    for ci, (e, img) in enumerate(zip(entries, images)):
        if e.slice_labels:
            if three_d:
                raise MedTransferError(f"case '{e.case_id}' has per-slice labels; 3D classification "
                                       f"needs one label per volume (use --mode 2.5d)")
            for s, c in sorted(e.slice_labels.items()):
                if not 0 <= s < img.shape[-3]:
                    raise MedTransferError(f"case '{e.case_id}': labelled slice {s} is outside the "
                                           f"volume (0..{img.shape[-3] - 1} along axis {e.slice_axis})")
                items.append(_Item(ci, s, c))
        elif e.label is not None:
            items.append(_Item(ci, None, e.label))
        else:
            raise MedTransferError(f"case '{e.case_id}' has no class label")
    return items


def _split(items: list[_Item], entries, val_fraction: float, seed: int):
    """Whole cases to validation (stratified by class) when there are several; slices spread
    over the one case otherwise."""
    rng = np.random.default_rng(seed)
    cases = sorted({it.case for it in items})
    if val_fraction <= 0:
        return items, [], "validation: none (validation fraction 0)"
    if len(cases) > 1:
        by_class: dict[int, list[int]] = {}
        for c in cases:
            first = next(it.label for it in items if it.case == c)
            by_class.setdefault(first, []).append(c)
        val = set()
        for members in by_class.values():
            n = int(round(val_fraction * len(members)))
            if len(members) >= 2 and n >= 1:
                val |= set(rng.permutation(members)[:n].tolist())
        if not val:
            return items, [], (f"validation: none ({len(cases)} cases are too few to hold some out "
                                f"per class); training runs all epochs")
        return ([it for it in items if it.case not in val], [it for it in items if it.case in val],
                f"validation: {len(val)} of {len(cases)} cases held out "
                f"({', '.join(entries[c].case_id for c in sorted(val))})")
    step = max(2, int(round(1 / val_fraction)))
    val = items[step // 2::step]
    vs = {id(v) for v in val}
    return ([it for it in items if id(it) not in vs], val,
            f"validation: one case, so {len(val)} of {len(items)} labelled slices are held out")


def train_classifier(data, out, config=None, reporter=None, resume: bool = False) -> "TrainResult":
    """Fine-tune a pretrained encoder + linear head on volume- or slice-level classes."""
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.run import managed_run
    from MedTransferLib.training.skeleton import run

    return managed_run(lambda cfg, resume_now: run(Classification(data), out, cfg, reporter, resume_now),
                       config or TrainConfig(), out, reporter, resume)


class Classification(Task):
    """Classes per volume (2.5D: mean of slice logits; 3D: the whole volume) or per slice,
    scored by balanced accuracy, with calibrated probabilities and an OOD reference."""

    name = "classification"
    metric = "val_balanced_accuracy"

    def __init__(self, data):
        self.data = data

    def check_config(self, config):
        if config.init_from:
            raise MedTransferError("--from continues a segmentation model; to start a classifier from an "
                                   "earlier model use --backbone package:DIR")
        if config.histogram_standardise:
            raise MedTransferError("--histogram-standardise is for segmentation models; classification uses "
                                   "per-image standardisation (and --adapt-bn at prediction)")

    def check_inputs(self, config):
        from MedTransferLib.package.sources import source_kind

        self.dl = self.data if isinstance(self.data, ClassDatalist) else load_class_datalist(self.data)
        if source_kind(config.backbone) != "encoder":
            raise MedTransferError(f"{config.backbone} is a segmentation network; classification needs "
                                   f"an encoder (medtransfer backbones lists them)")

    def prepare(self, config, device, rng, reporter):
        from MedTransferLib.data.preprocessing import make_preprocessing
        from MedTransferLib.package.sources import build_encoder

        dl = self.dl
        self.config, self.device, self.rng = config, device, rng
        self.three_d = three_d = config.mode == "3d"
        pairs = dl.load_cases()
        # one voxel order for the network: the first case's (data/orientation.py)
        self.order = orientation_code(pairs[0][0].geometry)
        self.given = [p[0] for p in pairs]
        cases, turns = to_order(self.given, self.order)
        entries = [entry_in_order(p[1], t) for p, t in zip(pairs, turns)]
        for c in cases:
            if c.channels != cases[0].channels:
                raise MedTransferError(f"case '{c.case_id}' has {c.channels} images, case '{cases[0].case_id}' "
                                       f"{cases[0].channels}; every case needs the same images in the same order")
        self.cases, self.entries = cases, entries
        modality = config.modality if config.modality != "auto" else dl.modality
        num_classes = len(dl.classes)
        self.channels = channels = cases[0].channels
        in_channels = channels * (1 if three_d else config.slices)
        size = config.patch or (96 if three_d else 224)
        if size % 32:
            raise MedTransferError(f"--patch {size} must be a multiple of 32")
        self.model_config = {"backbone": None, "kind": "encoder", "spatial_dims": 3 if three_d else 2,
                             "in_channels": in_channels, "num_classes": num_classes, "stem": config.stem,
                             "head": "linear"}
        self.encoder = encoder = build_encoder(config.backbone, config.weights, in_channels,
                                               self.model_config["spatial_dims"], config.stem)
        self.model_config["backbone"] = encoder.architecture
        self.model = ClassificationNet(encoder, num_classes).to(device)
        self.prep = prep = make_preprocessing(modality, cases[0], encoder.pretrain_mean, encoder.pretrain_std)
        self.images = images = [np.ascontiguousarray(to_slices_first(with_channels(prep.standardise(c.image)),
                                                                     e.slice_axis))
                                for c, e in zip(cases, entries)]
        self.cubes = [square_resize(torch.from_numpy(im)[None], size)[0] for im in images] if three_d else None
        self.contents = [content_slices(im) for im in images]
        items = _items(entries, images, three_d)
        present = sorted({it.label for it in items})
        if len(present) < 2:
            raise MedTransferError(f"the training data hold only class {dl.classes[present[0]]!r}; "
                                   f"label cases of at least two classes")
        self.train_items, self.val_items, self.split_note = _split(items, entries, config.val_fraction, config.seed)
        self.by_class: dict[int, list[_Item]] = {}
        for it in self.train_items:
            self.by_class.setdefault(it.label, []).append(it)
        self.patch = self.size = size
        self.batch_size = config.batch_size or (4 if three_d else 16)
        self.loss_fn, self.rngs, self.has_validation = F.cross_entropy, [rng], bool(self.val_items)

    def next_batch(self):
        xs, ys = [], []
        classes = sorted(self.by_class)
        rng = self.rng
        for _ in range(self.batch_size):
            c = classes[rng.integers(len(classes))]          # classes equally often
            it = self.by_class[c][rng.integers(len(self.by_class[c]))]
            if self.three_d:
                xs.append(self.cubes[it.case])
            else:
                s = it.slice if it.slice is not None else int(rng.choice(self.contents[it.case]))
                xs.append(slab_batch(self.images[it.case], [s], self.config.slices, self.size)[0])
            ys.append(it.label)
        x = torch.stack(xs)
        dummy = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.long)
        x, _ = augment(x, dummy, rng)
        return self.prep.to_backbone(x), torch.tensor(ys)

    def advise(self, config):
        from MedTransferLib.training.advisor import bn_distance, recommend

        pretrained = config.weights not in (None, "none", "random")
        distance = None
        if pretrained:
            images, contents, prep = self.images, self.contents, self.prep
            probe = [prep.to_backbone(slab_batch(images[c], contents[c][::max(1, len(contents[c]) // 16)],
                                                 config.slices, self.size)) if not self.three_d
                     else prep.to_backbone(self.cubes[c][None]) for c in sorted({it.case for it in self.train_items})]
            distance = bn_distance(self.encoder, probe)["distance"]
        name, _, reason = recommend(len(self.train_items), distance, pretrained, config.lr, config.epochs)
        reason = reason.replace("slices with structures", "labelled items")
        return name, reason, {"strategy": name, "reason": reason, "distance": distance,
                              "labelled_items": len(self.train_items)}

    def start_fields(self, config, device):
        return dict(task="classification", device=str(device), modality=self.prep.channel_modalities or self.prep.modality,
                    backbone=config.backbone, mode=config.mode, classes=self.dl.classes,
                    train_items=len(self.train_items), val_items=len(self.val_items))

    def manifest(self, config, device, strategy):
        from MedTransferLib.package.manifest import Inference, Manifest, Slicing
        from MedTransferLib.package.store import array_fingerprint
        from MedTransferLib.training.config import versions

        three_d, dl = self.three_d, self.dl
        return Manifest(
            task="classification", mode=config.mode, labels=list(dl.labels()), classes=list(dl.classes),
            preprocessing=self.prep, model=self.model_config,
            slicing=Slicing(self.entries[0].slice_axis, 1 if three_d else config.slices, self.channels, self.order),
            inference=Inference(size=self.size, aggregation="mean of slice logits" if not three_d else "whole volume"),
            strategy=strategy,
            training={**asdict(config), "device": str(device), "patch": self.size, "batch_size": self.batch_size},
            provenance={"inputs": [{"case_id": c.case_id, "fingerprint": array_fingerprint(c.image)}
                                   for c in self.given],
                        "split": self.split_note, "versions": versions(), "seed": config.seed},
        )

    def item_logits(self, its):
        model, prep, device, k, size = self.model, self.prep, self.device, self.config.slices, self.size
        model.eval()
        out, truth = [], []
        with torch.inference_mode():
            for it in its:
                if self.three_d:
                    logits = model(prep.to_backbone(self.cubes[it.case][None].to(device))).float()
                elif it.slice is not None:
                    logits = model(prep.to_backbone(slab_batch(self.images[it.case], [it.slice], k,
                                                               size).to(device))).float()
                else:
                    logits = _volume_logits(model, self.images[it.case], self.contents[it.case], k, size,
                                            prep, device)
                out.append(logits.mean(0).cpu().numpy())
                truth.append(it.label)
        return np.array(out), np.array(truth)

    def validate(self):
        from MedTransferLib.training.hooks import Validation

        logits, truth = self.item_logits(self.val_items)
        m = classification_metrics(torch.softmax(torch.from_numpy(logits), 1).numpy(), truth, self.dl.classes)
        return Validation(m["balanced_accuracy"], {"val_auc": m["auc"], "val_accuracy": m["accuracy"]},
                          {"val_auc": m["auc"], "val_accuracy": m["accuracy"]})

    def adapt_inputs(self):
        prep = self.prep
        for c in sorted({it.case for it in self.train_items}):
            if self.three_d:
                yield prep.to_backbone(self.cubes[c][None])
            else:
                for i in range(0, len(self.contents[c]), 8):
                    yield prep.to_backbone(slab_batch(self.images[c], self.contents[c][i:i + 8],
                                                      self.config.slices, self.size))

    def finish_steps(self) -> float:
        return 2.0 + 3.0 * len(self.images)

    def finish(self, out, manifest, history, metrics, device):
        from MedTransferLib.package.store import save_package

        ood, stats = ood_reference(self.model, self.images, self.contents, self.cubes, self.config.slices,
                                   self.size, self.prep, device)
        manifest = replace(manifest, history=history, metrics=metrics, complete=True,
                           calibration=_calibration(self.item_logits, self.val_items, len(self.dl.classes)),
                           shift={"ood": ood})
        return save_package(out / "model", self.model, manifest, {REFERENCE_STATS: stats} if stats else None)


def ood_reference(model, images, contents, cubes, k, size, prep, device) -> tuple[dict, dict]:
    """The training volumes' activation statistics (the OOD reference) and the score calibration:
    quarters of each volume's content slices (2.5D) or each training volume (3D)."""
    from MedTransferLib.shift.ood import activation_stats, calibrate_ood, stats_distance

    cubes = cubes or [None] * len(images)

    def batches(idx):
        for c in idx:
            yield from _ood_inputs(images[c], contents[c], k, size, cubes[c], prep, device)

    stats = activation_stats(model, batches(range(len(images))))
    if not stats:
        return {}, {}
    scores = []
    for c in range(len(images)):
        if cubes[c] is not None:
            scores.append(stats_distance(activation_stats(model, _ood_inputs(images[c], contents[c], k, size, cubes[c],
                                                                             prep, device)), stats))
            continue
        for part in np.array_split(np.asarray(contents[c]), 4):
            if len(part):
                scores.append(stats_distance(activation_stats(
                    model, _ood_inputs(images[c], part, k, size, None, prep, device)), stats))
    ood = calibrate_ood(scores)
    if ood:
        ood["stats_file"] = REFERENCE_STATS
    return ood, stats


def _calibration(item_logits, val_items, n_classes: int) -> dict:
    """Temperature (fit on the validation logits) and the validation confusion P(ŷ | y), for
    calibrated probabilities and prior-shift correction (shift.py). Training samples every class
    equally often, so the network's own prior is uniform."""
    cal = {"source_prior": [1.0 / n_classes] * n_classes, "temperature": 1.0}
    if not val_items:
        cal["note"] = "no validation cases: temperature 1, no confusion matrix (BBSE unavailable)"
        return cal
    from MedTransferLib.shift.calibration import fit_temperature

    logits, truth = item_logits(val_items)
    t = fit_temperature(logits, truth)
    pred = (logits / t).argmax(1)
    conf = np.zeros((n_classes, n_classes))
    for j in range(n_classes):
        m = truth == j
        if m.any():
            conf[:, j] = np.bincount(pred[m], minlength=n_classes) / m.sum()
    cal.update(temperature=t, confusion=conf.round(4).tolist(), validation_items=int(len(truth)),
               validation_counts=np.bincount(truth, minlength=n_classes).tolist())
    return cal
