"""Dice, HD95 and volumes (metrics.py) against values computed by hand, on data chosen so that
a broken version gives a different answer: the slice restriction (the README's headline metric
is Dice on the never-labelled slices) changes the result here, which the uniform cube elsewhere
does not."""

import csv
import math

import numpy as np
import pytest

import MedTransferLib as mt
from MedTransferLib.data.metrics import evaluate, hd95, summary

IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def _cube_right_on_two_slices():
    """A 10×10×10 reference cube on slices 5..14 (voxel axis 2 = array axis 0); the prediction
    equals it on slices 5 and 6 and is empty on every other slice."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:15, 5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[5:7] = ref[5:7]
    return pred, ref


def test_dice_counts_only_the_chosen_slices():
    pred, ref = _cube_right_on_two_slices()
    geo = mt.Geometry((20, 20, 20), (1.0, 1.0, 2.0), (0, 0, 0), IDENTITY)
    whole = evaluate(pred, ref, [(1, "cube")], geo)[0]
    assert whole["dice"] == pytest.approx(2 * 200 / (200 + 1000))           # 1/3
    right = evaluate(pred, ref, [(1, "cube")], geo, slices=[5, 6], axis=2)[0]
    assert right["dice"] == pytest.approx(1.0)
    assert right["volume_pred_ml"] == pytest.approx(200 * 2.0 / 1000)        # counted on those slices only
    wrong = evaluate(pred, ref, [(1, "cube")], geo, slices=[7, 8], axis=2)[0]
    assert wrong["dice"] == 0.0 and wrong["volume_ref_ml"] == pytest.approx(200 * 2.0 / 1000)
    outside = evaluate(pred, ref, [(1, "cube")], geo, slices=[0, 1], axis=2)[0]
    assert math.isnan(outside["dice"])                                       # nothing there in either


def test_the_slice_axis_picks_the_array_axis():
    pred, ref = _cube_right_on_two_slices()
    # the same data with the slices along voxel axis 0 (array axis 2)
    pred_t, ref_t = np.ascontiguousarray(pred.transpose(2, 1, 0)), np.ascontiguousarray(ref.transpose(2, 1, 0))
    assert evaluate(pred_t, ref_t, [(1, "c")], slices=[5, 6], axis=0)[0]["dice"] == pytest.approx(1.0)
    assert evaluate(pred_t, ref_t, [(1, "c")], slices=[5, 6], axis=2)[0]["dice"] == pytest.approx(2 * 20 / (20 + 100))


def test_hd95_is_the_larger_directed_percentile_in_millimetres():
    ref = np.zeros((1, 40, 40), np.uint8)
    ref[0, 10:30, 10:30] = 1
    pred = np.zeros_like(ref)
    pred[0, 10:30, 10:26] = 1          # the right 4 columns missing: ref→pred distances up to 4 voxels
    # spacing (x, y, z) = (0.5, 1, 1): the missing columns lie along x, 0.5 mm each
    value = hd95(pred, ref, (0.5, 1.0, 1.0))
    # directed pred→ref: 0 except pred's new border column (2 mm away); ref→pred: up to 2 mm
    assert value == pytest.approx(2.0)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(4.0)
    assert math.isnan(hd95(np.zeros_like(ref), ref))


def test_hd95_restricted_to_slices_ignores_surface_elsewhere():
    pred, ref = _cube_right_on_two_slices()
    # on slices 5-6 the prediction's surface coincides with the reference's in-plane outline, but
    # pred's top face (slice 6) is 8 slices from ref's top face: restricted, only slices 5-6 count
    where = np.zeros(pred.shape, bool)
    where[5:7] = True
    restricted = hd95(pred, ref, where=where)
    whole = hd95(pred, ref)
    assert restricted < whole and whole >= 8.0


def test_summary_ignores_undefined_scores():
    rows = [{"dice": 0.5, "hd95_mm": 2.0}, {"dice": float("nan"), "hd95_mm": float("nan")},
            {"dice": 0.9, "hd95_mm": 4.0}]
    s = summary(rows)
    assert s == {"mean_dice": pytest.approx(0.7), "min_dice": pytest.approx(0.5), "mean_hd95_mm": pytest.approx(3.0)}
    assert all(math.isnan(v) for v in summary([{"dice": float("nan"), "hd95_mm": float("nan")}]).values())


def test_shapes_must_match():
    with pytest.raises(mt.MedTransferError, match="differs from reference"):
        evaluate(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), [(1, "x")])


def test_the_cli_reports_dice_on_the_chosen_slices(tmp_path):
    from MedTransferLib.app.cli import main

    pred, ref = _cube_right_on_two_slices()
    geo = mt.Geometry((20, 20, 20), (1.0, 1.0, 1.0), (0, 0, 0), IDENTITY)
    mt.write_label(tmp_path / "pred.nii.gz", pred, geo)
    mt.write_label(tmp_path / "ref.nii.gz", ref, geo)
    labels = tmp_path / "dataset.json"
    labels.write_text('{"labels": {"0": "background", "1": "cube"}, '
                      '"training": [{"image": "ref.nii.gz", "label": "ref.nii.gz"}]}')
    for spec, expected in (("5-6", 1.0), (None, 1 / 3)):
        out = tmp_path / f"m{spec}.csv"
        args = ["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--label", str(tmp_path / "ref.nii.gz"),
                "--labels", str(labels), "--out", str(out)]
        assert main(args + (["--slices", spec, "--axis", "2"] if spec else [])) == 0
        with open(out, newline="", encoding="utf-8") as f:
            [row] = [r for r in csv.DictReader(f) if r["structure"] == "cube"]
        assert float(row["dice"]) == pytest.approx(expected)


def _surface(mask):
    """Voxels of ``mask`` with a background voxel among their 26 neighbours (ITK's LabelContour,
    fully connected; outside the array counts as background)."""
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    touches = np.zeros_like(inner)
    n = np.array(mask.shape)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dz or dy or dx:
                    touches |= ~padded[1 + dz:1 + dz + n[0], 1 + dy:1 + dy + n[1], 1 + dx:1 + dx + n[2]]
    return inner & touches


def _hd95_brute_force(pred, ref, spacing_xyz, where=None):
    """HD95 written out: every surface voxel's distance (mm) to the nearest surface voxel of the
    other mask, the 95th percentile each way, the larger of the two."""
    scale = np.array(spacing_xyz[::-1], float)          # array axes are (z, y, x)
    ps, rs = _surface(pred), _surface(ref)
    pts_p, pts_r = np.argwhere(ps) * scale, np.argwhere(rs) * scale
    keep_p = np.ones(len(pts_p), bool) if where is None else where[ps]
    keep_r = np.ones(len(pts_r), bool) if where is None else where[rs]

    def nearest(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)

    d1 = nearest(pts_p[keep_p], pts_r)
    d2 = nearest(pts_r[keep_r], pts_p)
    return max(np.percentile(d1, 95), np.percentile(d2, 95))


def _ball(shape, centre, radii):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
            + ((x - centre[2]) / radii[2]) ** 2) <= 1


def test_hd95_matches_a_brute_force_computation_on_curved_shapes():
    """Curved surfaces (where face- and fully-connected contours differ) and distances that spread
    (where the 95th percentile is not the 96th), with anisotropic voxels, whole and restricted."""
    shape = (14, 18, 20)
    ref = _ball(shape, (7, 9, 10), (5, 6, 7)).astype(np.uint8)
    pred = _ball(shape, (6, 10, 8), (4, 7, 6)).astype(np.uint8)
    spacing = (0.7, 1.0, 1.6)
    assert hd95(pred, ref, spacing) == pytest.approx(_hd95_brute_force(pred, ref, spacing), rel=1e-6)
    where = np.zeros(shape, bool)
    where[5:9] = True
    assert hd95(pred, ref, spacing, where) == pytest.approx(_hd95_brute_force(pred, ref, spacing, where), rel=1e-6)
    # evaluate restricted to those slices reports the restricted HD95, in the geometry's spacing
    geo = mt.Geometry(shape[::-1], spacing, (0, 0, 0), IDENTITY)
    row = evaluate(pred, ref, [(1, "ball")], geo, slices=range(5, 9))[0]   # default axis: 2
    assert row["hd95_mm"] == pytest.approx(_hd95_brute_force(pred, ref, spacing, where), rel=1e-6)
    assert row["case"] == "case" and row["value"] == 1 and row["structure"] == "ball"


def test_without_a_geometry_voxels_are_1_mm():
    pred, ref = _cube_right_on_two_slices()
    row = evaluate(pred, ref, [(1, "cube")])[0]
    assert row["volume_ref_ml"] == pytest.approx(1000 / 1000) and row["hd95_mm"] == pytest.approx(
        _hd95_brute_force(pred, ref, (1.0, 1.0, 1.0)))


def test_hd95_of_single_voxel_surfaces():
    ref = np.zeros((5, 5, 9), np.uint8)
    pred = np.zeros_like(ref)
    ref[2, 2, 1] = 1
    pred[2, 2, 6] = 1
    assert hd95(pred, ref) == pytest.approx(5.0)


def test_summary_of_nothing_warns_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no "mean of empty slice" from numpy
        s = summary([{"dice": float("nan"), "hd95_mm": float("nan")}])
    assert all(math.isnan(v) for v in s.values())


def test_surface_distances_of_two_plates_match_a_brute_force_computation():
    """Two one-voxel-thick plates (every voxel on the surface), of different sizes, anisotropic
    voxels: HD95 and the average symmetric surface distance against every pair's distance."""
    from MedTransferLib.data.metrics import surface_distances

    spacing = (0.8, 1.3, 2.5)                       # x, y, z in mm; arrays are (z, y, x)
    pred = np.zeros((9, 12, 14), bool)
    ref = np.zeros_like(pred)
    pred[2, 1:11, 1:13] = True                      # 10 × 12 plate
    ref[5, 3:7, 4:8] = True                         # 4 × 4 plate, 3 slices above
    pts = lambda m: np.argwhere(m)[:, ::-1] * np.array(spacing)  # noqa: E731  (x, y, z) in mm
    d = np.linalg.norm(pts(pred)[:, None] - pts(ref)[None], axis=2)
    d1, d2 = d.min(1), d.min(0)                     # pred → ref, ref → pred
    hd, assd = surface_distances(pred, ref, spacing)
    assert d1.size == 120 and d2.size == 16
    assert hd == pytest.approx(max(np.percentile(d1, 95), np.percentile(d2, 95)), rel=1e-5)
    assert assd == pytest.approx((d1.sum() + d2.sum()) / (d1.size + d2.size), rel=1e-5)
    assert assd > 3 * 2.5                           # the plates are 7.5 mm apart and offset
    assert all(math.isnan(v) for v in surface_distances(pred, np.zeros_like(pred), spacing))


def test_classification_metrics_with_a_class_never_seen_and_three_way_auc():
    from MedTransferLib.data.metrics import classification_metrics

    # three classes; 'c' is predicted once but never true; 'b' has a single item
    probs = [[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]
    truth = np.array([0.0, 0.0, 0.0, 1.0, 0.0])       # floats, as a table column would give them
    m = classification_metrics(probs, truth, ["a", "b", "c"])
    assert m["n"] == 5 and m["classes"] == ["a", "b", "c"]
    assert m["confusion"] == [[3, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert all(type(v) is int for row in m["confusion"] for v in row)
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1) / 2)     # 'c' has no true items
    # one-vs-rest AUC by pair counting, for the classes in the truth only:
    # a: positives 0.7 0.5 0.2 0.6 against negative 0.1 → 4/4; b: 0.8 against 0.2 0.1 0.3 0.3 → 4/4
    assert m["auc"] == pytest.approx(1.0)
    probs[1] = [0.05, 0.9, 0.05]                       # an 'a' item now outranks the 'b' item for b
    m = classification_metrics(probs, truth, ["a", "b", "c"])
    auc_a = np.mean([p > 0.1 for p in (0.7, 0.05, 0.2, 0.6)])          # 3/4
    auc_b = 3 / 4                                                       # 0.8 beats 0.2 0.3 0.3, not 0.9
    assert m["auc"] == pytest.approx((auc_a + auc_b) / 2)


def test_classification_metrics_of_nothing_are_not_numbers():
    from MedTransferLib.data.metrics import classification_metrics

    m = classification_metrics(np.zeros((0, 2)), np.zeros(0, int), ["a", "b"])
    assert m["n"] == 0 and m["confusion"] == [[0, 0], [0, 0]]
    assert math.isnan(m["accuracy"]) and math.isnan(m["balanced_accuracy"]) and math.isnan(m["auc"])
