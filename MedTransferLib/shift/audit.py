"""Concept shift made visible: agreement between annotators, label statistics between sites."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.metrics import dice, surface_distances


def label_audit(annotations: dict, labels, geometry) -> list[dict]:
    """Agreement of two or more annotations of the same volume: one row per structure and
    annotator pair (Dice, volumes in mL, volume difference %, HD95 and mean surface distance in
    mm), then one summary row per annotator (mean Dice against the others)."""
    names = list(annotations)
    if len(names) < 2:
        raise MedTransferError("a label audit needs two or more annotations of the same volume")
    shapes = {k: v.shape for k, v in annotations.items()}
    if len(set(shapes.values())) != 1:
        raise MedTransferError(f"annotations have different grids {shapes}; resample them onto the same volume first")
    vox_ml = geometry.voxel_volume_ml()
    rows = []
    for a, b in combinations(names, 2):
        for lab in labels:
            ma, mb = annotations[a] == lab.value, annotations[b] == lab.value
            va, vb = float(ma.sum() * vox_ml), float(mb.sum() * vox_ml)
            hd, assd = surface_distances(ma, mb, tuple(geometry.spacing))
            rows.append({"structure": lab.name, "annotator_a": a, "annotator_b": b, "dice": dice(ma, mb),
                         "volume_a_ml": va, "volume_b_ml": vb,
                         "volume_diff_pct": 100 * (vb - va) / ((va + vb) / 2) if va + vb else float("nan"),
                         "hd95_mm": hd, "assd_mm": assd})
    for name in names:
        ds = [r["dice"] for r in rows if name in (r["annotator_a"], r["annotator_b"]) and not math.isnan(r["dice"])]
        rows.append({"structure": "(all)", "annotator_a": name, "annotator_b": "(others)",
                     "dice": float(np.mean(ds)) if ds else float("nan")})
    return rows


def _boundary_intensity(image_std: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        return float("nan")
    # the structure's inner boundary: voxels of the mask with a 6-neighbour outside it
    inner = mask.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis=axis)
    boundary = mask & ~inner
    return float(image_std[boundary].mean())


def site_audit(cases, sites: list[str], labels, prep=None) -> list[dict]:
    """Per site and structure: cases, mean volume (mL) and mean boundary intensity (standardised
    image on the structure's boundary voxels); ``flag`` where a site's mean volume differs from
    the other sites' by more than 25 % or its boundary intensity by more than 0.5 standard
    units — a sign that the site draws the structure differently (or images it differently)."""
    from MedTransferLib.data.preprocessing import Preprocessing, detect_modality

    if len(set(sites)) < 2:
        raise MedTransferError("a site audit needs cases from two or more sites ('site' in the datalist entries)")
    per = []
    for case, site in zip(cases, sites):
        p = prep or Preprocessing(modality=detect_modality(case.image if case.channels == 1 else case.image[0]))
        img = p.standardise(case.image if case.channels == 1 else case.image[0])
        vox_ml = case.geometry.voxel_volume_ml()
        for lab in labels:
            mask = case.label == lab.value
            per.append({"site": site, "structure": lab.name, "volume_ml": float(mask.sum() * vox_ml),
                        "boundary": _boundary_intensity(img, mask)})
    rows = []
    for lab in labels:
        for site in sorted(set(sites)):
            mine = [r for r in per if r["site"] == site and r["structure"] == lab.name]
            other = [r for r in per if r["site"] != site and r["structure"] == lab.name]
            vol = float(np.mean([r["volume_ml"] for r in mine]))
            vol_o = float(np.mean([r["volume_ml"] for r in other]))
            bnd = float(np.nanmean([r["boundary"] for r in mine])) if mine else float("nan")
            bnd_o = float(np.nanmean([r["boundary"] for r in other])) if other else float("nan")
            diff = 100 * (vol - vol_o) / vol_o if vol_o else float("nan")
            flags = []
            if not math.isnan(diff) and abs(diff) > 25:
                flags.append(f"volume {diff:+.0f}% vs other sites")
            if not (math.isnan(bnd) or math.isnan(bnd_o)) and abs(bnd - bnd_o) > 0.5:
                flags.append(f"boundary intensity {bnd - bnd_o:+.2f} vs other sites")
            rows.append({"structure": lab.name, "site": site, "cases": len(mine), "mean_volume_ml": vol,
                         "other_sites_volume_ml": vol_o, "volume_diff_pct": diff, "boundary_intensity": bnd,
                         "other_sites_boundary_intensity": bnd_o, "flag": "; ".join(flags)})
    return rows
