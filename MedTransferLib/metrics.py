"""Evaluation: Dice and HD95 per structure, on whole volumes or on chosen slices only."""

from __future__ import annotations

import numpy as np

from .case import Geometry
from .errors import MedTransferError


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


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), where: np.ndarray | None = None) -> float:
    """95th-percentile symmetric surface distance in mm (MONAI's definition: the larger of the
    two directed 95th percentiles). ``where`` restricts the surface points counted (e.g. to
    held-out slices); distances are measured to the other full 3D surface. NaN if a mask is empty."""
    if not pred.any() or not ref.any():
        return float("nan")
    p_surf, p_dist = _distance_to_surface(pred, spacing_xyz)
    r_surf, r_dist = _distance_to_surface(ref, spacing_xyz)
    if where is not None:
        p_surf, r_surf = p_surf & where, r_surf & where
    d1, d2 = r_dist[p_surf], p_dist[r_surf]
    if d1.size == 0 or d2.size == 0:
        return float("nan")
    return float(max(np.percentile(d1, 95), np.percentile(d2, 95)))


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
        inter, ps, rs = int((pw & rw).sum()), int(pw.sum()), int(rw.sum())
        rows.append({"case": case_id, "structure": name, "value": int(value),
                     "dice": float("nan") if ps + rs == 0 else 2 * inter / (ps + rs),
                     "hd95_mm": hd95(p, r, spacing, where),
                     "volume_pred_ml": ps * vox_ml, "volume_ref_ml": rs * vox_ml})
    return rows


def summary(rows: list[dict]) -> dict:
    dice = [r["dice"] for r in rows if not np.isnan(r["dice"])]
    hd = [r["hd95_mm"] for r in rows if not np.isnan(r["hd95_mm"])]
    return {"mean_dice": float(np.mean(dice)) if dice else float("nan"),
            "min_dice": float(np.min(dice)) if dice else float("nan"),
            "mean_hd95_mm": float(np.mean(hd)) if hd else float("nan")}
