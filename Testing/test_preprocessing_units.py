"""The intensity recipe, function by function, against values computed here independently
(numpy on the same arrays, or by hand): where the percentiles are taken, the CT window, block
replay, channels, the backbone mapping, the manifest form, modality detection, and Nyúl's
histogram standardisation."""

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.core.case import Case, Geometry
from MedTransferLib.data.histogram import (
    HIST_PERCENTILES,
    apply_landmarks,
    landmarks,
    learn_landmarks,
    sparse_sample,
)
from MedTransferLib.data.preprocessing import (
    Preprocessing,
    detect_modality,
    imagenet_target_stats,
    make_preprocessing,
)


def _graded(shape, seed=0):
    """A volume whose slices differ in scale (slice k × (1 + k)), so statistics of every third
    slice differ from those of all slices."""
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 50.0, size=shape).astype(np.float32)
    return img * (1 + np.arange(shape[0], dtype=np.float32))[:, None, None]


def test_mr_percentiles_come_from_every_nth_slice_then_the_whole_volume_is_z_scored():
    img = _graded((200, 6, 7))                          # 200 // 64 = 3: every third slice
    params = []
    z = Preprocessing(modality="MR", mr_percentiles=(2.0, 97.0)).standardise(img, params)
    lo, hi = np.percentile(img[::3], (2.0, 97.0))
    clipped = np.clip(img, lo, hi)
    assert params[0]["lo"] == pytest.approx(lo) and params[0]["hi"] == pytest.approx(hi)
    assert params[0]["mean"] == pytest.approx(clipped.mean(), rel=1e-5)
    assert params[0]["std"] == pytest.approx(clipped.std(), rel=1e-5)
    assert np.allclose(z, (clipped - clipped.mean()) / clipped.std(), atol=1e-5)
    assert z.dtype == np.float32 and img.max() > hi          # the input is not modified
    small = _graded((40, 6, 7))                                 # fewer than 64 slices: all of them
    params = []
    Preprocessing(modality="MR").standardise(small, params)
    assert params[0]["lo"] == pytest.approx(np.percentile(small, 0.5))


def test_a_ct_window_maps_its_centre_to_0_and_its_ends_to_plus_minus_1():
    hu = np.array([[[-500.0, -100.0, 100.0, 300.0, 700.0]]], np.float32)
    z = Preprocessing(modality="CT", ct_window=(-100.0, 300.0)).standardise(hu)
    assert z.ravel().tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0]
    params = []
    Preprocessing(modality="CT").standardise(hu, params)
    assert params == [{}]                                     # nothing fitted: the window is fixed


def test_any_block_of_slices_is_standardised_exactly_as_the_whole_volume():
    img = _graded((70, 5, 6))
    ct = np.random.default_rng(1).uniform(-1200, 1500, (70, 5, 6)).astype(np.float32)
    landmarks_mr = Preprocessing(modality="MR", histogram_landmarks=learn_landmarks([img, img * 2 + 5]))
    for prep, volume in ((Preprocessing(modality="MR"), img), (Preprocessing(modality="CT"), ct),
                         (landmarks_mr, img)):
        params = []
        whole = prep.standardise(volume, params)
        assert np.array_equal(prep.apply(volume[10:17], params), whole[10:17])
    two = Preprocessing(modality="CT", channel_modalities=("CT", "MR"), ct_window=(-200.0, 200.0))
    both = np.stack([ct, img])
    params = []
    whole = two.standardise(both, params)
    assert whole.shape == (2, 70, 5, 6) and len(params) == 2
    assert np.array_equal(whole[0], np.clip(ct, -200, 200) / 200)          # the channel keeps the window
    assert np.allclose(whole[1], Preprocessing(modality="MR").standardise(img), atol=1e-6)
    assert np.array_equal(two.apply(both[:, 3:9], params), whole[:, 3:9])


def test_the_number_of_images_must_match_the_recipe():
    img = _graded((8, 5, 6))
    with pytest.raises(mt.MedTransferError, match="trained on 2 images per case \\(CT, MR\\), this case has 3"):
        Preprocessing(channel_modalities=("CT", "MR")).standardise(np.stack([img] * 3))
    with pytest.raises(mt.MedTransferError, match="trained on one image per case, this case has 2"):
        Preprocessing(modality="MR").standardise(np.stack([img] * 2))
    with pytest.raises(mt.MedTransferError, match="trained on 2 images"):
        Preprocessing(channel_modalities=("CT", "MR")).standardise(img)


def test_constant_means_no_spread_relative_to_the_intensity_scale():
    flat = np.full((4, 4, 4), 5000.0, np.float32)
    flat[0, 0, 0] = 5000.001                        # spread 1e-3 × 1/64: below 1e-6 × 5000 after clipping
    with pytest.raises(mt.MedTransferError, match="constant"):
        Preprocessing(modality="MR", mr_percentiles=(0.0, 100.0)).standardise(flat)
    ok = np.full((4, 4, 4), 0.5, np.float32)
    ok[0, :2] = 0.5 + 1e-3                          # spread ~4e-4: small, but above 1e-6 × max(1, 0.5)
    z = Preprocessing(modality="MR", mr_percentiles=(0.0, 100.0)).standardise(ok)
    assert np.isfinite(z).all() and z.std() == pytest.approx(1.0, rel=1e-3)


def test_backbone_statistics_are_applied_per_channel_and_repeat_over_slabs():
    prep = Preprocessing(target_mean=(1.0, 2.0, 3.0), target_std=(10.0, 20.0, 30.0))
    z = np.ones((2, 6, 1, 1), np.float32)           # 6 channels: 3 slices × 2 images, the stats repeat
    x = prep.to_backbone(z)
    assert x[0, :, 0, 0].tolist() == [11.0, 22.0, 33.0, 11.0, 22.0, 33.0]
    t = prep.to_backbone(torch.ones(2, 3, 4, 4))
    assert torch.equal(t[1, :, 2, 2], torch.tensor([11.0, 22.0, 33.0]))
    first = prep.to_backbone(np.zeros((3, 5), np.float32), channel_axis=0)   # channels first
    assert first[:, 0].tolist() == [1.0, 2.0, 3.0] and first.shape == (3, 5)


def test_the_manifest_form_turns_lists_back_into_tuples_and_refuses_what_it_cannot_use():
    prep = Preprocessing(modality="CT", channel_modalities=("CT", "MR"), ct_window=(-200.0, 300.0),
                         mr_percentiles=(1.0, 99.0), target_mean=(0.1, 0.2), target_std=(1.0, 2.0),
                         histogram_landmarks=(0.0, 50.0, 100.0))
    d = prep.to_dict()
    assert d["ct_window"] == [-200.0, 300.0] and d["channel_modalities"] == ["CT", "MR"]
    again = Preprocessing.from_dict(d)
    assert again == prep and isinstance(again.ct_window, tuple) and isinstance(again.channel_modalities, tuple)
    with pytest.raises(mt.MedTransferError, match=r"unknown fields \['a', 'b'\]"):
        Preprocessing.from_dict({**d, "b": 1, "a": 2})
    with pytest.raises(mt.MedTransferError, match="modality 'PET' is not MR or CT"):
        Preprocessing.from_dict({**d, "modality": "PET"})
    with pytest.raises(mt.MedTransferError, match="is not MR or CT"):
        Preprocessing.from_dict({**d, "channel_modalities": ["CT", "US"]})


def test_ct_is_recognised_by_air_in_the_lowest_percent_of_a_sample_of_slices():
    vol = np.full((64, 10, 10), 40.0, np.float32)     # 64 // 32 = 2: every other slice is sampled
    vol[0::2, 0, :2] = -1000.0                         # 2 % of the sampled voxels: 1st percentile is air
    assert detect_modality(vol) == "CT"
    odd = np.full((64, 10, 10), 40.0, np.float32)
    odd[1::2, 0, :5] = -1000.0                         # only in slices the sample skips
    assert detect_modality(odd) == "MR"
    rare = np.full((64, 10, 10), 40.0, np.float32)
    rare[0::2, 0, 0] = -1000.0                         # 1 % of the sample: the 1st percentile is -> -1000+
    rare[0::2, 1, 0] = -400.0                          # ... with -400 above it: not below -500
    assert detect_modality(rare) == ("CT" if np.percentile(rare[::2], 1) < -500 else "MR") == "MR"


def test_backbone_targets_from_the_backbone_s_own_input_normalisation():
    mean, std = imagenet_target_stats((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert mean == pytest.approx(((0.485 - 0.5) / 0.25, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 1.0))
    assert std == pytest.approx((0.229 / 0.25, 0.224 / 0.5, 0.225 / 1.0))


def test_the_recipe_for_a_case_names_each_image_s_modality():
    geo = Geometry((6, 5, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct = np.full((64, 5, 6), -1000.0, np.float32)
    mr = _graded((64, 5, 6))
    one = make_preprocessing("auto", Case(ct, geo), (0.1,), (2.0,))
    assert one.modality == "CT" and one.channel_modalities == () and one.target_mean == (0.1,)
    assert one.target_std == (2.0,)
    two = make_preprocessing("auto", Case(np.stack([mr, ct]), geo), (0.0,), (1.0,))
    assert two.modality == "MR" and two.channel_modalities == ("MR", "CT")
    assert make_preprocessing("CT", Case(np.stack([mr, ct]), geo), (0.0,), (1.0,)).channel_modalities == ("CT", "CT")
    assert make_preprocessing(("CT", "MR"), Case(np.stack([mr, ct]), geo), (0.0,), (1.0,)).modality == "CT"
    with pytest.raises(mt.MedTransferError, match=r"1 modalities given \(MR\) for 2 images per case"):
        make_preprocessing(("MR",), Case(np.stack([mr, ct]), geo), (0.0,), (1.0,))


def test_histogram_landmarks_skip_the_background_and_sample_slices():
    img = _graded((96, 8, 9))                          # 96 // 48 = 2: every other slice
    s = img[::2]
    fg = s[s > np.percentile(s, 10)]
    assert np.allclose(landmarks(img), np.percentile(fg, HIST_PERCENTILES))
    assert sparse_sample(img).shape == (48, 8, 9) and sparse_sample(img).dtype == np.float32
    tiny = np.arange(60, dtype=np.float32).reshape(3, 4, 5)   # 60 voxels: all of them count
    assert np.allclose(landmarks(tiny), np.percentile(tiny, HIST_PERCENTILES))


def test_the_standard_scale_averages_each_image_s_landmarks_rescaled_to_0_100():
    a, b = _graded((20, 8, 9), 1), _graded((20, 8, 9), 2) ** 1.3
    la, lb = landmarks(a), landmarks(b)
    expect = ((la - la[0]) / (la[-1] - la[0]) + (lb - lb[0]) / (lb[-1] - lb[0])) * 50
    assert learn_landmarks([a, b]) == pytest.approx(tuple(np.round(expect, 4)), abs=1e-4)
    assert learn_landmarks([a])[0] == 0.0 and learn_landmarks([a])[-1] == 100.0
    with pytest.raises(mt.MedTransferError, match="constant"):
        learn_landmarks([a, np.full((20, 8, 9), 3.0)])


def test_the_landmark_map_is_piecewise_linear_inside_and_extrapolates_with_the_end_slopes():
    own = np.array([10.0, 20.0, 40.0])
    standard = (0.0, 50.0, 100.0)
    x = np.array([0.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0], np.float32)
    out = apply_landmarks(x, standard, own)
    # below 10: slope 50/10 = 5; 10..20: 5; 20..40: 2.5; above 40: 2.5
    assert out.tolist() == pytest.approx([-50.0, 0.0, 25.0, 50.0, 75.0, 100.0, 150.0], abs=1e-3)
    assert out.dtype == np.float32
    flat = apply_landmarks(np.array([5.0, 5.0], np.float32), standard, np.array([5.0, 5.0, 5.0]))
    assert np.isfinite(flat).all()                      # equal landmarks are made strictly increasing
    scale = tuple(np.linspace(0, 100, len(HIST_PERCENTILES)))
    measured = apply_landmarks(x, scale)                # without ``own``: the image's own landmarks
    assert np.allclose(measured, apply_landmarks(x, scale, landmarks(x)))


def test_outputs_are_float32_whatever_the_input_type():
    img64 = _graded((40, 5, 6)).astype(np.float64)
    prep = Preprocessing(modality="MR")
    params = []
    assert prep.standardise(img64, params).dtype == np.float32
    assert prep.apply(img64[:3], params).dtype == np.float32
    two = Preprocessing(channel_modalities=("MR", "MR"))
    p2 = []
    both = two.standardise(np.stack([img64, img64]), p2)
    assert both.dtype == np.float32 and two.apply(np.stack([img64, img64])[:, :3], p2).dtype == np.float32
    assert sparse_sample(img64).dtype == np.float32
    back = Preprocessing(target_mean=(0.5,), target_std=(2.0,))
    assert back.to_backbone(np.ones((1, 2, 3, 3), np.float32)).dtype == np.float32
    assert back.to_backbone(torch.ones(1, 2, 3, 3)).dtype == torch.float32


def test_sampled_percentiles_clip_blocks_at_both_ends_and_histograms_change_the_result():
    img = _graded((128, 5, 6))                          # 128 // 64 = 2: every other slice
    params = []
    prep = Preprocessing(modality="MR", mr_percentiles=(2.0, 98.0))
    whole = prep.standardise(img, params)
    assert params[0]["lo"] == pytest.approx(np.percentile(img[::2], 2.0))
    for block in (slice(0, 7), slice(121, 128)):       # the lowest and the highest values: clipped
        assert np.array_equal(prep.apply(img[block], params), whole[block])
    assert whole.min() == pytest.approx((params[0]["lo"] - params[0]["mean"]) / params[0]["std"], rel=1e-5)
    assert whole.max() == pytest.approx((params[0]["hi"] - params[0]["mean"]) / params[0]["std"], rel=1e-5)
    scale = learn_landmarks([img ** 1.5, img])
    mapped = Preprocessing(modality="MR", histogram_landmarks=scale)
    lp = []
    assert not np.allclose(mapped.standardise(img, lp), Preprocessing(modality="MR").standardise(img))
    assert "landmarks" in lp[0]
    ct = Preprocessing(modality="CT", histogram_landmarks=scale)   # CT: a fixed window, never landmarks
    hu = np.random.default_rng(0).uniform(-1000, 1000, (8, 4, 4)).astype(np.float32)
    assert np.array_equal(ct.standardise(hu), Preprocessing(modality="CT").standardise(hu))
    mr2 = Preprocessing(channel_modalities=("MR", "MR"), mr_percentiles=(10.0, 90.0))
    assert np.array_equal(mr2.standardise(np.stack([img, img]))[1],
                          Preprocessing(modality="MR", mr_percentiles=(10.0, 90.0)).standardise(img))
    assert Preprocessing.from_dict(Preprocessing(modality="MR").to_dict()).modality == "MR"


def test_the_constant_check_threshold_is_one_millionth_of_the_larger_of_1_and_the_top():
    tiny = np.zeros((4, 4, 4), np.float32)
    tiny[:2] = 3e-6                                    # spread 1.5e-6: above 1e-6 × max(1, 3e-6)
    z = Preprocessing(modality="MR", mr_percentiles=(0.0, 100.0)).standardise(tiny)
    assert np.isfinite(z).all()


def test_modality_detection_edges():
    vol = np.full((10, 6, 6), 40.0, np.float32)       # fewer than 32 slices: every slice sampled
    vol[1::2, 0, :] = -1000.0
    assert detect_modality(vol) == "CT"
    edge = np.full((4, 10, 10), 40.0, np.float32)
    edge[:, 0, :] = -500.0                             # the 1st percentile is exactly -500: not below it
    assert detect_modality(edge) == "MR"
    edge[:, 0, :] = -500.5
    assert detect_modality(edge) == "CT"
    geo = Geometry((6, 6, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    air_later = np.full((10, 6, 6), 40.0, np.float32)
    air_later[1:, :2] = -1000.0                        # slice 0 has no air; the volume does
    assert make_preprocessing("auto", Case(air_later, geo), (0.0,), (1.0,)).modality == "CT"


def test_landmark_edges_background_ties_sizes_and_narrow_ranges():
    img = np.zeros((4, 10, 10), np.float32)            # 400 voxels, half of them 0 (background)
    img[:2] = np.arange(200, dtype=np.float32).reshape(2, 10, 10) + 1
    fg = img[img > 0]
    assert np.allclose(landmarks(img), np.percentile(fg, HIST_PERCENTILES))   # ties at the 10th percentile left out
    hundred = np.arange(100, dtype=np.float32).reshape(4, 5, 5)
    assert np.allclose(landmarks(hundred), np.percentile(hundred, HIST_PERCENTILES))   # ≤ 100 voxels: all
    many = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    assert np.allclose(landmarks(many), np.percentile(many[many > np.percentile(many, 10)], HIST_PERCENTILES))
    # most foreground voxels equal: the lowest landmarks coincide, the scale is still learnt
    rng = np.random.default_rng(0)
    tied = np.zeros((1, 1, 2000), np.float32)
    tied[0, 0, 200:1900] = 5.0
    tied[0, 0, 1900:] = rng.uniform(6, 100, 100)
    assert learn_landmarks([tied])[-1] == 100.0
    top_tied = np.zeros((1, 1, 2000), np.float32)
    top_tied[0, 0, 200:300] = rng.uniform(1, 4, 100)
    top_tied[0, 0, 300:] = 5.0
    assert learn_landmarks([top_tied])[0] == 0.0
    narrow = rng.uniform(0.0, 0.5, (4, 10, 10)).astype(np.float32)   # a range below 1 is not constant
    assert learn_landmarks([narrow])[-1] == 100.0
    a, b = _graded((20, 8, 9), 1), _graded((20, 8, 9), 2) ** 1.3
    scaled = [(lm - lm[0]) / (lm[-1] - lm[0]) * 100.0 for lm in (landmarks(a), landmarks(b))]
    assert learn_landmarks([a, b]) == tuple(round(float(v), 4) for v in np.mean(scaled, axis=0))


def test_the_landmark_map_s_end_slopes_and_flat_landmarks():
    own = np.array([10.0, 20.0, 40.0])
    out = apply_landmarks(np.array([0.0, 50.0], np.float32), (10.0, 50.0, 100.0), own)
    # below: slope (50 − 10) / 10 = 4 → 10 − 40 = −30; above: slope 50 / 20 = 2.5 → 125
    assert out.tolist() == pytest.approx([-30.0, 125.0])
    flat = apply_landmarks(np.array([4.0, 6.0], np.float32), (0.0, 50.0, 100.0), np.array([5.0, 5.0, 5.0]))
    assert np.isfinite(flat).all() and flat[0] < 0 < 100 < flat[1]
