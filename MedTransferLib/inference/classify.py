"""Classification of a case (or its slices) with a package: calibrated probabilities, the OOD
score, and evaluation of a table of predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from MedTransferLib.core.case import Case
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.class_datalist import ClassDatalist
from MedTransferLib.data.class_inputs import content_slices, slab_batch, square_resize
from MedTransferLib.data.metrics import classification_metrics
from MedTransferLib.data.slabs import to_slices_first, with_channels
from MedTransferLib.shift.prior import rows_to_probs

if TYPE_CHECKING:
    pass


REFERENCE_STATS = "reference_stats.safetensors"


def ood_inputs(image, content, k, size, cube, prep, device):
    """What the OOD score of a classified volume measures: the classifier's own inputs — up to
    24 content slabs (2.5D) or the resized volume (3D)."""
    if cube is not None:
        yield prep.to_backbone(cube[None].to(device))
        return
    chosen = content[:: max(1, len(content) // 24)]
    for i in range(0, len(chosen), 8):
        yield prep.to_backbone(slab_batch(image, chosen[i:i + 8], k, size).to(device))


def volume_logits(model, image, slices, k, size, prep, device, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(slices), batch):
        x = slab_batch(image, slices[i:i + batch], k, size)
        out.append(model(prep.to_backbone(x.to(device))).float())
    return torch.cat(out)


@torch.inference_mode()
def predict_class(package, case: Case, device: str = "auto", slices=None, per_slice: bool = False,
                  model: nn.Module | None = None):
    """Class probabilities of a volume (2.5D: mean of slice logits over slices with content, or
    over ``slices``). Returns a row: case, predicted class, one probability column per class.
    A case stored in another voxel order than the model's is read in the model's; ``slices`` and
    the rows' ``slice`` are the case's own indices (along its axis that runs along the model's).

    ``per_slice=True`` (2.5D): a list of rows, one per slice (all slices, or ``slices``), with a
    ``slice`` column — for slice-level tasks. ``model``: the package's network already built (on
    ``device``), so a loop over cases builds it once."""
    from MedTransferLib.core.device import resolve_device
    from MedTransferLib.package.store import ModelPackage

    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    if pkg.task != "classification":
        raise MedTransferError(f"model '{pkg.path}' is a segmentation model; use predict for it")
    if per_slice and pkg.mode == "3d":
        raise MedTransferError("per-slice prediction needs a 2.5D model; this one is 3D")
    dev = resolve_device(device)
    model = model if model is not None else pkg.build_model(dev)
    prep = pkg.preprocessing
    size = pkg.manifest.inference.size
    expected = pkg.manifest.slicing.channels
    if case.channels != expected:
        raise MedTransferError(f"model '{pkg.path}' was trained on {expected} image(s) per case; "
                               f"case '{case.case_id}' has {case.channels}")
    turn = None
    if pkg.manifest.slicing.orientation:   # the network reads voxels in its training's order (data/orientation.py)
        from MedTransferLib.data.orientation import to_order

        (case,), (turn,) = to_order([case], pkg.manifest.slicing.orientation)
        if turn is not None and slices is not None:   # the caller's slices are the case's own
            slices = turn.slices_forward(turn.axes[pkg.axis], slices)[1]
    image = np.ascontiguousarray(to_slices_first(with_channels(prep.standardise(case.image)), pkg.axis))
    t = float((pkg.manifest.calibration or {}).get("temperature", 1.0))   # calibrated probabilities
    ood = _ood_of_case(pkg, model, image, size, dev)
    if pkg.mode == "3d":
        logits = model(prep.to_backbone(square_resize(torch.from_numpy(image)[None], size).to(dev))).float()
    elif per_slice:
        chosen = np.asarray(slices) if slices is not None else np.arange(image.shape[1])
        logits = volume_logits(model, image, chosen, pkg.slices, size, prep, dev)
        own = turn.slices_back(pkg.axis, chosen.tolist())[1] if turn is not None else chosen.tolist()
        return [dict(_row(case.case_id, pkg.manifest.classes, torch.softmax(lg / t, 0).cpu().numpy(), int(s)), **ood)
                for s, lg in zip(own, logits)]
    else:
        chosen = np.asarray(slices) if slices is not None else content_slices(image)
        logits = volume_logits(model, image, chosen, pkg.slices, size, prep, dev)
    return dict(_row(case.case_id, pkg.manifest.classes, torch.softmax(logits.mean(0) / t, 0).cpu().numpy()), **ood)


def _ood_of_case(pkg, model, image, size, dev) -> dict:
    """``{ood_score, ood}`` of a volume against the package's training reference ({} without one)."""
    from MedTransferLib.shift.ood import activation_stats, ood_verdict, stats_distance

    cal = pkg.manifest.shift.get("ood") or {}
    stats = pkg.extra(cal["stats_file"]) if cal.get("stats_file") else {}
    if not stats:
        return {}
    cube = square_resize(torch.from_numpy(image)[None], size)[0] if pkg.mode == "3d" else None
    content = content_slices(image) if cube is None else None
    score = stats_distance(activation_stats(model, ood_inputs(image, content, pkg.slices, size, cube,
                                                               pkg.preprocessing, dev)), stats)
    return {"ood_score": round(score, 4), "ood": ood_verdict(score, cal)}


def _row(case_id: str, classes, probs, slice_index: int | None = None) -> dict:
    row = {"case": case_id}
    if slice_index is not None:
        row["slice"] = slice_index
    row["predicted"] = classes[int(probs.argmax())]
    row.update({f"p_{c}": float(p) for c, p in zip(classes, probs)})
    return row


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
