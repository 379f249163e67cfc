"""Painted slices guide the prediction of the volume they were painted on (inference/guide.py):
shape interpolation between painted slices, combined with the network's probabilities."""

import dataclasses

import numpy as np
import pytest
from conftest import write_blob_datalist

import MedTransferLib as mt
from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.metrics import dice
from MedTransferLib.inference import guide as guiding

Guide, guide_for, interpolate, signed_distance = (guiding.Guide, guiding.guide_for, guiding.interpolate,
                                                  guiding.signed_distance)


def disc(radius, shape=(64, 64), centre=(32.0, 30.0), spacing=(1.0, 1.0)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.hypot((yy - centre[0]) * spacing[0], (xx - centre[1]) * spacing[1]) < radius


def test_signed_distance_gives_back_the_mask_and_mm():
    mask = disc(10, spacing=(1.0, 2.0))
    phi = signed_distance(mask, (1.0, 2.0))
    assert np.array_equal(phi < 0, mask)
    # a pixel 6 columns right of the edge lies 12 mm outside (columns are 2 mm): the distance is in
    # mm along W, not pixels
    row = 32
    edge = np.flatnonzero(mask[row]).max()
    assert phi[row, edge + 6] == pytest.approx(12 - 0.5, abs=0.01)
    # rows are 2 mm, columns 3 mm here: 6 rows below the bottom edge is 12 mm, and the half-pixel
    # shift is half the smaller pixel side (1 mm)
    mask = disc(10, spacing=(2.0, 3.0))
    phi = signed_distance(mask, (2.0, 3.0))
    col = 30
    bottom = np.flatnonzero(mask[:, col]).max()
    assert phi[bottom + 6, col] == pytest.approx(12 - 1.0, abs=0.01)
    assert np.array_equal(phi < 0, mask)


def test_a_growing_disc_is_interpolated_between_painted_slices():
    # radius 6 mm on slice 0, 16 mm on slice 10: linear interpolation of signed distances is the
    # disc of radius 6 + z on slice z (concentric discs) — computed here directly
    classes = np.zeros((11, 64, 64), np.uint8)
    classes[0], classes[10] = disc(6), disc(16)
    g = interpolate(classes, [0, 10], 2)
    for z in (2, 5, 8):
        truth = disc(6 + z)
        assert dice(g.classes[z] == 1, truth) > 0.97, z
        assert abs(int((g.classes[z] == 1).sum()) - int(truth.sum())) < 0.06 * truth.sum()
    assert g.known.all() and g.painted.tolist() == [True] + [False] * 9 + [True]
    # a pixel exactly on the interpolated outline (−0.5 mm inside on one slice, +0.5 mm outside on
    # the other, half way between) stays outside: inside is strictly below zero
    row = np.zeros((3, 1, 3), np.uint8)
    row[0, 0, :2], row[2, 0, :1] = 1, 1
    assert interpolate(row, [0, 2], 2).classes[1].tolist() == [[1, 0, 0]]


def test_every_gap_is_interpolated_wherever_it_starts():
    # discs of radius 6, 26, 6 mm on slices 2, 12, 22, and slices 23 and 28 painted too (adjacent:
    # nothing to interpolate between 22 and 23, the gap after still is). Concentric discs: the
    # interpolated distance is that of the disc whose radius is the cubic Hermite interpolation of
    # the radii, with slopes (mm per slice) 2 at slice 2 (the one secant, (26 - 6) / 10), 0 at the
    # peak 12 and at 22, 23, 28 (secants of opposite sign or zero). By hand, with the Hermite basis
    # at t = 0.3 (0.784, 0.147, 0.216, -0.063) and t = 0.7 (0.216, 0.063, 0.784, -0.147):
    # z 5: 6·0.784 + 10·2·0.147 + 26·0.216 = 13.26; z 9: 6·0.216 + 10·2·0.063 + 26·0.784 = 22.94;
    # z 15: 26·0.784 + 6·0.216 = 21.68; z 19: 26·0.216 + 6·0.784 = 10.32 (linear: 12, 20, 20, 12)
    classes = np.zeros((30, 64, 64), np.uint8)
    classes[2], classes[12], classes[22], classes[23] = disc(6), disc(26), disc(6), disc(6)
    classes[28] = disc(6)
    g = interpolate(classes, [2, 12, 22, 23, 28, 30], 2)       # 30 lies outside: ignored
    for z, radius in ((5, 13.26), (9, 22.94), (15, 21.68), (19, 10.32), (25, 6)):
        assert dice(g.classes[z] == 1, disc(radius)) > 0.95, z
        # the radius of a disc of the same area: within 0.6 mm (pixels), the linear one 1.3 mm off
        assert np.sqrt((g.classes[z] == 1).sum() / np.pi) == pytest.approx(radius, abs=0.6), z
    assert g.painted.nonzero()[0].tolist() == [2, 12, 22, 23, 28]
    empty = interpolate(classes, [], 2)
    assert empty.num_classes == 2 and not empty.known.any()
    assert (empty.fuse([0], np.full((1, 2, 64, 64), 0.5, np.float32)) == 0).all()


def test_the_slopes_are_fritsch_and_carlsons():
    # one pixel's distance on painted slices 0, 4, 16 (uneven gaps) and 30; by hand: at slice 4 the
    # secants are (14 - 6) / 4 = 2 and (26 - 14) / 12 = 1, weights 2·12 + 4 = 28 and 12 + 2·4 = 20:
    # (28 + 20) / (28 / 2 + 20 / 1) = 48 / 34; at the run's ends the one secant
    painted = [0, 4, 16, 30]

    def values(*v):
        maps = dict(enumerate(np.array(v, np.float32).reshape(-1, 1, 1)))
        return lambda k, c: maps.get(k) if c == 1 else None

    phi = values(6, 14, 26, 40)
    assert guiding.monotone_slope(painted, 1, 1, phi)[0, 0] == pytest.approx(48 / 34, rel=1e-5)
    assert guiding.monotone_slope(painted, 0, 1, phi)[0, 0] == pytest.approx(2.0)           # (14 - 6) / 4
    assert guiding.monotone_slope(painted, 3, 1, phi)[0, 0] == pytest.approx(1.0)           # (40 - 26) / 14
    # small secants of the same sign (0.25 and 0.05): their weighted harmonic mean, not 0
    phi = values(0, 1, 1.6, 2)
    assert guiding.monotone_slope(painted, 1, 1, phi)[0, 0] == pytest.approx(48 / (28 / 0.25 + 20 / 0.05), rel=1e-5)
    # secants of opposite sign, or one of them zero: 0 (a peak, a plateau)
    assert guiding.monotone_slope(painted, 1, 1, values(6, 14, 2, 0))[0, 0] == 0
    assert guiding.monotone_slope(painted, 1, 1, values(6, 14, 14, 0))[0, 0] == 0
    # a structure missing from the next painted slice ends its run here: the secant from before
    only_three = lambda k, c: None if k == 3 else phi(k, c)   # noqa: E731
    assert guiding.monotone_slope(painted, 2, 1, only_three)[0, 0] == pytest.approx((1.6 - 1) / 12)


def test_a_structure_growing_steadily_is_interpolated_in_straight_lines_to_its_ends():
    # radii 4, 14, 24 mm on slices 40, 50, 60 (far from slice 0): every secant is 1 mm per slice,
    # so every slope is 1 — at the middle slice the mean of equal secants, at the first and the
    # last slice the one secant — and the cubic is the straight line, radius 4 + (z - 40)
    classes = np.zeros((70, 64, 64), np.uint8)
    for z, radius in ((40, 4), (50, 14), (60, 24)):
        classes[z] = disc(radius)
    g = interpolate(classes, [40, 50, 60], 2)
    for z in (43, 47, 53, 57):
        assert np.sqrt((g.classes[z] == 1).sum() / np.pi) == pytest.approx(4 + (z - 40), abs=0.6), z


def test_where_two_interpolated_structures_overlap_the_deeper_one_wins():
    # one row, pixel 50. Structure 2 covers it 10.5 mm deep on slices 0 and 10 and lies 10.5 mm
    # away on 20 and 30: flat slopes, at slice 14 (t = 0.4) its distance is -10.5 + 21·0.352 =
    # -3.1. Structure 1 lies 39.5 and 10.5 mm away on slices 0 and 10 and covers it 10.5 deep on
    # 20 and 30: slopes -2.44 and 0 at slices 10 and 20, at slice 14 10.5·0.648 - 24.4·0.144 -
    # 10.5·0.352 = -0.40. Each interpolated alone covers the pixel there; together the deeper wins
    row = np.zeros((31, 1, 120), np.uint8)
    row[0, 0, 90:100], row[0, 0, 40:61] = 1, 2
    row[10, 0, 20:40], row[10, 0, 40:61] = 1, 2
    row[20, 0, 40:61], row[20, 0, 61:81] = 1, 2
    row[30, 0, 40:61], row[30, 0, 61:81] = 1, 2
    painted = [0, 10, 20, 30]
    for c in (1, 2):
        alone = np.where(row == c, row, 0)
        assert interpolate(alone, painted, 3).classes[14, 0, 50] == c
    assert interpolate(row, painted, 3).classes[14, 0, 50] == 2
    # the same with the labels swapped: the deeper one wins whichever is interpolated first or last
    swapped = np.where(row > 0, 3 - row, 0).astype(np.uint8)
    assert interpolate(swapped, painted, 3).classes[14, 0, 50] == 1


def test_the_linear_switch_interpolates_radii_in_straight_lines(monkeypatch):
    # guide.CUBIC = False (bench/interpolation.py compares both): the same discs as above come out
    # with the radii of straight lines between the painted ones
    monkeypatch.setattr(guiding, "CUBIC", False)
    classes = np.zeros((23, 64, 64), np.uint8)
    classes[2], classes[12], classes[22] = disc(6), disc(26), disc(6)
    g = interpolate(classes, [2, 12, 22], 2)
    for z, radius in ((5, 12), (9, 20), (15, 20), (19, 12)):
        assert np.sqrt((g.classes[z] == 1).sum() / np.pi) == pytest.approx(radius, abs=0.6), z


def test_the_interpolated_shape_never_grows_or_shrinks_past_what_was_painted():
    # radii 6, 8, 20, 21 mm on slices 0, 5, 10, 15: growing fast then barely. A smooth cubic
    # through them (slope 1.3 mm/slice at slice 10, the central difference) would bulge past 21 mm
    # before slice 15 (21.1 mm at slice 13); the monotone slopes keep every slice between its
    # painted neighbours, and the radius never shrinks on the way up
    classes = np.zeros((16, 64, 64), np.uint8)
    for z, radius in ((0, 6), (5, 8), (10, 20), (15, 21)):
        classes[z] = disc(radius)
    g = interpolate(classes, [0, 5, 10, 15], 2)
    area = [int((g.classes[z] == 1).sum()) for z in range(16)]
    assert area == sorted(area), area
    for a, b in ((0, 5), (5, 10), (10, 15)):
        assert all(area[a] <= area[z] <= area[b] for z in range(a + 1, b)), (a, b, area)


def test_anisotropic_pixels_are_interpolated_in_mm():
    # a 4 × 4 square on slice 0 and a 12 × 12 square on slice 4, pixels 1 mm high and 3 mm wide:
    # halfway the shape is the interpolation of distances in mm, not in pixels
    classes = np.zeros((5, 24, 24), np.uint8)
    classes[0, 10:14, 10:14] = 1
    classes[4, 6:18, 6:18] = 1
    mm = interpolate(classes, [0, 4], 2, (1.0, 3.0)).classes[2]
    swapped = interpolate(classes, [0, 4], 2, (3.0, 1.0)).classes[2]
    assert not np.array_equal(mm, swapped)
    label = np.full((5, 24, 24), IGNORE, np.uint8)
    label[[0, 4]] = classes[[0, 4]]
    assert np.array_equal(guide_for(label, [1], [0, 4], (1.0, 3.0), 1.0).classes[2], mm)
    from MedTransferLib.core.case import Case, Geometry
    from MedTransferLib.inference.guide import case_guide

    # voxel axis 2 (k) painted; a slice's rows are j (1 mm) and its columns i (3 mm)
    case = Case(np.zeros((5, 24, 24), np.float32), Geometry((24, 24, 5), (3.0, 1.0, 2.0), (0, 0, 0),
                                                             (1, 0, 0, 0, 1, 0, 0, 0, 1)), label)
    assert np.array_equal(case_guide(case, [1], 2).classes[2], mm)


def test_only_structures_on_both_sides_are_interpolated_and_nothing_beyond():
    classes = np.zeros((20, 32, 32), np.uint8)
    classes[5][4:12, 4:12] = 1            # structure 1 on slices 5 and 9
    classes[9][4:12, 4:12] = 1
    classes[5][20:28, 20:28] = 2          # structure 2 on slice 5 only: ends somewhere after it
    classes[12] = IGNORE                  # a slice not painted is never read
    g = interpolate(classes, [5, 9, 14], 3)
    assert (g.classes[7] == 1).sum() == 64 and not (g.classes[7] == 2).any()
    assert not g.classes[10:14].any()     # 9 → 14: nothing on both sides
    # slice 14 was painted empty beyond the structures: known (background) from there to the end;
    # before slice 5, which holds structures, the network decides alone
    assert g.known.tolist() == [False] * 5 + [True] * 15
    assert not g.classes[:5].any() and not g.classes[15:].any()
    # no room for a structure beyond the empty slice 14 (9 → 14: structure 1 ends somewhere there)
    assert g.empty == set(range(15, 20))
    assert interpolate(classes, [5, 9], 3).known.tolist() == [False] * 5 + [True] * 5 + [False] * 10
    assert not interpolate(classes, [5, 9], 3).empty
    # one slice painted empty and nothing else: it ends nothing
    assert interpolate(classes, [14], 3).known.tolist() == [False] * 14 + [True] + [False] * 5
    # the first painted slice empty: the structures start after it, nothing before
    classes[2] = 0
    assert interpolate(classes, [2, 5, 9], 3).known.tolist() == [True] * 10 + [False] * 10
    assert interpolate(classes, [2, 5, 9], 3).empty == {0, 1}   # 2 → 5: the structures start there


def test_where_no_structure_can_be_the_network_needs_far_higher_odds():
    # slice 0 painted empty, 4 and 8 hold class 1 (an outline between them), 12 and 16 nothing: no
    # structure can be on 13..15 (between two empty slices) or beyond 16; on 1..3 and 9..11 class 1
    # starts or ends somewhere (the guide says background there as usual)
    classes = np.zeros((20, 8, 8), np.uint8)
    classes[4][2:6, 2:6] = 1
    classes[8][2:6, 2:6] = 1
    g = interpolate(classes, [0, 4, 8, 12, 16], 3)
    assert g.empty == set(range(13, 16)) | {17, 18, 19}
    assert g.eps_empty == guiding.EPS_EMPTY == 1e-3
    probs = np.zeros((20, 3, 8, 8), np.float32)
    # the network says class 2: at odds 82 : 1 against class 1 and 122 : 1 against background ...
    probs[:, 0], probs[:, 1], probs[:, 2] = 0.008, 0.012, 0.98
    probs[:, :, 0, 0] = [0.0004, 0.0006, 0.999]    # ... 2498 : 1 against background on one pixel
    probs[:, :, 0, 1] = [0.0002, 0.0002, 0.9996]   # ... 4998 : 1 on another
    out = g.fuse(range(20), probs)
    # with 3 classes the network overrules an outline above odds (0.95 + 0.05/3) / (0.05/3) = 58
    # and no outline above (0.999 + 0.001/3) / (0.001/3) = 2998
    for z in (1, 2, 3, 5, 6, 7, 9, 10, 11):              # an outline or a structure's end: 82 : 1 wins
        assert (out[z] == 2).all(), z
    for z in sorted(g.empty):                            # no room for a structure: only 4998 : 1 does
        assert out[z][0, 1] == 2 and out[z][0, 0] == 0 and (out[z].ravel()[2:] == 0).all(), z
    assert np.array_equal(out, fuse_by_definition(g, list(range(20)), probs))
    same = dataclasses.replace(g, eps_empty=g.eps)       # treated as anywhere else
    assert (same.fuse(range(20), probs)[sorted(g.empty)] == 2).all()


def test_fuse_network_overrides_only_when_very_sure():
    classes = np.zeros((4, 2, 2), np.uint8)
    classes[0] = 1                        # painted slice 0 and 2 say class 1 everywhere
    classes[2] = 1
    g = interpolate(classes, [0, 2], 3)
    assert (g.classes[1] == 1).all() and g.known.tolist() == [True, True, True, False]
    probs = np.zeros((4, 3, 2, 2), np.float32)
    probs[:, 2] = 0.9                     # the network: class 2 at 0.9, class 1 at 0.05
    probs[:, 1] = 0.05
    probs[:, 0] = 0.05
    probs[1, :, 0, 0] = [0.0005, 0.0005, 0.999]   # ... and very sure at one voxel of slice 1
    probs[1, :, 0, 1] = [0.0, 0.0, 1.0]           # ... certain at another (a zero probability)
    probs[1, :, 1, 0] = [0.024, 0.016, 0.96]      # odds 60 : 1 against the guide's class
    out = g.fuse([0, 1, 2, 3], probs)
    assert (out[0] == 1).all() and (out[2] == 1).all()       # painted: as painted
    # with 3 classes the network overrules the guide above odds (0.95 + 0.05/3) / (0.05/3) = 58
    assert out[1].tolist() == [[2, 2], [2, 1]]               # 0.9 against 0.05 is not sure enough
    assert (out[3] == 2).all()                               # beyond the painted range: the network
    # by the formula: (1 - w) log p + w log q, q = 0.95 + 0.05 / 3 on the interpolated class
    q_hot, q_other = np.log(0.95 + 0.05 / 3), np.log(0.05 / 3)
    assert 0.5 * np.log(0.9) + 0.5 * q_other < 0.5 * np.log(0.05) + 0.5 * q_hot
    assert 0.5 * np.log(0.999) + 0.5 * q_other > 0.5 * np.log(0.0005 + 1e-6) + 0.5 * q_hot


def fuse_by_definition(g, slices, probs):
    """The guide's combination as its docstring defines it, every class scored: ``argmax over c of
    (1 - w) log(p_c + 1e-6) + w log q_c`` on known slices (``w`` 0 where the network decides
    alone, ``q`` one-hot with ``eps`` — ``eps_empty`` where no structure can be — or a wide gap's
    soft vote), the network's argmax elsewhere, painted slices as painted. The reference for
    ``Guide.fuse`` (here and in bench/micro.py)."""
    out = probs.argmax(1).astype(np.uint8)
    c = g.num_classes
    for i, z in enumerate(slices):
        if not g.known[z]:
            continue
        if g.painted[z]:
            out[i] = g.classes[z]
            continue
        onehot = g.soft_vote(*g.soft[z]) if z in g.soft else np.moveaxis(np.eye(c, dtype=np.float32)[g.classes[z]], -1, 0)
        w = np.where(g.open[z], 0.0, g.weight) if z in g.open else np.full(probs.shape[2:], g.weight)
        eps = g.eps_empty if z in g.empty else g.eps
        score = (1 - w) * np.log(probs[i] + 1e-6) + w * np.log((1 - eps) * onehot + eps / c)
        out[i] = score.argmax(0)
    return out


def test_fuse_gives_the_definitions_classes_on_every_kind_of_slice():
    # narrow gaps (one-hot), a wide gap (soft outline, a structure on one side only: open), slices
    # beyond the painted range and painted ones; probabilities in steps of 1/64, so that the network's
    # classes tie (the open region, w = 0, ties the interpolated class with the network's best) and
    # odds between 19 and 58 : 1 occur (the guide's class wins below 58 : 1 with 3 classes)
    rng = np.random.default_rng(3)
    classes = np.zeros((60, 32, 32), np.uint8)
    for z, r in ((4, 6), (8, 8), (12, 7), (30, 6)):
        classes[z][disc(r, (32, 32), (12.0, 12.0))] = 1
    classes[4][disc(4, (32, 32), (24.0, 24.0))] = 2      # class 2: slices 4 and 8, then gone
    classes[8][disc(5, (32, 32), (24.0, 22.0))] = 2
    classes[12][disc(5, (32, 32), (22.0, 24.0))] = 2     # ... and on 12, not on 30: open on 13..21
    classes[45][disc(5, (32, 32), (20.0, 20.0))] = 2     # 30 → 45: wide, nothing shared, open only
    g = interpolate(classes, [4, 8, 12, 30, 45], 3)
    assert g.soft and g.open and (g.classes[5:8] > 0).any()
    assert {31, 44} <= set(g.open) - set(g.soft) and g.known.dtype == bool and g.painted.dtype == bool
    counts = rng.multinomial(64, rng.dirichlet([0.3] * 3, size=(60, 32, 32))).astype(np.float32) / 64
    probs = np.moveaxis(counts, -1, 1).copy()
    slices = list(range(60))
    assert np.array_equal(g.fuse(slices, probs), fuse_by_definition(g, slices, probs))
    light = dataclasses.replace(g, weight=0.3)            # another weight: the same definition
    assert np.array_equal(light.fuse(slices, probs), fuse_by_definition(light, slices, probs))
    # a subset in another order (the preview's): the same per slice
    some = [33, 5, 17, 4, 0, 21]
    assert np.array_equal(g.fuse(some, probs[some]), fuse_by_definition(g, some, probs[some]))
    # the data makes every rule count: the guide changes the network's classes on the narrow and
    # the wide gap's slices, and the network decides alone in the open region
    net = probs.argmax(1)
    fused = g.fuse(slices, probs)
    assert (fused[5:8] != net[5:8]).any() and (fused[14:29] != net[14:29]).any()
    assert (fused[0:4] == net[0:4]).all() and (fused[46:] == net[46:]).all()
    assert (fused[31:45] != net[31:45]).any() and (fused[31][g.open[31]] == net[31][g.open[31]]).all()


def test_a_structure_on_one_side_of_a_wide_gap_is_left_to_the_network():
    # slices 0 and 30 both hold class 1 (interpolated); class 2 is on slice 0 only, class 3 on
    # slice 30 only: each ends somewhere in the 30 mm gap, and the guide cannot say where
    classes = np.zeros((31, 40, 40), np.uint8)
    classes[0][disc(6, (40, 40), (10.0, 10.0))] = 1
    classes[30][disc(6, (40, 40), (10.0, 10.0))] = 1
    two, three = disc(5, (40, 40), (28.0, 12.0)), disc(4, (40, 40), (12.0, 28.0))
    classes[0][two] = 2
    classes[30][three] = 3
    g = interpolate(classes, [0, 30], 4, slice_mm=1.0)
    # the half of the gap next to the slice holding it: 1..15 for class 2, 15..29 for class 3
    assert sorted(g.open) == list(range(1, 30))
    yy, xx = np.mgrid[:40, :40]
    for z, centre, radius, other in ((5, (28, 12), 5, three), (25, (12, 28), 4, two)):
        gap = np.hypot(yy - centre[0], xx - centre[1]) - radius    # mm beyond the disc's outline
        assert g.open[z][gap < 2.0].all() and not g.open[z][gap > 4.0].any(), z
        assert not g.open[z][other].any(), z                      # the other structure: its own half
    assert np.array_equal(g.open[5], signed_distance(two, (1.0, 1.0)) < 3.0)    # 3 mm around it
    assert not g.open[14][three].any() and g.open[16][three].all() and not g.open[16][two].any()
    assert g.open[15][two].all() and g.open[15][three].all()       # the middle slice: both halves
    assert not g.open[10][disc(6, (40, 40), (10.0, 10.0))].any()  # class 1 is interpolated there
    # the network, fairly sure (0.6) of class 2 and 3 where each was painted, on every slice
    probs = np.full((31, 4, 40, 40), 0.1, np.float32)
    probs[:, 0] = 0.7
    probs[:, :, two] = np.array([0.3, 0.05, 0.6, 0.05], np.float32)[None, :, None]
    probs[:, :, three] = np.array([0.3, 0.05, 0.05, 0.6], np.float32)[None, :, None]
    out = g.fuse(range(31), probs)
    assert (out[5][two] == 2).all() and (out[25][three] == 3).all()   # left to the network
    assert (out[25][two] == 0).all() and (out[5][three] == 0).all()   # the far half: background
    # a narrow gap (30 slices of 0.4 mm = 12 mm): the structure ends close by, the guide says
    # background all the way (the network would need odds of 77 : 1 to overrule it)
    narrow = interpolate(classes, [0, 30], 4, slice_mm=0.4)
    assert narrow.open == {}
    assert (narrow.fuse([5], probs[5:6])[0][two] == 0).all()
    assert interpolate(classes, [0, 30], 4, slice_mm=0.41).open.keys() == g.open.keys()
    assert interpolate(classes, [0, 30], 4).open.keys() == g.open.keys()      # 1 mm by default
    assert interpolate(classes[:13], [0, 12], 4).open == {}                    # 12 mm: not wider
    # 2 mm pixels: "within 3 mm" is strict — the pixel two pixels out (3 mm beyond the outline,
    # which lies half a pixel outside the edge pixels) is not within it
    coarse = interpolate(classes, [0, 30], 4, (2.0, 2.0)).open[5]
    assert np.array_equal(coarse, signed_distance(two, (2.0, 2.0)) < 3.0)
    row = np.flatnonzero(two[28])
    assert coarse[28, row.max() + 1] and not coarse[28, row.max() + 2]


def test_across_a_wide_gap_the_interpolated_outline_is_soft():
    # the same discs on slices 0 and 20, 20 mm apart: on slice 10 the interpolated disc is that
    # disc, and its outline is uncertain by millimetres — the network, leaning to class 1 (0.6
    # against 0.4) everywhere, moves the outline out to where the vote for class 1 drops below
    # 0.395: 0.6·(0.95 σ + 0.025) > 0.4·(0.95 (1 − σ) + 0.025) ⇔ σ(−d / 2 mm) > 0.375 / 0.95
    # ⇔ d < 2 · ln(0.6053 / 0.3947) = 0.855 mm
    one, two = disc(8, (48, 48), (16.0, 16.0)), disc(5, (48, 48), (34.0, 34.0))
    classes = np.zeros((21, 48, 48), np.uint8)
    for z in (0, 20):
        classes[z][one], classes[z][two] = 1, 2
    g = interpolate(classes, [0, 20], 3, slice_mm=1.0)
    assert sorted(g.soft) == list(range(1, 20)) and g.open == {}
    near, tenths = g.soft[10]
    d_one, d_two = signed_distance(one, (1.0, 1.0)), signed_distance(two, (1.0, 1.0))
    assert np.array_equal(near, np.where(d_two < d_one, 2, 1))          # the nearest structure
    assert np.abs(tenths / 10 - np.clip(np.minimum(d_one, d_two), -12.7, 12.7)).max() <= 0.051
    big = np.zeros((21, 48, 48), np.uint8)
    big[0][disc(16, (48, 48), (24.0, 24.0))] = big[20][disc(16, (48, 48), (24.0, 24.0))] = 1
    deep = interpolate(big, [0, 20], 2).soft[10][1]
    assert deep[24, 24] == -127 and deep.min() == -127 and deep.max() == 127   # 12.7 mm and beyond
    vote = g.soft_vote(np.array([[1, 2, 0]], np.uint8), np.array([[0, -20, 5]], np.int8))
    assert np.allclose(vote[:, 0, 0], [0.5, 0.5, 0.0]) and np.allclose(vote[:, 0, 2], [1.0, 0.0, 0.0])
    assert np.allclose(vote[:, 0, 1], [1 - 1 / (1 + np.exp(-1.0)), 0.0, 1 / (1 + np.exp(-1.0))])
    probs = np.zeros((21, 3, 48, 48), np.float32)
    probs[:, 0], probs[:, 1] = 0.4, 0.6
    far = d_two > 3                       # (the network gives class 2 nothing: judged away from it)
    out = g.fuse(range(21), probs)
    assert np.array_equal((out[10] == 1)[far], (d_one < 0.855)[far])
    assert 0 < (out[10] == 1).sum() - one.sum() < 0.5 * one.sum()       # a rim, not the whole slice
    # 10 mm apart: the outline stays hard, and the network at 0.6 cannot move it
    narrow = interpolate(classes, [0, 20], 3, slice_mm=0.5)
    near12 = classes[:13].copy()
    near12[12] = classes[20]
    assert narrow.soft == {} and interpolate(near12, [0, 12], 3).soft == {}     # 12 mm at 1 mm
    assert np.array_equal((narrow.fuse([10], probs[10:11])[0] == 1)[far], one[far])


def test_guide_for_maps_label_values_and_refuses_unknown_ones():
    label = np.full((6, 8, 8), IGNORE, np.uint8)
    label[1] = 0
    label[1, 2:5, 2:5] = 7                # value 7 is the model's second class
    label[4] = 0
    label[4, 2:5, 2:5] = 7
    g = guide_for(label, [3, 7], [1, 4], (1.0, 1.0), 1.0)
    assert isinstance(g, Guide) and g.num_classes == 3 and g.classes.dtype == np.uint8
    assert (g.classes[2, 2:5, 2:5] == 2).all() and g.classes[2].sum() == 18
    assert guide_for(label, [7, 256], [1, 4], (1.0, 1.0), 1.0).classes[2].sum() == 9   # a value a uint8 map cannot hold
    wide = label.astype(np.uint16)
    wide[wide == 7] = 300                 # label values beyond 255 (IGNORE stays 255)
    assert np.array_equal(guide_for(wide, [3, 300], [1, 4], (1.0, 1.0), 1.0).classes, g.classes)
    label[4, 0, 0] = 9
    with pytest.raises(mt.MedTransferError, match=r"label values \[9\] the model.*\[3, 7\]"):
        guide_for(label, [3, 7], [1, 4], (1.0, 1.0), 1.0)
    label[4, 1, :] = np.arange(20, 28)    # an image given as the painted map: only the first ten are listed
    label[4, 2, :] = np.arange(28, 36)
    with pytest.raises(mt.MedTransferError, match=r"label values \[9, 20, 21, 22, 23, 24, 25, 26, 27, 28, … \(17 in "
                                                  r"all\)\] the model does not predict"):
        guide_for(label, [3, 7], [1, 4], (1.0, 1.0), 1.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    datalist = write_blob_datalist(folder)
    run = mt.train(datalist, folder / "run", reporter=Reporter(stream=None, bar=False),
                   backbone="resnet18", weights=None, strategy="finetune", epochs=1, steps_per_epoch=1,
                   batch_size=2, patch=64, val_fraction=0)
    return datalist, run


def test_predict_guided_keeps_painted_slices_and_follows_the_interpolation(tiny):
    import json

    datalist, run = tiny
    data = json.loads(datalist.read_text())
    entry = data["training"][0]
    full = mt.read_case(datalist.parent / entry["image"], datalist.parent / entry["label"])
    ref = full.label.copy()
    painted = [2, 6, 10, 14]
    sparse = np.full_like(ref, IGNORE)
    sparse[painted] = ref[painted]
    case = mt.read_case(datalist.parent / entry["image"])
    case.label = sparse
    alone = mt.predict(run.package, case).label
    guided = mt.predict(run.package, case, guide=True).label
    assert np.array_equal(guided[painted], ref[painted])
    held = [s for s in range(3, 14) if s not in painted]
    scores = [dice(p[held] == 1, ref[held] == 1) for p in (alone, guided)]
    assert scores[1] > 0.8 and scores[1] > scores[0] + 0.2, scores      # a one-step network knows little
    case.label = None
    with pytest.raises(mt.MedTransferError, match="no painted label map"):
        mt.predict(run.package, case, guide=True)


def test_case_guide_counts_only_slices_painted_all_over_along_the_models_axis():
    from MedTransferLib.core.case import Case, Geometry
    from MedTransferLib.inference.guide import case_guide

    label = np.full((8, 10, 12), IGNORE, np.uint8)     # (k, j, i)
    label[2] = 0
    label[2, 3:6, 3:6] = 1
    label[6] = 0
    label[6, 3:6, 3:6] = 1
    geometry = Geometry((12, 10, 8), (0.5, 0.7, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    case = Case(np.zeros(label.shape, np.float32), geometry, label)
    g = case_guide(case, [1], axis=2)
    assert g.painted.nonzero()[0].tolist() == [2, 6] and (g.classes[4, 3:6, 3:6] == 1).all()
    across = case_guide(case, [1], axis=0)              # painted along k, predicted along i
    assert not across.painted.any() and not across.known.any()
    # the gap is 4 slices of 3 mm (12 mm): a structure painted on slice 2 alone ends close by;
    # 2 mm further apart and the guide leaves its end to the network (inference/guide.py)
    label[6, 3:6, 3:6] = 0
    assert case_guide(case, [1], axis=2).open == {}
    wider = Geometry((12, 10, 8), (0.5, 0.7, 3.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert sorted(case_guide(Case(case.image, wider, label), [1], axis=2).open) == [3, 4]


def test_cli_predict_painted(tiny, tmp_path, capsys):
    import json

    from MedTransferLib.app.cli import main
    from MedTransferLib.data.io import read_image

    datalist, run = tiny
    entry = json.loads(datalist.read_text())["training"][0]
    image, label = datalist.parent / entry["image"], datalist.parent / entry["label"]
    ref, _ = read_image(label, "label")
    out = tmp_path / "seg.nii.gz"
    args = ["predict", "--model", str(run.package), "--image", str(image), "--out", str(out), "--painted", str(label)]
    assert main(args + ["--labelled-slices", "2,6,10-10,14"]) == 0
    seg, _ = read_image(out, "label")
    assert np.array_equal(seg[[2, 6, 10, 14]], ref[[2, 6, 10, 14]])
    held = [3, 4, 5, 7, 8, 9, 11, 12, 13]
    guided = dice(seg[held] == 2, ref[held] == 2)
    assert main(args[:-2] + []) == 0
    alone, _ = read_image(out, "label")
    assert guided > 0.8 and guided > dice(alone[held] == 2, ref[held] == 2) + 0.2
    def refused(extra, message):
        capsys.readouterr()
        assert main(extra) != 0
        assert message in capsys.readouterr().err

    refused(args + ["--labelled-slices", "2,16"], "--labelled-slices [16] lie outside the image's 16 slices along "
                                                  "axis 2; give indices 0–15")
    refused(args + ["--labelled-slices", "2,a"], "--labelled-slices '2,a' is not a list like")
    refused(args + ["--labelled-slices", "2,9-6"], "the range '9-6' runs backwards; write it as 6-9")
    refused(args + ["--overlap", "1"], "--overlap 1.0 must be in [0, 1)")   # a window that never moves on
    refused(args[:-2] + ["--labelled-slices", "2"], "--labelled-slices goes with --painted")
    other = tmp_path / "other.nii.gz"
    from conftest import write_volume
    write_volume(other, np.zeros((16, 40, 47), np.uint8), (0.8, 0.8, 2.0))
    refused(args[:-1] + [str(other)], "is not on the image's voxel grid")
