"""The 2.5D and 3D training-data functions one by one, against expectations worked out by hand:
augmentation with fixed draws (a 90° turn is np.rot90, a 2× zoom quadruples an area, gains and
shifts are exact), the validation split, crop origins and sizes, patch sizes, extents.
Written to kill the mutants bench/mutation.py found in dataset.py and dataset3d.py."""

import numpy as np
import pytest
import torch

from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.augment import augment
from MedTransferLib.data.sampling import PatchSampler3D, SlabSampler
from MedTransferLib.data.slabs import (
    Volume,
    auto_patch_3d,
    crop_pad,
    crop_pad_nd,
    largest_extent,
    padded_size,
    value_lut,
)
from MedTransferLib.data.split import SHORT_RUN_NOTE, split_train_val


class FixedDraws:
    """A stand-in for numpy's Generator that returns chosen values: ``uniform`` pops the next
    array (a scalar when no size is asked for, as numpy does), ``integers`` returns a fixed seed."""

    def __init__(self, *uniforms, seed=1234):
        self.uniforms = [np.asarray(u, float) for u in uniforms]
        self.seed = seed
        self.bounds = []
        self.int_bounds = []

    def uniform(self, lo, hi, size=None):
        self.bounds.append((lo, hi))
        value = self.uniforms.pop(0)
        return float(value.ravel()[0]) if size is None else value

    def integers(self, n):
        self.int_bounds.append(n)
        return self.seed


def _square(n=16, lo=2, hi=6):
    img = np.zeros((1, 1, n, n), np.float32)
    img[0, 0, lo:hi, 3:11] = 1.0
    img[0, 0, 0, 0] = 2.0           # an asymmetric marker
    return img


def test_augment_with_no_change_drawn_returns_the_batch():
    img = np.random.default_rng(0).normal(size=(2, 3, 12, 10)).astype(np.float32)
    tgt = np.random.default_rng(1).integers(0, 3, size=(2, 12, 10))
    rng = FixedDraws([0.0, 0.0], [1.0, 1.0], np.ones((2, 1, 1, 1)), np.zeros((2, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    np.testing.assert_allclose(x.numpy(), img, atol=1e-5)
    assert torch.equal(y, torch.from_numpy(tgt).long())
    # the draws come from the documented ranges
    assert rng.bounds == [(-15.0, 15.0), (0.85, 1.15), (0.9, 1.1), (-0.1, 0.1)]


def test_a_90_degree_turn_is_rot90_for_image_and_target():
    img = _square()
    tgt = (img[:, 0] > 0.5).astype(np.int64)
    rng = FixedDraws([90.0], [1.0], np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    # out(x, y) = in(R(x, y)), R = [[cos, -sin], [sin, cos]]: out[i, j] = in[j, N-1-i] = rot90(in)[i, j]
    np.testing.assert_allclose(x.numpy()[0, 0], np.rot90(img[0, 0]), atol=1e-5)
    assert np.array_equal(y.numpy()[0], np.rot90(tgt[0]))


def test_a_2x_zoom_quadruples_the_area_and_the_corners_come_from_outside():
    n = 32
    tgt = np.zeros((1, n, n), np.int64)
    tgt[0, 12:20, 12:20] = 1                       # an 8×8 square in the middle
    img = tgt[:, None].astype(np.float32) + 5.0
    rng = FixedDraws([0.0], [2.0], np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    assert int((y == 1).sum()) == 256              # 16×16
    assert not (y == IGNORE).any()                 # zooming in samples only inside
    rng = FixedDraws([0.0], [0.5], np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    assert int((y == 1).sum()) == 16               # 4×4
    assert int((y == IGNORE).sum()) == n * n - 16 * 16     # zooming out: the border came from outside
    assert float(x.min()) == pytest.approx(5.0)    # and the image fills it with its minimum


def test_rotation_by_45_degrees_leaves_the_corners_unlabelled():
    n = 20
    tgt = np.zeros((1, n, n), np.int64)
    img = np.random.default_rng(0).normal(size=(1, 1, n, n)).astype(np.float32)
    rng = FixedDraws([45.0], [1.0], np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    y = y.numpy()[0]
    assert y[0, 0] == y[0, -1] == y[-1, 0] == y[-1, -1] == IGNORE and y[n // 2, n // 2] == 0
    assert x.numpy()[0, 0, 0, 0] == pytest.approx(float(img.min()), abs=1e-5)


def _nearest_reference(target, theta_deg, scale):
    """torch's affine_grid + grid_sample(nearest, zeros, align_corners=False) written out in
    numpy for one 2D target: each output pixel centre, in normalised coordinates, is mapped by
    [[cos, -sin], [sin, cos]] / s onto the input; the nearest input pixel (ties to even, like
    torch) gives the class, and one outside the input gives IGNORE."""
    h, w = target.shape
    t, s = np.deg2rad(theta_deg), scale
    m = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / s
    out = np.full((h, w), IGNORE, np.int64)
    for i in range(h):
        for j in range(w):
            xn, yn = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
            xs, ys = m @ np.array([xn, yn], np.float32)
            px, py = np.rint(((xs + 1) * w - 1) / 2), np.rint(((ys + 1) * h - 1) / 2)
            if 0 <= px < w and 0 <= py < h:
                out[i, j] = target[int(py), int(px)]
    return out


@pytest.mark.filterwarnings("error")      # e.g. torch's warning for an unset align_corners
def test_rotation_and_scaling_match_a_written_out_nearest_neighbour_resampling():
    rng0 = np.random.default_rng(3)
    tgt = rng0.integers(0, 4, size=(2, 23, 19))
    img = rng0.normal(size=(2, 1, 23, 19)).astype(np.float32)
    draws = FixedDraws([30.0, -12.0], [1.1, 0.8], np.ones((2, 1, 1, 1)), np.zeros((2, 1, 1, 1)))
    _, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), draws, noise=0.0)
    for k, (deg, s) in enumerate(((30.0, 1.1), (-12.0, 0.8))):
        ref = _nearest_reference(tgt[k], deg, s)
        agree = np.mean(y.numpy()[k] == ref)
        assert agree > 0.995, agree        # float rounding may flip a pixel on an exact tie


def test_padding_uses_each_samples_own_minimum_per_sample_not_per_channel():
    n = 16
    img = np.zeros((2, 2, n, n), np.float32)
    img[0, 0] += 3.0
    img[0, 1] += 7.0                  # sample 0: minimum 3 (its first channel)
    img[1, 0] += -2.0
    img[1, 1] += 10.0                 # sample 1: minimum −2
    tgt = np.zeros((2, n, n), np.int64)
    draws = FixedDraws([0.0, 0.0], [0.5, 0.5], np.ones((2, 1, 1, 1)), np.zeros((2, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), draws, noise=0.0)
    x = x.numpy()
    assert x[0, :, 0, 0].tolist() == pytest.approx([3.0, 3.0]) and x[1, :, 0, 0].tolist() == pytest.approx([-2.0, -2.0])
    assert x[0, 1, n // 2, n // 2] == pytest.approx(7.0)          # inside: the image itself


def test_default_noise_is_small_and_seeded_from_the_draws():
    img = np.zeros((1, 1, 64, 64), np.float32)
    tgt = np.zeros((1, 64, 64), np.int64)
    draws = FixedDraws([0.0], [1.0], np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), seed=5)
    x, _ = augment(torch.from_numpy(img), torch.from_numpy(tgt), draws)
    assert 0.025 < float(x.std()) < 0.035 and draws.int_bounds == [2 ** 31]


def test_intensity_gain_shift_and_noise_are_exactly_applied():
    img = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    tgt = np.zeros((2, 8, 8), np.int64)
    gain = np.array([1.05, 0.92]).reshape(2, 1, 1, 1)
    shift = np.array([-0.03, 0.07]).reshape(2, 1, 1, 1)
    rng = FixedDraws([0.0, 0.0], [1.0, 1.0], gain, shift, seed=99)
    x, _ = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.02)
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(99)).numpy()
    np.testing.assert_allclose(x.numpy(), img * gain + shift + 0.02 * noise, atol=1e-5)


def test_3d_augment_turns_in_plane_and_scales_the_slice_axis_too():
    d, n = 8, 16
    tgt = np.zeros((1, d, n, n), np.int64)
    tgt[0, 2:6, 4:12, 4:12] = 1
    img = tgt[:, None].astype(np.float32)
    rng = FixedDraws([90.0], [1.0], np.ones((1, 1, 1, 1, 1)), np.zeros((1, 1, 1, 1, 1)))
    x, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    assert np.array_equal(y.numpy()[0], np.rot90(tgt[0], axes=(1, 2)))   # each slice turned, slices kept
    rng = FixedDraws([0.0], [2.0], np.ones((1, 1, 1, 1, 1)), np.zeros((1, 1, 1, 1, 1)))
    _, y = augment(torch.from_numpy(img), torch.from_numpy(tgt), rng, noise=0.0)
    assert int((y == 1).sum()) == 8 * 16 * 16     # 2× along every axis: 4 slices → 8, 8×8 → 16×16


def test_crop_pad_copies_the_window_and_pads_outside():
    arr = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    out = crop_pad(arr, -1, 3, 3, 4, value=-7)
    expected = np.full((2, 3, 4), -7)
    expected[:, 1:3, 0:2] = arr[:, 0:2, 3:5]
    assert np.array_equal(out, expected)
    assert np.array_equal(crop_pad(arr, 10, 10, 2, 2, 0), np.zeros((2, 2, 2)))      # nothing overlaps
    assert np.array_equal(crop_pad(arr, 0, 0, 4, 5, 0), arr)
    assert crop_pad_nd(np.ones((3, 3, 3), np.float32), (0, 0, 0), (4, 4, 4), 0.5).dtype == np.float32
    nd = crop_pad_nd(np.arange(3 * 4 * 5).reshape(3, 4, 5), (1, -2, 4), (2, 3, 3), -1)
    exp = np.full((2, 3, 3), -1)
    exp[:, 2, 0] = np.arange(3 * 4 * 5).reshape(3, 4, 5)[1:3, 0, 4]
    assert np.array_equal(nd, exp)
    assert np.array_equal(crop_pad_nd(np.ones((2, 3, 3)), (5, 0, 0), (1, 3, 3), 0), np.zeros((1, 3, 3)))
    chan = crop_pad_nd(np.ones((2, 3, 4, 4)), (0, 0, 0), (3, 4, 4), 0)                  # channels kept
    assert chan.shape == (2, 3, 4, 4) and chan.all()


def test_padded_size_and_the_label_lookup():
    assert padded_size(31, 33) == (32, 64) and padded_size(32, 1) == (32, 32)
    lut = value_lut([5, 2, 9], 9)
    assert lut.dtype == np.uint8                     # a class map the size of the volume stays small
    assert lut[0] == 0 and lut[5] == 1 and lut[2] == 2 and lut[9] == 3
    assert lut[1] == lut[3] == lut[7] == IGNORE and len(lut) == IGNORE + 1
    assert len(value_lut([300], 300)) == 301


def _vol(target, name="v"):
    return Volume(np.zeros((1,) + target.shape, np.float32), target, name)


def test_largest_extent_of_any_structure_on_the_given_slices():
    t = np.full((4, 20, 30), IGNORE, np.uint8)
    t[1] = 0
    t[1, 2:5, 3:10] = 1          # 3 × 7
    t[2] = 0
    t[2, 0:12, 0:2] = 2          # 12 × 2
    t[3] = 0
    t[3, 0:20, 0:30] = 1         # not among the items
    vols = [_vol(t)]
    assert largest_extent(vols, [(0, 1)]) == 7
    assert largest_extent(vols, [(0, 1), (0, 2)]) == 12
    assert largest_extent(vols, [(0, 2), (0, 1)]) == 12     # the largest, not the last
    assert largest_extent(vols, [(0, 0)]) == 0


def test_auto_patch_3d_is_a_multiple_around_the_structure_within_bounds():
    t = np.zeros((40, 200, 200), np.uint8)
    t[5, 10:60, 10:20] = 1        # extent 50 → 1.5× = 75 → 96 (a multiple of 32)
    vols = [_vol(t)]
    assert auto_patch_3d(vols, [(0, 5)]) == (64, 96, 96)          # no deeper than the (padded) volume
    t2 = np.zeros((300, 300, 300), np.uint8)
    t2[5, 0:200, 0:5] = 1          # huge → capped at 128
    assert auto_patch_3d([_vol(t2)], [(0, 5)]) == (128, 128, 128)
    t3 = np.zeros((300, 300, 300), np.uint8)
    t3[5, 0:3, 0:3] = 1            # tiny → at least 64
    assert auto_patch_3d([_vol(t3)], [(0, 5)]) == (64, 64, 64)
    assert auto_patch_3d([_vol(t3)], [(0, 5)], multiple=16, lo=16, hi=48) == (16, 16, 16)


def test_one_case_holds_out_slices_spread_over_the_structures():
    t = np.full((40, 6, 6), IGNORE, np.uint8)
    fg = list(range(0, 40, 2))       # 20 labelled slices holding a structure
    for s in fg:
        t[s] = 0
        t[s, 2, 2] = 1
    for s in (1, 3, 5, 7):           # 4 labelled empty slices
        t[s] = 0
    train, val, note = split_train_val([_vol(t)], 0.2, seed=0)
    # 20 % of 20 structure slices = 4, at positions (i + 0.5) × 20 / 4 → items 2, 7, 12, 17;
    # 20 % of 4 empty slices = 1 (0.8 rounds to 1), at position 2
    assert sorted(s for _, s in val) == sorted({fg[2], fg[7], fg[12], fg[17], 5})
    assert sorted(s for _, s in train + val) == sorted(fg + [1, 3, 5, 7])
    assert not set(train) & set(val) and "5 of 24 labelled slices are held out" in note
    few = np.full((10, 6, 6), IGNORE, np.uint8)
    few[:9] = 0
    few[:9, 1, 1] = 1                # 9 slices with structures: fewer than 10, none held out
    train, val, note = split_train_val([_vol(few)], 0.2, seed=0)
    assert val == [] and len(train) == 9 and "at least 10" in note
    train, val, note = split_train_val([_vol(t)], 0.0, seed=0)
    assert val == [] and note == ("validation: none (validation fraction 0); training runs for the full number "
                                  "of epochs without early stopping")
    assert split_train_val([_vol(t)], 0.2, seed=0)[1] == split_train_val([_vol(t)], 0.2, seed=5)[1]  # no chance in it
    train, val, note = split_train_val([_vol(t)], 0.2, seed=0, short_run=True)   # an Update: nothing held out
    assert val == [] and sorted(s for _, s in train) == sorted(fg + [1, 3, 5, 7]) and note == SHORT_RUN_NOTE


def test_several_cases_hold_out_whole_cases():
    cases = []
    for i in range(5):
        t = np.full((6, 4, 4), IGNORE, np.uint8)
        t[i % 6] = 0
        t[(i + 1) % 6] = 1
        cases.append(_vol(t, f"case{i}"))
    train, val, note = split_train_val(cases, 0.4, seed=3)
    val_cases = {v for v, _ in val}
    assert len(val_cases) == 2 and not val_cases & {v for v, _ in train}
    assert all(len([s for v, s in train + val if v == i]) == 2 for i in range(5))
    held = sorted(val_cases)
    assert note == f"validation: 2 of 5 cases held out (case{held[0]}, case{held[1]})"
    assert split_train_val(cases, 0.01, seed=3)[2].startswith("validation: 1 of 5")   # at least one
    many = [_vol(cases[i % 5].target, f"c{i}") for i in range(12)]
    runs = [split_train_val(many, 0.34, seed=3) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]                                                # the seed decides
    assert len({tuple(sorted({v for v, _ in split_train_val(many, 0.34, seed=k)[1]})) for k in range(8)}) > 1
    two = split_train_val(cases[:2], 0.5, seed=0)
    assert len({v for v, _ in two[1]}) == 1 and "1 of 2 cases" in two[2]            # two cases: one each side
    for n in (2, 5):   # no validation asked: every case trains, whole
        train, val, note = split_train_val(cases[:n], 0.0, seed=0)
        assert val == [] and len(train) == 2 * n and {v for v, _ in train} == set(range(n))
        assert note == ("validation: none (validation fraction 0); training runs for the full number of "
                        "epochs without early stopping")
    with pytest.raises(MedTransferError, match="has no labelled slice"):
        split_train_val([cases[0], _vol(np.full((6, 4, 4), IGNORE, np.uint8), "empty")], 0.4, seed=0)


def test_crop_jitter_spans_a_quarter_of_the_crop_each_way():
    t = np.zeros((1, 300, 300), np.uint8)
    vol = Volume(np.zeros((1, 1, 300, 300), np.float32), t, "v")
    sampler = SlabSampler([vol], [(0, 0)], 1, 2, patch=64, seed=0)
    ys = [sampler._crop_origin((300, 300), (150, 40))[0] for _ in range(600)]
    # centre 150 − 32, jitter −16…16 (not clipped); at 40 − 32 = 8, clipped at 0 from below
    assert min(y for y, _ in ys) == 150 - 32 - 16 and max(y for y, _ in ys) == 150 - 32 + 16
    assert min(x for _, x in ys) == 0 and max(x for _, x in ys) == 8 + 16
    small = SlabSampler([vol], [(0, 0)], 1, 2, patch=256, seed=0)
    ys = [small._crop_origin((100, 120), (50, 60))[0][0] for _ in range(600)]
    assert min(ys) == 100 - 128 and max(ys) == 0       # a slice smaller than the crop moves within it


def test_sampler_defaults_crop_256_oversample_two_thirds_and_seed_0():
    t = np.zeros((1, 300, 300), np.uint8)
    t[0, 150, 150] = 1                                  # one voxel
    vol = Volume(np.random.default_rng(0).normal(size=(1, 1, 300, 300)).astype(np.float32), t, "v")
    a = SlabSampler([vol], [(0, 0)], 1, 2)
    assert a._crop_origin((300, 300), (150, 150))[1] == (256, 256)
    picks = [a.pick()[2] == (150, 150) for _ in range(2000)]
    assert 0.62 < np.mean(picks) < 0.72                 # 0.67 by class, plus chance hits (~0)
    b, c = SlabSampler([vol], [(0, 0)], 1, 2), SlabSampler([vol], [(0, 0)], 1, 2, seed=0)
    assert np.array_equal(b.sample(3)[0], c.sample(3)[0])
    three = PatchSampler3D([vol], [(0, 0)], 2, (1, 32, 32))
    hits = np.mean([three.pick()[2] == (150, 150) for _ in range(2000)])
    assert 0.62 < hits < 0.72
    d, e = PatchSampler3D([vol], [(0, 0)], 2, (1, 32, 32)), PatchSampler3D([vol], [(0, 0)], 2, (1, 32, 32), seed=0)
    assert np.array_equal(d.sample(4)[0], e.sample(4)[0])                 # the default seed is 0
    f = PatchSampler3D([vol], [(0, 0)], 2, (1, 32, 32), seed=5)
    assert not np.array_equal(PatchSampler3D([vol], [(0, 0)], 2, (1, 32, 32)).sample(4)[0], f.sample(4)[0])


def test_a_batch_of_different_sizes_is_padded_to_the_largest_at_the_top_left():
    v1 = Volume(np.arange(40 * 72, dtype=np.float32).reshape(1, 1, 40, 72) + 100, np.zeros((1, 40, 72), np.uint8), "a")
    v2 = Volume(np.full((1, 1, 50, 30), -4.0, np.float32), np.ones((1, 50, 30), np.uint8), "b")
    sampler = SlabSampler([v1, v2], [(0, 0), (1, 0)], 1, 2, patch=512, p_foreground=0.0, seed=0)
    images, targets = sampler.sample(12)
    assert images.shape == (12, 1, 64, 96)              # 40×72 → 64×96, 50×30 → 64×32: padded to 64×96
    seen = set()
    for img, tgt in zip(images, targets):
        if (tgt == 1).any():                            # from v2: 50 × 30 labelled pixels, min −4 as filler
            seen.add("b")
            assert int((tgt != IGNORE).sum()) == 50 * 30 and (img == -4.0).all()
        else:                                           # from v1: the whole slice, image and labels aligned
            seen.add("a")
            assert int((tgt != IGNORE).sum()) == 40 * 72 and img.min() == 100.0
            assert sorted(img[0][tgt != IGNORE].tolist()) == list(range(100, 100 + 40 * 72))
    assert seen == {"a", "b"}


def test_volumes_without_labels_have_no_target():
    from MedTransferLib.core.case import Case, Geometry
    from MedTransferLib.data.preprocessing import Preprocessing

    geo = Geometry((8, 6, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    case = Case(np.random.default_rng(0).normal(size=(4, 6, 8)).astype(np.float32), geo)
    vol = Volume.from_case(case, Preprocessing(), 2, [1])
    assert vol.target is None and vol.image.shape == (1, 4, 6, 8)
    case.label = np.zeros((4, 6, 8), np.uint8)
    assert Volume.from_case(case, Preprocessing(), 2, [1]).target.dtype == np.uint8


def test_crops_are_centred_near_the_picked_voxel_and_stay_in_bounds():
    t = np.zeros((3, 100, 120), np.uint8)
    t[1, 80:90, 100:110] = 1
    vol = Volume(np.arange(3 * 100 * 120, dtype=np.float32).reshape(1, 3, 100, 120), t, "v")
    sampler = SlabSampler([vol], [(0, 1)], 1, 2, patch=32, p_foreground=1.0, seed=0)
    for _ in range(50):
        origin, size = sampler._crop_origin((100, 120), (85, 105))
        assert size == (32, 32)
        # centre ± a quarter of the crop, clipped to the slice
        assert 85 - 16 - 8 <= origin[0] <= 85 - 16 + 8 and 0 <= origin[0] <= 100 - 32
        assert 105 - 16 - 8 <= origin[1] <= min(105 - 16 + 8, 120 - 32)
    images, targets = sampler.sample(20)
    assert images.shape == (20, 1, 32, 32) and (targets == 1).any(axis=(1, 2)).all()   # p_foreground 1
    small = SlabSampler([vol], [(0, 1)], 1, 2, patch=256, seed=0)
    for _ in range(50):   # a slice smaller than the crop: the crop (padded to 32s) holds all of it
        (y0, x0), size = small._crop_origin((100, 120), (50, 60))
        assert size == (128, 128) and 100 - 128 <= y0 <= 0 and 120 - 128 <= x0 <= 0
    img, tgt = small.sample(1)
    assert img.shape == (1, 1, 128, 128) and int((tgt[0] != IGNORE).sum()) == 100 * 120


def test_the_sampler_picks_every_class_uniformly():
    t = np.zeros((2, 50, 50), np.uint8)
    t[0, 10:40, 10:40] = 1          # large
    t[1, 5, 5] = 2                  # one voxel
    vol = Volume(np.zeros((1, 2, 50, 50), np.float32), t, "v")
    sampler = SlabSampler([vol], [(0, 0), (0, 1)], 1, 3, patch=32, p_foreground=1.0, seed=0)
    assert sampler.classes == [1, 2] and sampler.by_class == {1: [(0, 0)], 2: [(0, 1)]}
    picks = [sampler.pick() for _ in range(400)]
    share = np.mean([s == 1 for _, s, _ in picks])
    assert 0.4 < share < 0.6
    assert all(yx == (5, 5) for _, s, yx in picks if s == 1)
    bg = SlabSampler([vol], [(0, 0)], 1, 3, patch=32, p_foreground=0.0, seed=0)
    ys = [bg.pick()[2][0] for _ in range(400)]
    assert min(ys) < 10 and max(ys) >= 40          # any voxel of the slice, not only the structure


def test_3d_patch_sampler_masks_planes_and_pads_with_the_minimum():
    t = np.zeros((6, 20, 20), np.uint8)
    t[2, 5:15, 5:15] = 1
    img = np.full((1, 6, 20, 20), 3.0, np.float32)
    img[0, :, 0, 0] = -1.0
    vol = Volume(img, t, "v")
    sampler = PatchSampler3D([vol], [(0, 2)], 2, (8, 16, 16), seed=0)
    assert [m.tolist() for m in sampler.train_mask] == [[False, False, True, False, False, False]]
    x, y = sampler.sample(10)
    assert x.shape == (10, 1, 8, 16, 16) and y.shape == (10, 8, 16, 16)
    # the volume (6 slices) is shallower than the patch (8): planes beyond it are padding
    for xi, yi in zip(x, y):
        labelled = (yi != IGNORE).any(axis=(1, 2))
        assert labelled.sum() == 1 and (yi[labelled] == 1).any()
        assert xi.min() == -1.0


def _origins_3d(depth, centre, patch, n=400):
    """Patch origins the 3D sampler draws around a one-voxel structure at ``centre`` (read back
    from an image that encodes each voxel's coordinates)."""
    z, y, x = np.meshgrid(np.arange(depth), np.arange(60), np.arange(60), indexing="ij")
    image = (z * 10000 + y * 100 + x).astype(np.float32) + 1e6
    image[0, 59, 59] = -5.0            # the minimum, which the sampler pads with: outside every patch here
    t = np.zeros((depth, 60, 60), np.uint8)
    t[centre] = 1
    sampler = PatchSampler3D([Volume(image[None], t, "v")], [(0, centre[0])], 2, patch, p_foreground=1.0, seed=0)
    out = []
    for _ in range(n):
        img, _ = sampler.sample(1)
        inside = img[0, 0][img[0, 0] >= 1e6]
        first = int(inside.min() - 1e6)
        dz = int(np.argmax((img[0, 0] >= 1e6).any(axis=(1, 2))))     # planes of padding before the volume
        out.append((first // 10000 - dz, first // 100 % 100, first % 100))
    return np.array(out)


def test_3d_patch_origins_jitter_a_quarter_each_way_and_stay_in_the_volume():
    o = _origins_3d(40, (20, 30, 30), (16, 32, 32))
    # z: 20 − 8 + (−4…4); y, x: 30 − 16 + (−8…8); none clipped
    assert (o[:, 0].min(), o[:, 0].max()) == (8, 16)
    assert (o[:, 1].min(), o[:, 1].max()) == (6, 22) and (o[:, 2].min(), o[:, 2].max()) == (6, 22)
    odd = _origins_3d(40, (20, 30, 30), (15, 32, 32))      # 20 − 7 + (−3…3)
    assert (odd[:, 0].min(), odd[:, 0].max()) == (10, 16)
    shallow = _origins_3d(6, (3, 30, 30), (8, 32, 32))
    # 6 slices, 8-slice patches: the volume sits anywhere from plane 0 to plane 2 of the patch
    assert (shallow[:, 0].min(), shallow[:, 0].max()) == (-2, 0)


def test_adabn_inputs_in_2_5d_are_padded_slabs_spread_over_the_volume():
    from MedTransferLib.data.preprocessing import Preprocessing
    from MedTransferLib.data.sampling import bn_inputs_2d

    image = np.random.default_rng(0).normal(size=(10, 20, 30)).astype(np.float32)
    prep = Preprocessing(target_mean=(0.5,), target_std=(2.0,))
    batches = [b.numpy() for b in bn_inputs_2d(image, 3, prep, max_slices=4, batch_size=3)]
    assert [b.shape for b in batches] == [(3, 3, 32, 32), (1, 3, 32, 32)]
    expected = []
    for s in (0, 3, 6, 9):                            # np.linspace(0, 9, 4) rounded
        slab = image[[max(0, s - 1), s, min(9, s + 1)]]
        expected.append(np.pad(slab, ((0, 0), (0, 12), (0, 2)), mode="edge") * 2.0 + 0.5)
    np.testing.assert_allclose(np.concatenate(batches), np.stack(expected), rtol=1e-6)


def test_adabn_inputs_in_3d_are_seeded_random_patches_padded_with_the_minimum():
    from MedTransferLib.data.preprocessing import Preprocessing
    from MedTransferLib.data.sampling import bn_inputs_3d

    image = np.random.default_rng(1).normal(size=(10, 12, 14)).astype(np.float32)
    prep = Preprocessing(target_mean=(0.5,), target_std=(2.0,))
    patch = (8, 16, 8)                                # taller than the image along the second axis
    batches = [b.numpy() for b in bn_inputs_3d(image, patch, prep, count=5, batch_size=2, seed=3)]
    assert [b.shape for b in batches] == [(2, 1, 8, 16, 8), (2, 1, 8, 16, 8), (1, 1, 8, 16, 8)]
    rng = np.random.default_rng(3)
    lo = float(image.min())
    crops = []
    for _ in range(5):
        origin = [int(rng.integers(min(0, n - p), max(0, n - p) + 1)) for n, p in zip(image.shape, patch)]
        out = np.full(patch, lo, np.float32)
        src = tuple(slice(max(0, o), min(n, o + p)) for o, n, p in zip(origin, image.shape, patch))
        dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin))
        out[dst] = image[src]
        crops.append(out[None] * 2.0 + 0.5)
    np.testing.assert_allclose(np.concatenate(batches), np.stack(crops), rtol=1e-6)
    assert all((b[:, 0] == lo * 2.0 + 0.5).any() for b in batches)   # every crop reaches past the image
