"""Domain-shift functions one by one, against values computed here independently: the OOD
statistics and their calibration, prior-shift estimation and correction, temperature scaling."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import MedTransferLib as mt
from MedTransferLib.core.labels import Label
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.data.sampling import bn_inputs_2d
from MedTransferLib.shift import ood
from MedTransferLib.shift import prior as ps
from MedTransferLib.shift.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax,
)


def _net(in_channels=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))


# -- the OOD score -----------------------------------------------------------------------------------
def test_activation_stats_are_each_norm_layer_s_input_mean_and_variance_over_all_batches():
    model = _net()
    model.train()
    batches = [torch.randn(2, 3, 8, 8) * 3 + 1, torch.randn(5, 3, 8, 8)]
    seen = {"1": [], "4": []}
    hooks = [model[1].register_forward_pre_hook(lambda m, i: seen["1"].append(i[0].detach().clone())),
             model[4].register_forward_pre_hook(lambda m, i: seen["4"].append(i[0].detach().clone()))]
    stats = ood.activation_stats(model, iter(batches))
    for h in hooks:
        h.remove()
    assert model.training                                           # put back as it was
    assert sorted(stats) == ["1.mean", "1.var", "4.mean", "4.var"]
    for name in ("1", "4"):
        x = torch.cat(seen[name]).double()                          # every batch's input, pooled
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        assert torch.allclose(stats[f"{name}.mean"].double(), flat.mean(1), atol=1e-5)
        assert torch.allclose(stats[f"{name}.var"].double(), flat.var(1, unbiased=False), rtol=1e-4)
        assert stats[f"{name}.mean"].dtype == torch.float32
    # in eval mode: BatchNorm's running statistics are not touched
    before = model[1].running_mean.clone()
    ood.activation_stats(model, iter(batches))
    assert torch.equal(model[1].running_mean, before)
    # a constant input channel: variance floored, not 0 (its log is taken)
    const = ood.activation_stats(nn.Sequential(nn.BatchNorm2d(1)), iter([torch.ones(2, 1, 4, 4)]))
    assert const["0.var"].item() == pytest.approx(1e-8)


def test_stats_distance_is_symmetric_in_sign_and_zero_for_the_same_statistics():
    ref = {"a.mean": torch.tensor([0.0, 0.0]), "a.var": torch.tensor([4.0, 1.0])}
    up = {"a.mean": torch.tensor([1.0, -1.0]), "a.var": torch.tensor([4.0, 1.0])}
    # |Δmean| / σ: 1/2 and 1/1 → mean 0.75; opposite signs add, they do not cancel
    assert ood.stats_distance(up, ref) == pytest.approx(0.75)
    assert ood.stats_distance(ref, ref) == 0.0
    assert math.isnan(ood.stats_distance({"b.mean": torch.zeros(1), "b.var": torch.ones(1)}, ref))


def test_calibration_thresholds_are_the_median_plus_3_and_6_robust_spreads():
    c = ood.calibrate_ood([1.0, 2.0, 3.0, 4.0, 100.0, float("nan")])
    # median 3, median absolute deviation 1 → spread 1.4826 (above 10 % of the median, 0.3)
    assert c["median"] == 3.0 and c["spread"] == 1.4826
    assert c["unusual_above"] == round(3 + 3 * 1.4826, 4) and c["far_out_above"] == round(3 + 6 * 1.4826, 4)
    assert c["reference"] == [1.0, 2.0, 3.0, 4.0, 100.0]
    flat = ood.calibrate_ood([5.0, 5.0, 5.0])
    assert flat["spread"] == 0.5 and flat["unusual_above"] == 6.5 and flat["far_out_above"] == 8.0
    assert ood.calibrate_ood([0.0, 0.0])["unusual_above"] == 0.0      # a floor of 1e-6, rounded to 4 places
    assert ood.calibrate_ood([float("nan")]) == {} and ood.calibrate_ood([]) == {}


def test_the_verdict_is_in_range_up_to_each_threshold_inclusive():
    c = {"unusual_above": 2.0, "far_out_above": 4.0}
    assert [ood.ood_verdict(s, c) for s in (1.0, 2.0, 2.01, 4.0, 4.01)] == \
        ["in range", "in range", "unusual", "unusual", "far out"]
    assert ood.ood_verdict(float("nan"), c) == "unknown" and ood.ood_verdict(9.0, {}) == "unknown"


def test_ood_scores_measure_slabs_of_the_standardised_volume_against_the_reference():
    model = _net()
    prep = Preprocessing()
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(1, 10, 12, 12)).astype(np.float32)       # (C, S, H, W)
    ref = ood.reference_stats(model, [vol], prep, "2.5d", 3)
    again = ood.activation_stats(model, bn_inputs_2d(vol, 3, prep, max_slices=24))
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert ood.ood_score(model, vol, prep, "2.5d", 3, reference=ref) == pytest.approx(0.0, abs=1e-6)
    assert ood.ood_score(model, vol * 3 + 2, prep, "2.5d", 3, reference=ref) > 0.5
    assert math.isnan(ood.ood_score(model, vol, prep, "2.5d", 3, reference=None))
    # 10 slices in 4 chunks: [0, 2), [2, 5), [5, 8), [8, 10); only chunks of ≥ 3 slices are scored
    scores = ood.chunk_scores(model, vol, prep, "2.5d", 3, reference=ref)
    expect = [ood.ood_score(model, vol[:, a:b], prep, "2.5d", 3, reference=ref, max_slices=8) for a, b in ((2, 5), (5, 8))]
    assert scores == pytest.approx(expect) and len(scores) == 2
    assert ood.chunk_scores(model, vol[0], prep, "2.5d", 3, reference=ref) == pytest.approx(expect)   # (S, H, W) too
    one = _net(1)                                                   # one slice per input: every chunk counts
    ref1 = ood.reference_stats(one, [vol], prep, "2.5d", 1)
    assert ood.chunk_scores(one, vol, prep, "2.5d", 1, reference=ref1, chunks=2) == pytest.approx(
        [ood.ood_score(one, vol[:, a:b], prep, "2.5d", 1, reference=ref1, max_slices=8) for a, b in ((0, 5), (5, 10))])


# -- prior shift ---------------------------------------------------------------------------------------
def test_bayes_rule_reweights_posteriors_by_the_prior_ratio():
    p = np.array([[0.5, 0.5], [0.8, 0.2]])
    adj = ps.adjust_posteriors(p, [0.5, 0.5], [0.2, 0.8])
    # row 0: 0.5·0.4 : 0.5·1.6 → 0.2 : 0.8; row 1: 0.8·0.4 : 0.2·1.6 → 0.32 : 0.32
    assert np.allclose(adj, [[0.2, 0.8], [0.5, 0.5]])


def test_em_converges_to_the_fixed_point_of_its_own_update():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([2, 1, 1], size=200)
    prior, adj, iterations = ps.em_prior(p, [1 / 3] * 3)
    assert np.allclose(ps.adjust_posteriors(p, [1 / 3] * 3, prior).mean(0), prior, atol=1e-7)
    assert np.allclose(adj, ps.adjust_posteriors(p, [1 / 3] * 3, prior)) and 1 < iterations < 1000
    _, _, one = ps.em_prior(p, [1 / 3] * 3, iters=1)
    assert one == 1


def test_bbse_solves_the_confusion_system_and_falls_back_to_uniform():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    C = ps.confusion_given_truth(pred, y, 2)
    assert np.allclose(C, [[0.75, 0.0], [0.25, 1.0]])             # C[i, j] = P(ŷ = i | y = j)
    target = np.array([0] * 3 + [1] * 7)                           # μ = (0.3, 0.7)
    q = ps.bbse_prior(C, target)
    assert np.allclose(q, np.linalg.solve(C, [0.3, 0.7]))          # (0.4, 0.6)
    assert np.allclose(ps.bbse_prior(C, np.array([1] * 10)), [0.0, 1.0])      # clipped at 0, normalised
    assert np.allclose(ps.bbse_prior(np.eye(2), np.array([], int)), [0.5, 0.5])
    with pytest.raises(mt.MedTransferError, match="class 2 has none"):
        ps.confusion_given_truth(pred, y, 3)


def test_prior_correction_rows_report_and_the_known_prior_syntax():
    rows = [{"case": "a", "p_no": 0.6, "p_yes": 0.4, "predicted": "no"},
            {"case": "b", "p_no": 0.9, "p_yes": 0.1, "predicted": "no"}]
    classes = ["no", "yes"]
    out, report = ps.prior_correction(rows, classes, {"source_prior": [0.5, 0.5]}, "known:no=0.2,yes=0.8")
    # a: 0.6·0.4 : 0.4·1.6 = 0.24 : 0.64 → yes; b: 0.36 : 0.16 → no
    assert out[0]["p_yes"] == pytest.approx(0.64 / 0.88) and out[0]["predicted"] == "yes"
    assert out[0]["predicted_before"] == "no" and out[1]["predicted"] == "no" and out[1]["case"] == "b"
    assert report == {"method": "known", "cases": 2, "training_prior": {"no": 0.5, "yes": 0.5},
                      "estimated_prior": {"no": 0.2, "yes": 0.8}, "decisions_changed": 1}
    same, _ = ps.prior_correction(rows, classes, {}, "known:1,4")        # by position; uniform source
    assert same[0]["p_yes"] == pytest.approx(0.64 / 0.88)
    _, em = ps.prior_correction(rows, classes, {"source_prior": [0.5, 0.5]}, "em")
    assert em["method"] == "em" and em["estimated_prior"]["no"] > 0.75
    _, bb = ps.prior_correction(rows, classes, {"confusion": [[1.0, 0.0], [0.0, 1.0]]}, "bbse")
    assert bb["estimated_prior"] == {"no": 1.0, "yes": 0.0}
    for bad, message in (("known:no=0.5", "one prevalence per class"), ("known:no=1,maybe=1", "one prevalence"),
                         ("known:1,2,3", "one prevalence"), ("known:x,y", "one prevalence"),
                         ("known:-1,2", "≥ 0 and not all 0"), ("known:0,0", "not all 0"),
                         ("bbse", "validation confusion"), ("median", "unknown; use em, bbse")):
        with pytest.raises(mt.MedTransferError, match=message):
            ps.prior_correction(rows, classes, {}, bad)
    with pytest.raises(mt.MedTransferError, match="lacks the column 'p_yes'"):
        ps.prior_correction([{"p_no": 1.0}], classes, {}, "em")


def test_structure_fractions_count_labelled_voxels_only_and_are_flagged_against_training():
    label = np.array([0, 1, 1, 2, 255, 255, 0, 0])
    labels = [Label(1, "a", (1.0, 0.0, 0.0)), Label(2, "b", (0.0, 1.0, 0.0))]
    assert ps.class_fractions(label, labels) == {"a": 2 / 8, "b": 1 / 8}
    assert ps.class_fractions(label, labels, ignore=255) == {"a": 2 / 6, "b": 1 / 6}
    assert ps.class_fractions(np.array([], int), labels, ignore=255) == {"a": 0.0, "b": 0.0}
    ref = [0.1, 0.2]
    assert [ps.fraction_flag(f, ref) for f in (0.049, 0.05, 0.4, 0.41)] == ["low", "ok", "ok", "high"]
    assert ps.fraction_flag(0.3, ref, factor=1.0) == "high" and ps.fraction_flag(0.3, []) == "unknown"


# -- calibration ---------------------------------------------------------------------------------------------
def test_temperature_is_the_nll_minimum_found_by_a_fine_search():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), y] += 1.0
    logits *= 4                                                      # overconfident
    t = fit_temperature(logits, y)

    def nll(temp):
        p = softmax(logits / temp)
        return -np.mean(np.log(p[np.arange(400), y]))

    fine = np.exp(np.linspace(np.log(0.25), np.log(20), 20001))
    best = fine[np.argmin([nll(v) for v in fine])]
    assert t == pytest.approx(best, rel=2e-3) and t > 2
    sure = np.array([[5.0, 0.0], [0.0, 5.0]])                        # all right: only softening (T ≥ 1)
    assert fit_temperature(sure, np.array([0, 1])) == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(softmax(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]])
    assert np.allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])  # no overflow


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins of width 1/15: {0.9, 0.9}: accuracy 0.5 vs confidence 0.9 → 0.4 × 2/4; {0.6}: 1 vs 0.6 → 0.4 × 1/4;
    # {0.7}: 1 vs 0.7 → 0.3 × 1/4
    assert expected_calibration_error(probs, y) == pytest.approx(0.2 + 0.1 + 0.075)


# -- input checks and audits ---------------------------------------------------------------------------------
def test_the_intensity_profile_by_hand():
    from MedTransferLib.shift.input_check import intensity_profile, training_reference

    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 50.0, size=(96, 6, 7)).astype(np.float32)     # 96 // 48 = 2: every other slice
    prep = Preprocessing(modality="MR", target_mean=(0.5,), target_std=(2.0,))
    prof = intensity_profile(img, prep)
    ch = prof["channels"][0]
    s, t = img[::2], prep.standardise(img)[::2]
    assert (ch["raw_p1"], ch["raw_p50"], ch["raw_p99"]) == tuple(round(float(v), 3) for v in np.percentile(s, (1, 50, 99)))
    assert ch["std_p1"] == round(float(np.percentile(t, 1)), 4) and ch["std_p99"] == round(float(np.percentile(t, 99)), 4)
    assert ch["backbone_mean"] == round(float(t.mean()) * 2 + 0.5, 4) and ch["backbone_std"] == round(float(t.std()) * 2, 4)
    top = np.abs(t).max()
    assert ch["saturated"] == round(float(np.mean(np.abs(t) >= 0.999 * top)), 4) and ch["detected_modality"] == "MR"
    given = intensity_profile(img, prep, standardised=np.zeros_like(img) + 1.0)   # the caller's copy is used
    assert given["channels"][0]["backbone_mean"] == 2.5 and given["channels"][0]["saturated"] == 1.0
    two = Preprocessing(channel_modalities=("MR", "MR"), target_mean=(0.0, 10.0, 20.0), target_std=(1.0, 1.0, 1.0))
    both = intensity_profile(np.stack([img, img]), two)
    assert both["channels"][1]["backbone_mean"] == pytest.approx(both["channels"][0]["backbone_mean"] + 10, abs=1e-3)
    ref = training_reference([prof, given])
    assert ref["cases"] == 2 and ref["channels"][0]["raw_p50"] == [ch["raw_p50"], ch["raw_p50"]]
    assert ref["channels"][0]["raw_range"][0] == pytest.approx(ch["raw_p99"] - ch["raw_p1"])
    assert ref["channels"][0]["std_p99"] == [ch["std_p99"], given["channels"][0]["std_p99"]]
    assert training_reference([]) == {}


def test_each_input_warning_fires_just_past_its_threshold():
    from MedTransferLib.shift.input_check import input_check

    prep = Preprocessing(modality="MR", target_mean=(0.0,), target_std=(1.0,))

    def warns(reference=None, case_id="x", model=prep, **change):
        ch = {"raw_p1": 0.0, "raw_p50": 50.0, "raw_p99": 100.0, "detected_modality": "MR", "std_p1": -2.0,
              "std_p99": 2.0, "backbone_mean": 0.0, "backbone_std": 1.0, "saturated": 0.0}
        ch.update(change)
        return input_check(None, model, reference, case_id, {"channels": [ch]})

    assert warns() == []
    assert warns(backbone_mean=0.99) == [] and "mean 1.01 and spread 1.00" in warns(backbone_mean=1.01)[0]
    assert warns(backbone_std=0.34) == [] and len(warns(backbone_std=0.33)) == 1
    assert warns(backbone_std=2.99) == [] and len(warns(backbone_std=3.0)) == 1
    assert "case 'x' looks like CT" in warns(detected_modality="CT")[0]
    ct = Preprocessing(modality="CT")
    assert "this case looks like MR" in warns(model=ct, case_id="", backbone_mean=0.0)[0]
    ref = {"channels": [{"raw_range": [50.0, 100.0], "std_p99": [2.0, 3.0]}]}
    assert warns(ref) == []
    assert warns(ref, raw_p99=300.0, std_p99=2.5) == []                      # ×3.0: not past 3
    assert "×3.1" in warns(ref, raw_p99=310.0, std_p99=2.5)[0]
    assert "×3.1" in warns(ref, raw_p99=16.0, std_p99=2.5)[0]                # 16 vs 50: ×3.1 narrower
    assert warns(ref, std_p99=1.0) == [] and warns(ref, std_p99=4.0) == []
    assert "99th percentile is 0.99 vs 2.00–3.00" in warns(ref, std_p99=0.99)[0]
    assert len(warns(ref, std_p99=4.01)) == 1


def test_label_audit_by_hand():
    from MedTransferLib.core.case import Geometry
    from MedTransferLib.shift.audit import label_audit

    geo = Geometry((10, 10, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = np.zeros((10, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = 1                                   # 64 voxels of 2 µL… 2 mm³ each
    b[2:6, 2:6, 2:7] = 1                                   # 80 voxels, 64 shared
    rows = label_audit({"ann1": a, "ann2": b}, [Label(1, "s", (1.0, 0.0, 0.0))], geo)
    pair, one, two = rows
    assert pair["dice"] == pytest.approx(2 * 64 / 144) and pair["volume_a_ml"] == pytest.approx(0.128)
    assert pair["volume_b_ml"] == pytest.approx(0.160)
    assert pair["volume_diff_pct"] == pytest.approx(100 * 0.032 / 0.144)
    assert (one["annotator_a"], one["annotator_b"], one["dice"]) == ("ann1", "(others)", pair["dice"])
    assert two["annotator_a"] == "ann2" and len(rows) == 3
    empty = label_audit({"p": a * 0, "q": a * 0}, [Label(1, "s", (1.0, 0.0, 0.0))], geo)
    assert math.isnan(empty[0]["volume_diff_pct"]) and math.isnan(empty[1]["dice"])
    with pytest.raises(mt.MedTransferError, match="two or more annotations"):
        label_audit({"p": a}, [], geo)
    with pytest.raises(mt.MedTransferError, match="different grids"):
        label_audit({"p": a, "q": a[:5]}, [], geo)


def test_site_audit_flags_volume_and_boundary_differences_past_their_limits():
    from MedTransferLib.core.case import Case, Geometry
    from MedTransferLib.shift.audit import _boundary_intensity, site_audit

    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    img = np.zeros((5, 5, 5), np.float32)
    img[2, 2, 2] = 10.0                                     # the one inner voxel: not on the boundary
    img[1, 1, 1] = 26.0                                     # a boundary voxel (26 of them)
    assert _boundary_intensity(img, mask) == pytest.approx(1.0)
    assert math.isnan(_boundary_intensity(img, mask & False))
    geo = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rng = np.random.default_rng(0)

    def case(size):
        lab = np.zeros((8, 8, 8), np.uint8)
        lab[1:1 + size, 1:5, 1:5] = 1
        return Case(rng.normal(100, 10, (8, 8, 8)).astype(np.float32), geo, lab)

    lab = [Label(1, "s", (1.0, 0.0, 0.0))]
    prep = Preprocessing(modality="MR")
    rows = site_audit([case(4), case(4), case(5)], ["A", "A", "B"], lab, prep)
    a, b = rows
    assert (a["site"], a["cases"], a["mean_volume_ml"], a["other_sites_volume_ml"]) == ("A", 2, 0.064, 0.08)
    assert a["volume_diff_pct"] == pytest.approx(-20.0) and b["volume_diff_pct"] == pytest.approx(25.0)
    assert a["flag"] == "" and b["flag"] == ""              # 25 % is the limit, not past it
    rows = site_audit([case(4), case(4), case(6)], ["A", "A", "B"], lab, prep)
    assert rows[1]["flag"] == "volume +50% vs other sites"
    with pytest.raises(mt.MedTransferError, match="two or more sites"):
        site_audit([case(4)], ["A"], lab, prep)


# -- the edges the first mutation run found unguarded --------------------------------------------------------
def _net3d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(), nn.Conv3d(3, 2, 1))


def test_3d_ood_scores_use_random_patches_and_chunks_at_least_a_patch_long():
    from MedTransferLib.data.sampling import bn_inputs_3d

    model, prep = _net3d(), Preprocessing()
    vol = np.random.default_rng(1).normal(size=(1, 16, 16, 16)).astype(np.float32)
    ref = ood.reference_stats(model, [vol], prep, "3d", 1, patch=(8, 8, 8))
    again = ood.activation_stats(model, bn_inputs_3d(vol, (8, 8, 8), prep, count=4, batch_size=1))
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert ood.ood_score(model, vol, prep, "3d", 1, (8, 8, 8), reference=ref) == pytest.approx(0.0, abs=1e-6)
    assert ood.chunk_scores(model, vol, prep, "3d", 1, (8, 8, 8), reference=ref) == []   # 4-slice chunks < 8
    two = ood.chunk_scores(model, vol, prep, "3d", 1, (8, 8, 8), reference=ref, chunks=2)
    assert len(two) == 2 and two == pytest.approx(
        [ood.ood_score(model, vol[:, a:b], prep, "3d", 1, (8, 8, 8), reference=ref, max_slices=8) for a, b in ((0, 8), (8, 16))])


def test_2d_ood_scores_take_24_slices_and_chunks_8():
    model, prep = _net(), Preprocessing()
    vol = np.random.default_rng(2).normal(size=(1, 40, 12, 12)).astype(np.float32)
    vol *= np.linspace(0.5, 3, 40, dtype=np.float32)[None, :, None, None]       # slices differ
    ref = ood.reference_stats(model, [vol], prep, "2.5d", 3)
    assert all(torch.equal(ref[k], v) for k, v in ood.activation_stats(model, bn_inputs_2d(vol, 3, prep, max_slices=24)).items())
    other = vol[:, ::-1].copy()
    direct = ood.stats_distance(ood.activation_stats(model, bn_inputs_2d(other, 3, prep, max_slices=24)), ref)
    assert ood.ood_score(model, other, prep, "2.5d", 3, reference=ref) == pytest.approx(direct)
    chunk = ood.stats_distance(ood.activation_stats(model, bn_inputs_2d(vol[:, :20], 3, prep, max_slices=8)), ref)
    assert ood.chunk_scores(model, vol, prep, "2.5d", 3, reference=ref, chunks=2)[0] == pytest.approx(chunk)


def test_calibration_rounds_to_4_places():
    c = ood.calibrate_ood([0.123456, 0.2234567, 0.3111111])
    med, spread = 0.2234567, max(1.4826 * 0.0876544, 0.1 * 0.2234567)
    assert c["median"] == round(med, 4) == 0.2235 and c["spread"] == round(spread, 4)
    assert c["unusual_above"] == round(med + 3 * spread, 4) and c["far_out_above"] == round(med + 6 * spread, 4)
    assert c["reference"] == [0.1235, 0.2235, 0.3111]


def test_prior_edges_uneven_sources_zero_sources_and_empty_rows():
    p = np.array([[0.5, 0.5], [0.0, 1.0]])
    adj = ps.adjust_posteriors(p, [0.25, 0.75], [0.5, 0.5])     # weights 2 and 2/3
    assert np.allclose(adj[0], [0.75, 0.25])
    assert np.isfinite(ps.adjust_posteriors(p, [0.0, 1.0], [0.5, 0.5])).all()
    assert np.allclose(ps.adjust_posteriors(p, [0.5, 0.5], [1.0, 0.0])[1], [0.0, 0.0])   # no class left: zeros
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([2, 1], size=50)
    one, _, _ = ps.em_prior(probs, [0.5, 0.5], iters=1)
    assert np.allclose(one, probs.mean(0))                       # one EM step from the source prior
    C = np.array([[0.75, 0.5], [0.25, 0.5]])
    # C q = (0, 1) has q = (-2, 3): clipped to (0, 3), then normalised
    assert np.allclose(ps.bbse_prior(C, np.array([1, 1, 1])), [0.0, 1.0])
    assert ps.class_fractions(np.array([1]), [Label(1, "a", (1.0, 0.0, 0.0))]) == {"a": 1.0}
    rows = [{"p_no": 0.6, "p_yes": 0.4, "predicted": "no"}, {"p_no": 0.3, "p_yes": 0.7, "predicted": "yes"}]
    out, report = ps.prior_correction(rows, ["no", "yes"], {}, "known:1,0.5")
    assert report["training_prior"] == {"no": 0.5, "yes": 0.5} and report["estimated_prior"] == {"no": 0.6667, "yes": 0.3333}
    accepted, _ = ps.prior_correction(rows, ["no", "yes"], {}, "known:0,1")   # a class may be absent
    assert accepted[0]["predicted"] == "yes"
    out, _ = ps.prior_correction(rows, ["no", "yes"], {"source_prior": [1 / 3, 2 / 3], "confusion": [[1.0, 0.0], [0.0, 1.0]]}, "bbse")
    prior = np.array([0.5, 0.5])                                 # predicted classes: one each
    assert [r["p_no"] for r in out] == pytest.approx(ps.adjust_posteriors(np.array([[0.6, 0.4], [0.3, 0.7]]), [1 / 3, 2 / 3], prior)[:, 0])
    named = [{"p_grade:1": 0.5, "p_grade:2": 0.5}]
    _, rep = ps.prior_correction(named, ["grade:1", "grade:2"], {}, "known:grade:1=0.2,grade:2=0.8")
    assert rep["estimated_prior"] == {"grade:1": 0.2, "grade:2": 0.8}   # class names may hold a colon


def test_softmax_is_stable_per_row_and_calibration_error_uses_15_bins():
    assert np.allclose(softmax(np.array([[1000.0, 0.0], [0.0, -1000.0]])), [[1.0, 0.0], [1.0, 0.0]])
    probs = np.array([[0.86, 0.14], [0.87, 0.13], [0.05, 0.95]])
    y = np.array([0, 1, 1])
    # bins of 1/15: 0.86 ∈ (0.8, 0.8667], 0.87 ∈ (0.8667, 0.9333], 0.95 ∈ (0.9333, 1]
    assert expected_calibration_error(probs, y) == pytest.approx((0.14 + 0.87 + 0.05) / 3)


def test_temperature_can_sharpen_below_1_and_is_rounded_to_4_places():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 3.0
    t = fit_temperature(logits * 0.2, y)                         # underconfident: sharpen
    assert t < 0.5 and t == round(t, 4)


def test_input_check_messages_name_the_image_and_use_the_backbone_s_scale():
    from MedTransferLib.shift.input_check import input_check, intensity_profile

    def ch(**change):
        c = {"raw_p1": 40.0, "raw_p50": 80.0, "raw_p99": 130.0, "detected_modality": "MR", "std_p1": -2.0,
             "std_p99": 2.0, "backbone_mean": 0.5, "backbone_std": 2.0, "saturated": 0.0}
        c.update(change)
        return c

    prep = Preprocessing(modality="MR", target_mean=(0.5,), target_std=(2.0,))
    assert input_check(None, prep, profile={"channels": [ch()]}) == []
    assert input_check(None, prep, profile={"channels": [ch(backbone_mean=2.5)]}) == []   # exactly 1 × 2.0 away
    assert input_check(None, prep, profile={"channels": [ch(backbone_mean=2.6)]})[0].startswith("this case: ")
    assert input_check(None, prep, profile={"channels": [ch(backbone_mean=-1.6)]}) != []
    assert input_check(None, prep, profile={"channels": [ch(backbone_std=0.7)]}) == []    # 0.35 of 2.0
    assert input_check(None, prep, profile={"channels": [ch(backbone_std=6.2)]}) != []    # 3.1 × 2.0
    two = {"channels": [ch(), ch(detected_modality="CT")]}
    [w] = input_check(None, prep, {"channels": [{"raw_range": [90.0], "std_p99": [2.0]}]}, "p7", two)
    assert w.startswith("case 'p7', image 2 looks like CT")        # one image model: its modality for both
    ref = {"channels": [{"raw_range": [10.0, 30.0], "std_p99": [2.0]}]}
    assert input_check(None, prep, ref, profile={"channels": [ch()]}) == []          # 90 / 30: ×3.0
    assert "×3.1" in input_check(None, prep, ref, profile={"channels": [ch(raw_p99=133.0)]})[0]
    small = {"channels": [{"raw_range": [0.1, 0.15], "std_p99": [2.0]}]}
    assert input_check(None, prep, small, profile={"channels": [ch(raw_p1=0.0, raw_p99=0.2)]}) == []
    half = intensity_profile(np.ones((4, 4, 4), np.float32), prep, standardised=np.full((4, 4, 4), 0.5, np.float32))
    assert half["channels"][0]["saturated"] == 1.0                # every value at the (0.5) maximum


def test_audits_with_three_annotators_anisotropic_voxels_and_site_flags():
    from MedTransferLib.core.case import Case, Geometry
    from MedTransferLib.data.metrics import surface_distances
    from MedTransferLib.shift.audit import label_audit, site_audit

    geo = Geometry((8, 8, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:5, 2:5, 2:5] = 1
    b, c = a.copy(), a.copy()
    b[5, 2:5, 2:5] = 1                                         # one more slice along k (2 mm)
    c[2:5, 2:5, 5] = 1                                         # one more column along i (1 mm)
    rows = label_audit({"p": a, "q": b, "r": c}, [Label(1, "s", (1.0, 0.0, 0.0))], geo)
    pq = rows[0]
    assert pq["hd95_mm"] == surface_distances(a == 1, b == 1, (1.0, 1.0, 2.0))[0] and pq["hd95_mm"] == 2.0
    summary = {r["annotator_a"]: r["dice"] for r in rows if r["structure"] == "(all)"}
    pair = {(r["annotator_a"], r["annotator_b"]): r["dice"] for r in rows if r["structure"] == "s"}
    assert summary["p"] == pytest.approx((pair[("p", "q")] + pair[("p", "r")]) / 2)
    assert summary["q"] == pytest.approx((pair[("p", "q")] + pair[("q", "r")]) / 2)

    grid = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    def case(n, bright=0.0, second=False):
        lab = np.zeros(512, np.uint8)
        lab[:n] = 1
        if second:
            lab[300:310] = 2
        lab = lab.reshape(8, 8, 8)
        img = np.full((8, 8, 8), 20.0, np.float32)
        img[7, 0, :] = -1000.0                                   # air (1.6 %) in the last slice only: a CT
        img[lab == 1] += bright
        return Case(img, grid, lab)

    labels = [Label(1, "s", (1.0, 0.0, 0.0)), Label(2, "t", (0.0, 1.0, 0.0))]
    rows = site_audit([case(200, second=True), case(200, second=True), case(300, 800.0)], ["A", "A", "B"], labels)
    by = {(r["structure"], r["site"]): r for r in rows}
    # CT detected from the whole volume (slice 0 alone has no air): boundary 20 HU → 0.02, 820 HU → 0.82
    assert by[("s", "A")]["boundary_intensity"] == pytest.approx(0.02, abs=1e-6)
    assert by[("s", "A")]["other_sites_boundary_intensity"] == pytest.approx(0.82, abs=1e-6)
    assert by[("s", "B")]["flag"] == "volume +50% vs other sites; boundary intensity +0.80 vs other sites"
    assert by[("s", "A")]["flag"] == "volume -33% vs other sites; boundary intensity -0.80 vs other sites"
    assert math.isnan(by[("t", "A")]["volume_diff_pct"])        # nothing at the other site to compare with
    near = site_audit([case(200), case(251)], ["A", "B"], labels[:1], Preprocessing(modality="CT"))
    assert near[1]["volume_diff_pct"] == pytest.approx(25.5) and near[1]["flag"].startswith("volume +2")
    two = Case(np.stack([case(200).image, np.full((8, 8, 8), 5.0, np.float32)]), grid, case(200).label)
    multi = site_audit([two, case(300)], ["A", "B"], labels[:1])
    assert multi[0]["boundary_intensity"] == pytest.approx(0.02, abs=1e-6)   # the first image, as CT
