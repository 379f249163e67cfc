"""Evaluation: Dice and HD95 per structure, on whole volumes or on chosen slices only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from MedTransferLib.core.case import Geometry
from MedTransferLib.core.errors import MedTransferError

if TYPE_CHECKING:
    pass


def _distance_to_surface(mask: np.ndarray, spacing_xyz):
    """(surface voxels of ``mask``, distance map in mm to that surface).

    SimpleITK's Maurer distance map is used rather than MONAI's HD95, which needs SciPy (not a
    dependency of ours) for its distance transform.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    contour = sitk.LabelContour(img, fullyConnected=True)
    dist = sitk.Abs(sitk.SignedMaurerDistanceMap(contour, insideIsPositive=False, squaredDistance=False,
                                                 useImageSpacing=True))
    return sitk.GetArrayFromImage(contour) > 0, sitk.GetArrayFromImage(dist)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks, 2|P∩R| / (|P| + |R|); NaN when both are empty. The one Dice of
    the project: evaluation, validation and audits all use it."""
    ps, rs = int(pred.sum()), int(ref.sum())
    return float("nan") if ps + rs == 0 else 2 * int((pred & ref).sum()) / (ps + rs)


def _directed_distances(pred, ref, spacing_xyz, where):
    p_surf, p_dist = _distance_to_surface(pred, spacing_xyz)
    r_surf, r_dist = _distance_to_surface(ref, spacing_xyz)
    if where is not None:
        p_surf, r_surf = p_surf & where, r_surf & where
    return r_dist[p_surf], p_dist[r_surf]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), where: np.ndarray | None = None) -> float:
    """95th-percentile symmetric surface distance in mm (MONAI's definition: the larger of the
    two directed 95th percentiles). ``where`` restricts the surface points counted (e.g. to
    held-out slices); distances are measured to the other full 3D surface. NaN if a mask is empty."""
    return surface_distances(pred, ref, spacing_xyz, where)[0]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0),
                      where: np.ndarray | None = None) -> tuple[float, float]:
    """``(hd95, assd)`` in mm: :func:`hd95` and the average symmetric surface distance (the mean
    over both surfaces' points of the distance to the other surface). NaN if a mask is empty."""
    if not pred.any() or not ref.any():
        return float("nan"), float("nan")
    d1, d2 = _directed_distances(pred, ref, spacing_xyz, where)
    if d1.size == 0 or d2.size == 0:
        return float("nan"), float("nan")
    return (float(max(np.percentile(d1, 95), np.percentile(d2, 95))),
            float((d1.sum() + d2.sum()) / (d1.size + d2.size)))


def evaluate(pred: np.ndarray, ref: np.ndarray, labels, geometry: Geometry | None = None,
             slices=None, axis: int = 2, case_id: str = "case") -> list[dict]:
    """Rows with Dice, HD95 (mm) and volumes (mL) per structure.

    ``slices``: count only these indices along voxel ``axis`` (e.g. slices never labelled in
    training). Arrays are ``(k, j, i)``; ``labels`` are :class:`Label` objects or (value, name).

    Example:
        >>> rows = evaluate(pred, ref, [(1, "liver")], geometry)  # doctest: +SKIP
    """
    if pred.shape != ref.shape:
        raise MedTransferError(f"prediction shape {pred.shape[::-1]} differs from reference "
                               f"{ref.shape[::-1]}; compare a prediction with the label map of the same image")
    spacing = geometry.spacing if geometry is not None else (1.0, 1.0, 1.0)
    where = None
    if slices is not None:
        keep = np.zeros(pred.shape[2 - axis], bool)
        keep[list(slices)] = True
        shape = [1, 1, 1]
        shape[2 - axis] = -1
        where = np.broadcast_to(keep.reshape(shape), pred.shape)
    vox_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for lab in labels:
        value, name = (lab.value, lab.name) if hasattr(lab, "value") else lab
        p, r = pred == value, ref == value
        pw, rw = (p, r) if where is None else (p & where, r & where)
        ps, rs = int(pw.sum()), int(rw.sum())
        rows.append({"case": case_id, "structure": name, "value": int(value), "dice": dice(pw, rw),
                     "hd95_mm": hd95(p, r, spacing, where),
                     "volume_pred_ml": ps * vox_ml, "volume_ref_ml": rs * vox_ml})
    return rows


def summary(rows: list[dict]) -> dict:
    dice = [r["dice"] for r in rows if not np.isnan(r["dice"])]
    hd = [r["hd95_mm"] for r in rows if not np.isnan(r["hd95_mm"])]
    return {"mean_dice": float(np.mean(dice)) if dice else float("nan"),
            "min_dice": float(np.min(dice)) if dice else float("nan"),
            "mean_hd95_mm": float(np.mean(hd)) if hd else float("nan")}


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
    if present.sum() >= 2:   # then every class in the truth is also absent from some item
        onehot = np.eye(n)[truth]
        cols = [c for c in range(n) if present[c]]
        auc = float(compute_roc_auc(torch.from_numpy(probs[:, cols]), torch.from_numpy(onehot[:, cols]),
                                    average="macro"))
    return {"n": int(len(truth)), "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
            "balanced_accuracy": float(recall.mean()) if len(recall) else float("nan"),
            "auc": auc, "confusion": confusion.tolist(), "classes": list(classes)}
