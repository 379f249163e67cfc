"""Classification: one label per volume or per slice, with the same pretrained encoders.

Datalist (``dataset.json``)::

    {"task": "classification", "classes": ["normal", "lesion"], "modality": "MR",
     "training": [{"image": "a.nii.gz", "label": "lesion"},              # per volume (name or index)
                  {"image": "b.nii.gz", "slice_labels": {"40": 0, "41": 1}, "slice_axis": 2}],
     "test": [{"image": "c.nii.gz", "label": 0}]}

or a CSV with columns ``image,label`` (per volume) or ``image,slice,label`` (per slice).

- **2.5D**: k adjacent slices → 2D encoder → global average pool → linear head. A volume's
  prediction is the **mean of its slice logits** over the slices with content: with volume
  labels every slice is trained towards the volume's class, so the mean is the matching
  estimator and is robust to a few odd slices (max would let one noisy slice decide; attention
  pooling — multiple-instance learning — pays off for small findings and is future work).
- **3D**: the whole volume, padded to a cube and resampled to ``patch``³ voxels → 3D encoder
  (inflated or MedicalNet) → pooled linear head.

Training balances the classes by sampling (each class equally often), so a rare class is learned;
the predicted probabilities therefore assume equal class priors.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .case import Case
from .datalist import resolve_within
from .dataset import augment, gather_slabs, to_slices_first, with_channels
from .errors import MedTransferError
from .labels import Label, default_color

if TYPE_CHECKING:
    from .trainer import TrainResult

_FIX = "see 'Classification' in the README"


# ---- data -----------------------------------------------------------------------------------

@dataclass
class ClassEntry:
    image: Path | list[Path]                    # a list: co-registered images, one channel each
    label: int | None = None                    # per-volume class index
    slice_labels: dict[int, int] | None = None  # per-slice class indices
    slice_axis: int = 2
    case_id: str = ""


@dataclass
class ClassDatalist:
    classes: list[str]
    training: list[ClassEntry]
    test: list[ClassEntry] = field(default_factory=list)
    modality: str | tuple = "auto"
    path: Path | None = None

    def labels(self) -> list[Label]:
        return [Label(i, name, default_color(i)) for i, name in enumerate(self.classes)]

    def load_cases(self, entries=None) -> list[tuple[Case, ClassEntry]]:
        from .io import read_case

        return [(read_case(e.image, None, e.case_id), e) for e in (self.training if entries is None else entries)]


def is_classification(path) -> bool:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("task") == "classification"


def _class_index(value, classes: list[str], where: str, path) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.strip() not in classes:
        value = int(value)
    if isinstance(value, int):
        if 0 <= value < len(classes):
            return value
        raise MedTransferError(f"datalist '{path}': {where} class {value} is out of range "
                               f"(0..{len(classes) - 1}); {_FIX}")
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    raise MedTransferError(f"datalist '{path}': {where} label {value!r} is not one of the classes "
                           f"{classes}; {_FIX}")


def load_class_datalist(path) -> ClassDatalist:
    """Read a classification ``dataset.json`` or CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"datalist '{path}' does not exist; give a classification dataset.json or CSV")
    root = path.parent
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    classes = data.get("classes")
    if isinstance(classes, dict):
        classes = [classes[k] for k in sorted(classes, key=int)]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise MedTransferError(f"datalist '{path}': 'classes' must list at least two class names, "
                               f"e.g. [\"normal\", \"lesion\"]; {_FIX}")
    from .datalist import parse_modality

    modality = parse_modality(data.get("modality", "auto"), path)

    def entries(section, need):
        out = []
        for i, raw in enumerate(data.get(section) or []):
            where = f"{section}[{i}]"
            raw_image = raw.get("image") if isinstance(raw, dict) else None
            names = raw_image if isinstance(raw_image, list) else [raw_image]
            if not names or not all(isinstance(n, str) and n for n in names):
                raise MedTransferError(f"datalist '{path}': {where} needs an 'image' path (or a list "
                                       f"of co-registered images); {_FIX}")
            paths = [resolve_within(n, root, f"{path}: {section}[{i}].image") for n in names]
            image = paths if isinstance(raw_image, list) else paths[0]
            label = slices = None
            if raw.get("slice_labels") is not None:
                sl = raw["slice_labels"]
                if not isinstance(sl, dict) or not sl:
                    raise MedTransferError(f"datalist '{path}': {where}.slice_labels must map slice "
                                           f"indices to classes; {_FIX}")
                try:
                    slices = {int(k): _class_index(v, classes, f"{where}.slice_labels[{k}]", path)
                              for k, v in sl.items()}
                except ValueError:
                    raise MedTransferError(f"datalist '{path}': {where}.slice_labels keys must be "
                                           f"slice indices") from None
            elif "label" in raw:
                label = _class_index(raw["label"], classes, where, path)
            elif need:
                raise MedTransferError(f"datalist '{path}': {where} has neither 'label' nor "
                                       f"'slice_labels'; {_FIX}")
            axis = raw.get("slice_axis", 2)
            if axis not in (0, 1, 2):
                raise MedTransferError(f"datalist '{path}': {where}.slice_axis must be 0, 1 or 2")
            out.append(ClassEntry(image, label, slices, axis, str(raw.get("id") or paths[0].name.split(".")[0])))
        return out

    training = entries("training", True)
    if not training:
        raise MedTransferError(f"datalist '{path}': 'training' lists no case; {_FIX}")
    return ClassDatalist([str(c) for c in classes], training, entries("test", False), modality, path)


def _load_csv(path: Path) -> ClassDatalist:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise MedTransferError(f"CSV '{path}' needs the columns image,label (per volume) or "
                               f"image,slice,label (per slice); {_FIX}")
    raw_labels = [r["label"].strip() for r in rows]
    numeric = all(v.lstrip("-").isdigit() for v in raw_labels)
    classes = ([f"class_{i}" for i in range(max(int(v) for v in raw_labels) + 1)] if numeric
               else sorted(set(raw_labels)))
    if len(classes) < 2:
        raise MedTransferError(f"CSV '{path}' has a single class; classification needs two or more")
    by_image: dict[str, ClassEntry] = {}
    for i, r in enumerate(rows):
        img = resolve_within(r["image"], path.parent, f"{path}: row {r.get('image')}")
        cls = _class_index(int(raw_labels[i]) if numeric else raw_labels[i], classes, f"row {i + 2}", path)
        e = by_image.setdefault(str(img), ClassEntry(img, None, None, 2, img.name.split(".")[0]))
        if r.get("slice", "").strip():
            e.slice_labels = {**(e.slice_labels or {}), int(r["slice"]): cls}
        else:
            e.label = cls
    return ClassDatalist(classes, list(by_image.values()), [], "auto", path)


# ---- model ----------------------------------------------------------------------------------

class ClassificationNet(nn.Module):
    """Encoder → global average pooling of the deepest features → dropout → linear head."""

    multiple = 32

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.spatial_dims = encoder.spatial_dims
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.channels[-1], num_classes)

    def forward(self, x):
        f = self.encoder(x)[-1]
        return self.head(self.dropout(torch.flatten(f.mean(dim=tuple(range(2, f.ndim))), 1)))

    def stages(self):
        return self.encoder.stages()


def build_classifier(config: dict, weights=None) -> ClassificationNet:
    from .backbones import build_encoder

    enc = build_encoder(config["backbone"], weights, int(config["in_channels"]),
                        int(config.get("spatial_dims", 2)), config.get("stem", "mean"))
    return ClassificationNet(enc, int(config["num_classes"]))


# ---- inputs ---------------------------------------------------------------------------------

def content_slices(image: np.ndarray) -> np.ndarray:
    """Slices (of a slices-first standardised volume) that hold more than air: their spread
    is at least a tenth of the volume's."""
    first = with_channels(image)[0]                  # judged on the first image
    spread = first.reshape(first.shape[0], -1).std(axis=1)
    keep = np.nonzero(spread >= 0.1 * float(first.std()))[0]
    return keep if len(keep) else np.arange(first.shape[0])


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad the spatial dims of ``(N, C, *spatial)`` to a square/cube (with the minimum), then
    resample to ``size`` per side: keeps the aspect ratio."""
    spatial = x.shape[2:]
    edge = max(spatial)
    pads = []
    for s in reversed(spatial):
        before = (edge - s) // 2
        pads += [before, edge - s - before]
    fill = float(x.amin())
    x = F.pad(x - fill, pads) + fill
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(x, size=(size,) * len(spatial), mode=mode, align_corners=False)


def slab_batch(image: np.ndarray, slices, k: int, size: int) -> torch.Tensor:
    return square_resize(torch.from_numpy(gather_slabs(image, slices, k)), size)


# ---- metrics --------------------------------------------------------------------------------

def classification_metrics(probs: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro one-vs-rest ROC AUC (MONAI's ``compute_roc_auc``) and
    the confusion matrix (rows = truth, columns = prediction)."""
    from monai.metrics import compute_roc_auc

    probs, truth = np.asarray(probs, np.float64), np.asarray(truth, int)
    pred = probs.argmax(1)
    n = len(classes)
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (truth, pred), 1)
    present = confusion.sum(1) > 0
    recall = np.diag(confusion)[present] / confusion.sum(1)[present]
    auc = float("nan")
    if present.sum() >= 2:
        onehot = np.eye(n)[truth]
        cols = [c for c in range(n) if 0 < onehot[:, c].sum() < len(truth)]
        if cols:
            auc = float(compute_roc_auc(torch.from_numpy(probs[:, cols]), torch.from_numpy(onehot[:, cols]),
                                        average="macro")) if len(cols) > 1 else \
                float(compute_roc_auc(torch.from_numpy(probs[:, cols[0]]), torch.from_numpy(onehot[:, cols[0]])))
    return {"n": int(len(truth)), "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
            "balanced_accuracy": float(recall.mean()) if len(recall) else float("nan"),
            "auc": auc, "confusion": confusion.tolist(), "classes": list(classes)}


# ---- training -------------------------------------------------------------------------------

@dataclass
class _Item:
    case: int
    slice: int | None   # None: the whole volume (3D, or a volume label in 2.5D sampled per slice)
    label: int


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
    from .trainer import TrainConfig, managed_run

    return managed_run(lambda cfg, resume_now: _train_classifier(data, out, cfg, reporter, resume_now),
                       config or TrainConfig(), out, reporter, resume)


def _train_classifier(data, out, config=None, reporter=None, resume: bool = False) -> "TrainResult":
    from .backbones import source_kind
    from .device import resolve_device
    from .loop import STATE_DIR, Optimisation, Validation, fit
    from .package import array_fingerprint, save_package
    from .trainer import make_preprocessing
    from .progress import Reporter
    from .strategies import get_strategy
    from .trainer import TrainConfig, TrainResult, _versions, seed_everything

    from dataclasses import replace

    config = replace(config) if config else TrainConfig()   # a copy: 'auto' is resolved in it
    if config.histogram_standardise:
        raise MedTransferError("--histogram-standardise is for segmentation models; classification uses "
                               "per-image standardisation (and --adapt-bn at prediction)")
    config.check()
    from . import distributed

    main = distributed.is_main()
    reporter = reporter if (reporter and main) else Reporter(stream=None, bar=False)   # rank 0 speaks
    dl = data if isinstance(data, ClassDatalist) else load_class_datalist(data)
    if source_kind(config.backbone) != "encoder":
        raise MedTransferError(f"{config.backbone} is a segmentation network; classification needs "
                               f"an encoder (medtransfer backbones lists them)")
    out = Path(out)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed + distributed.rank())   # each process its own batches
    three_d = config.mode == "3d"
    pairs = dl.load_cases()
    cases, entries = [p[0] for p in pairs], [p[1] for p in pairs]
    for c in cases:
        if c.channels != cases[0].channels:
            raise MedTransferError(f"case '{c.case_id}' has {c.channels} images, case '{cases[0].case_id}' "
                                   f"{cases[0].channels}; every case needs the same images in the same order")
    modality = config.modality if config.modality != "auto" else dl.modality
    num_classes = len(dl.classes)
    channels = cases[0].channels
    in_channels = channels * (1 if three_d else config.slices)
    size = config.patch or (96 if three_d else 224)
    if size % 32:
        raise MedTransferError(f"--patch {size} must be a multiple of 32")
    model_config = {"backbone": None, "kind": "encoder", "spatial_dims": 3 if three_d else 2,
                    "in_channels": in_channels, "num_classes": num_classes, "stem": config.stem,
                    "head": "linear"}
    from .backbones import build_encoder

    encoder = build_encoder(config.backbone, config.weights, in_channels, model_config["spatial_dims"], config.stem)
    model_config["backbone"] = encoder.architecture
    model = ClassificationNet(encoder, num_classes).to(device)
    prep = make_preprocessing(modality, cases[0], encoder.pretrain_mean, encoder.pretrain_std)
    modality = prep.channel_modalities or prep.modality
    images = [np.ascontiguousarray(to_slices_first(with_channels(prep.standardise(c.image)), e.slice_axis))
              for c, e in zip(cases, entries)]
    cubes = ([square_resize(torch.from_numpy(im)[None], size)[0] for im in images] if three_d else None)
    contents = [content_slices(im) for im in images]
    items = _items(entries, images, three_d)
    present = sorted({it.label for it in items})
    if len(present) < 2:
        raise MedTransferError(f"the training data hold only class {dl.classes[present[0]]!r}; "
                               f"label cases of at least two classes")
    train_items, val_items, split_note = _split(items, entries, config.val_fraction, config.seed)
    by_class: dict[int, list[_Item]] = {}
    for it in train_items:
        by_class.setdefault(it.label, []).append(it)
    batch_size = config.batch_size or (4 if three_d else 16)

    def batch():
        xs, ys = [], []
        classes = sorted(by_class)
        for _ in range(batch_size):
            c = classes[rng.integers(len(classes))]          # classes equally often
            it = by_class[c][rng.integers(len(by_class[c]))]
            if three_d:
                xs.append(cubes[it.case])
            else:
                s = it.slice if it.slice is not None else int(rng.choice(contents[it.case]))
                xs.append(slab_batch(images[it.case], [s], config.slices, size)[0])
            ys.append(it.label)
        x = torch.stack(xs)
        dummy = torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.long)
        x, _ = augment(x, dummy, rng)
        return x, torch.tensor(ys)

    advice = None
    if config.strategy == "auto":
        from .advisor import bn_distance, recommend

        pretrained = config.weights not in (None, "none", "random")
        distance = None
        if pretrained:
            probe = [prep.to_backbone(slab_batch(images[c], contents[c][::max(1, len(contents[c]) // 16)],
                                                 config.slices, size)) if not three_d
                     else prep.to_backbone(cubes[c][None]) for c in sorted({it.case for it in train_items})]
            distance = bn_distance(encoder, probe)["distance"]
        name, _, reason = recommend(len(train_items), distance, pretrained, config.lr, config.epochs)
        advice = {"strategy": name, "reason": reason.replace("slices with structures", "labelled items"),
                  "distance": distance, "labelled_items": len(train_items)}
        config.strategy = name
    strategy = get_strategy(config.strategy)
    opt = Optimisation(model, strategy, config)
    info = opt.info
    reporter.emit("start", task="classification", device=str(device), modality=modality,
                  backbone=config.backbone, mode=config.mode, classes=dl.classes,
                  train_items=len(train_items), val_items=len(val_items), steps_total=opt.total,
                  patch=size, batch_size=batch_size, param_groups=opt.summary(), **info)
    reporter.emit("note", message=split_note)
    if advice:
        reporter.emit("note", message=f"strategy auto → {advice['strategy']}: {advice['reason']}")
    manifest_base = {
        "task": "classification", "mode": config.mode,
        "labels": [lab.to_dict() for lab in dl.labels()],
        "classes": dl.classes, "preprocessing": prep.to_dict(),
        "model": model_config,
        "slicing": {"axis": entries[0].slice_axis, "slices": 1 if three_d else config.slices, "channels": channels},
        "inference": {"size": size, "aggregation": "mean of slice logits" if not three_d else "whole volume"},
        "strategy": {**info, "param_groups": opt.summary(), **({"advice": advice} if advice else {})},
        "training": {**asdict(config), "device": str(device), "patch": size, "batch_size": batch_size},
        "provenance": {"inputs": [{"case_id": c.case_id, "fingerprint": array_fingerprint(c.image)} for c in cases],
                       "split": split_note, "versions": _versions(), "seed": config.seed},
    }

    def item_logits(its):
        model.eval()
        out, truth = [], []
        with torch.inference_mode():
            for it in its:
                if three_d:
                    logits = model(prep.to_backbone(cubes[it.case][None].to(device))).float()
                elif it.slice is not None:
                    logits = model(prep.to_backbone(slab_batch(images[it.case], [it.slice], config.slices,
                                                               size).to(device))).float()
                else:
                    logits = _volume_logits(model, images[it.case], contents[it.case], config.slices, size,
                                            prep, device)
                out.append(logits.mean(0).cpu().numpy())
                truth.append(it.label)
        return np.array(out), np.array(truth)

    def evaluate_items(its):
        logits, truth = item_logits(its)
        return classification_metrics(torch.softmax(torch.from_numpy(logits), 1).numpy(), truth, dl.classes)

    def next_batch():
        x, y = batch()
        return prep.to_backbone(x), y

    def validate() -> Validation:
        m = evaluate_items(val_items)
        return Validation(m["balanced_accuracy"], {"val_auc": m["auc"], "val_accuracy": m["accuracy"]},
                          {"val_auc": m["auc"], "val_accuracy": m["accuracy"]})

    def adapt_inputs():
        for c in sorted({it.case for it in train_items}):
            if three_d:
                yield prep.to_backbone(cubes[c][None])
            else:
                for i in range(0, len(contents[c]), 8):
                    yield prep.to_backbone(slab_batch(images[c], contents[c][i:i + 8], config.slices, size))

    history, metrics = fit(model, strategy, opt, config, device, next_batch, F.cross_entropy, reporter,
                           validate if val_items else None, "val_balanced_accuracy", None, adapt_inputs,
                           state_dir=out / STATE_DIR if main else None, rngs=[rng], resume=resume)
    if not main:   # rank 0 writes the package; the others hold the same model
        distributed.barrier()
        return TrainResult(out / "model", metrics, history)
    ood, stats = _ood_reference(model, images, contents, cubes, config.slices, size, prep, device)
    manifest = dict(manifest_base, history=history, metrics=metrics, complete=True,
                    calibration=_calibration(item_logits, val_items, len(dl.classes)), shift={"ood": ood})
    package = save_package(out / "model", model, manifest, {REFERENCE_STATS: stats} if stats else None)
    reporter.emit("done", package=str(package), message=f"model written to {package}", **metrics)
    distributed.barrier()
    return TrainResult(package, metrics, history)


REFERENCE_STATS = "reference_stats.safetensors"


def _ood_inputs(image, content, k, size, cube, prep, device):
    """What the OOD score of a classified volume measures: the classifier's own inputs — up to
    24 content slabs (2.5D) or the resized volume (3D)."""
    if cube is not None:
        yield prep.to_backbone(cube[None].to(device))
        return
    chosen = content[:: max(1, len(content) // 24)]
    for i in range(0, len(chosen), 8):
        yield prep.to_backbone(slab_batch(image, chosen[i:i + 8], k, size).to(device))


def _ood_reference(model, images, contents, cubes, k, size, prep, device) -> tuple[dict, dict]:
    """The training volumes' activation statistics (the OOD reference) and the score calibration:
    quarters of each volume's content slices (2.5D) or each training volume (3D)."""
    from .shift import activation_stats, calibrate_ood, stats_distance

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
    from .shift import fit_temperature

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


def _volume_logits(model, image, slices, k, size, prep, device, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(slices), batch):
        x = slab_batch(image, slices[i:i + batch], k, size)
        out.append(model(prep.to_backbone(x.to(device))).float())
    return torch.cat(out)


# ---- prediction -----------------------------------------------------------------------------

@torch.inference_mode()
def predict_class(package, case: Case, device: str = "auto", slices=None, per_slice: bool = False,
                  model: nn.Module | None = None):
    """Class probabilities of a volume (2.5D: mean of slice logits over slices with content, or
    over ``slices``). Returns a row: case, predicted class, one probability column per class.

    ``per_slice=True`` (2.5D): a list of rows, one per slice (all slices, or ``slices``), with a
    ``slice`` column — for slice-level tasks. ``model``: the package's network already built (on
    ``device``), so a loop over cases builds it once."""
    from .device import resolve_device
    from .package import ModelPackage

    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    if pkg.task != "classification":
        raise MedTransferError(f"model '{pkg.path}' is a segmentation model; use predict for it")
    if per_slice and pkg.mode == "3d":
        raise MedTransferError("per-slice prediction needs a 2.5D model; this one is 3D")
    dev = resolve_device(device)
    model = model if model is not None else pkg.build_model(dev)
    prep = pkg.preprocessing
    size = int(pkg.manifest["inference"]["size"])
    expected = int(pkg.manifest["slicing"].get("channels", 1))
    if case.channels != expected:
        raise MedTransferError(f"model '{pkg.path}' was trained on {expected} image(s) per case; "
                               f"case '{case.case_id}' has {case.channels}")
    image = np.ascontiguousarray(to_slices_first(with_channels(prep.standardise(case.image)), pkg.axis))
    t = float(pkg.manifest.get("calibration", {}).get("temperature", 1.0))   # calibrated probabilities
    ood = _ood_of_case(pkg, model, image, size, dev)
    if pkg.mode == "3d":
        logits = model(prep.to_backbone(square_resize(torch.from_numpy(image)[None], size).to(dev))).float()
    elif per_slice:
        chosen = np.asarray(slices) if slices is not None else np.arange(image.shape[1])
        logits = _volume_logits(model, image, chosen, pkg.slices, size, prep, dev)
        return [dict(_row(case.case_id, pkg.manifest["classes"], torch.softmax(lg / t, 0).cpu().numpy(), int(s)), **ood)
                for s, lg in zip(chosen, logits)]
    else:
        chosen = np.asarray(slices) if slices is not None else content_slices(image)
        logits = _volume_logits(model, image, chosen, pkg.slices, size, prep, dev)
    return dict(_row(case.case_id, pkg.manifest["classes"], torch.softmax(logits.mean(0) / t, 0).cpu().numpy()), **ood)


def _ood_of_case(pkg, model, image, size, dev) -> dict:
    """``{ood_score, ood}`` of a volume against the package's training reference ({} without one)."""
    from .shift import activation_stats, ood_verdict, stats_distance

    cal = pkg.manifest.get("shift", {}).get("ood") or {}
    stats = pkg.extra(cal["stats_file"]) if cal.get("stats_file") else {}
    if not stats:
        return {}
    cube = square_resize(torch.from_numpy(image)[None], size)[0] if pkg.mode == "3d" else None
    content = content_slices(image) if cube is None else None
    score = stats_distance(activation_stats(model, _ood_inputs(image, content, pkg.slices, size, cube,
                                                               pkg.preprocessing, dev)), stats)
    return {"ood_score": round(score, 4), "ood": ood_verdict(score, cal)}


def _row(case_id: str, classes, probs, slice_index: int | None = None) -> dict:
    row = {"case": case_id}
    if slice_index is not None:
        row["slice"] = slice_index
    row["predicted"] = classes[int(probs.argmax())]
    row.update({f"p_{c}": float(p) for c, p in zip(classes, probs)})
    return row


def rows_to_probs(rows: list[dict], classes: list[str]) -> np.ndarray:
    try:
        return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    except KeyError as exc:
        raise MedTransferError(f"prediction table lacks the column {exc}; it must come from "
                               f"'medtransfer predict' with a model of these classes") from None


def evaluate_table(rows: list[dict], dl: ClassDatalist, section: str = "training") -> tuple[dict, list[dict]]:
    """Metrics of prediction rows (from :func:`predict_class`) against a datalist's labels,
    matching by case id (and slice, for slice labels). Returns ``(metrics, matched rows)``."""
    entries = {e.case_id: e for e in (dl.test if section == "test" else dl.training)}
    probs, truth, matched = [], [], []
    for r in rows:
        e = entries.get(str(r.get("case")))
        if e is None:
            continue
        if e.slice_labels:
            s = r.get("slice")
            if s in (None, ""):
                continue
            if int(s) not in e.slice_labels:
                continue
            cls = e.slice_labels[int(s)]
        elif e.label is not None:
            if r.get("slice") not in (None, ""):
                continue
            cls = e.label
        else:
            continue
        probs.append(rows_to_probs([r], dl.classes)[0])
        truth.append(cls)
        matched.append(r)
    if not matched:
        raise MedTransferError(f"no prediction row matches a labelled case of the datalist's "
                               f"'{section}' section (case ids: {', '.join(list(entries)[:5])})")
    return classification_metrics(np.array(probs), np.array(truth), dl.classes), matched
