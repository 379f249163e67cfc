"""Issue 6: the domain-shift toolkit — prior shift (temperature, EM, BBSE, known prevalence),
covariate shift (input check, OOD score, AdaBN on target cases, histogram standardisation),
prior shift in segmentation (class fractions) and concept shift (label and site audits)."""

import json

import numpy as np
import pytest

import MedTransferLib as mt
from MedTransferLib import shift
from MedTransferLib.app.cli import main
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.histogram import landmarks
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.shift.calibration import softmax


def _gaussian_mixture(n, prior, rng):
    """Two classes, x ~ N(±1, 1); the Bayes posterior under equal priors is logistic(2x)."""
    y = (rng.random(n) < prior[1]).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    logits = np.stack([-x, x], axis=1)           # softmax → p(1|x) = sigmoid(2x): calibrated, uniform prior
    return logits, y


def test_em_and_bbse_recover_a_known_target_prior():
    rng = np.random.default_rng(0)
    val_logits, val_y = _gaussian_mixture(4000, (0.5, 0.5), rng)
    target_logits, target_y = _gaussian_mixture(20000, (0.1, 0.9), rng)
    probs = softmax(target_logits)
    prior, adjusted, _ = shift.em_prior(probs, [0.5, 0.5])
    assert prior == pytest.approx([0.1, 0.9], abs=0.02)
    acc_before = (probs.argmax(1) == target_y).mean()
    acc_after = (adjusted.argmax(1) == target_y).mean()
    assert acc_after > acc_before + 0.02          # the Bayes decision under the right prior is better
    C = shift.confusion_given_truth(val_logits.argmax(1), val_y, 2)
    assert shift.bbse_prior(C, probs.argmax(1)) == pytest.approx([0.1, 0.9], abs=0.03)


def test_temperature_scaling_undoes_overconfidence_and_lowers_calibration_error():
    rng = np.random.default_rng(1)
    logits, y = _gaussian_mixture(5000, (0.5, 0.5), rng)
    t = shift.fit_temperature(3.0 * logits, y)         # a network three times too confident
    assert t == pytest.approx(3.0, rel=0.1)
    before = shift.expected_calibration_error(softmax(3.0 * logits), y)
    after = shift.expected_calibration_error(softmax(3.0 * logits / t), y)
    assert after < before / 2
    separated = np.array([[-5.0, 5.0], [4.0, -4.0], [-3.0, 6.0]])
    assert shift.fit_temperature(separated, np.array([1, 0, 1])) >= 1.0   # never sharpened


def test_prior_correction_on_prediction_rows_reports_the_prior_and_changed_decisions():
    rng = np.random.default_rng(2)
    logits, _ = _gaussian_mixture(2000, (0.05, 0.95), rng)
    p = softmax(logits)
    rows = [{"case": f"c{i}", "predicted": "b" if q[1] > 0.5 else "a", "p_a": q[0], "p_b": q[1]} for i, q in enumerate(p)]
    out, report = shift.prior_correction(rows, ["a", "b"], {"source_prior": [0.5, 0.5]}, "em")
    assert report["estimated_prior"]["b"] == pytest.approx(0.95, abs=0.03) and report["decisions_changed"] > 0
    assert sum(r["predicted"] != r["predicted_before"] for r in out) == report["decisions_changed"]
    _, known = shift.prior_correction(rows, ["a", "b"], {}, "known:a=1,b=3")
    assert known["estimated_prior"] == {"a": 0.25, "b": 0.75}
    with pytest.raises(MedTransferError, match="one prevalence per class"):
        shift.prior_correction(rows, ["a", "b"], {}, "known:a=0.5")
    with pytest.raises(MedTransferError, match="confusion"):
        shift.prior_correction(rows, ["a", "b"], {}, "bbse")


def test_label_audit_reproduces_hand_computed_agreement():
    geo = mt.Geometry((6, 6, 6), (1.0, 2.0, 0.5), (0.0, 0.0, 0.0), np.eye(3))
    a = np.zeros((6, 6, 6), int)
    b = np.zeros((6, 6, 6), int)
    a[1:3, 1:3, 1:3] = 1          # 8 voxels
    b[1:3, 1:3, 2:4] = 1          # 8 voxels, 4 shared
    a[4, 4, 4] = 2
    labels = [mt.Label(1, "lesion", (1, 0, 0)), mt.Label(2, "dot", (0, 1, 0))]
    rows = shift.label_audit({"reader1": a, "reader2": b}, labels, geo)
    lesion = rows[0]
    assert lesion["dice"] == pytest.approx(2 * 4 / 16)
    assert lesion["volume_a_ml"] == pytest.approx(8 * 1.0 * 2.0 * 0.5 / 1000)
    assert lesion["volume_diff_pct"] == pytest.approx(0.0)
    assert lesion["assd_mm"] > 0 and lesion["hd95_mm"] >= lesion["assd_mm"]
    dot = rows[1]
    assert dot["dice"] == 0.0 and np.isnan(dot["hd95_mm"])
    summary = [r for r in rows if r["structure"] == "(all)"]
    assert [r["annotator_a"] for r in summary] == ["reader1", "reader2"]
    assert summary[0]["dice"] == pytest.approx(np.mean([0.5, 0.0]))


def test_site_audit_flags_the_site_that_draws_structures_larger(tmp_path):
    from conftest import blob_volume, write_volume

    entries = []
    for i in range(4):
        image, label = blob_volume(seed=i)
        if i >= 2:   # site B outlines 'bright' generously: one voxel dilation in-plane
            grown = label == 1
            for ax in (1, 2):
                grown = grown | np.roll(grown, 1, ax) | np.roll(grown, -1, ax)
            label = np.where(grown & (label == 0), 1, label).astype(np.uint8)
        write_volume(tmp_path / f"i{i}.nii.gz", image)
        write_volume(tmp_path / f"l{i}.nii.gz", label)
        entries.append({"image": f"i{i}.nii.gz", "label": f"l{i}.nii.gz", "site": "A" if i < 2 else "B"})
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"0": "bg", "1": "bright", "2": "dim"}, "training": entries}))
    assert main(["audit", "--datalist", str(tmp_path / "d.json"), "--out", str(tmp_path / "audit.csv")]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "audit.csv", encoding="utf-8")))
    flagged = {(r["structure"], r["site"]) for r in rows if r["flag"]}
    assert ("bright", "B") in flagged and ("bright", "A") in flagged   # each differs from the other
    assert not any(r["flag"] for r in rows if r["structure"] == "dim")


def test_input_check_names_wrong_modality_presets_and_off_ranges():
    from conftest import blob_volume

    mr, _ = blob_volume()
    ct = np.where(mr > 150, 60.0, -1000.0).astype(np.float32)      # air and soft tissue in HU
    mr_prep, ct_prep = Preprocessing(modality="MR"), Preprocessing(modality="CT")
    assert shift.input_check(mr, mr_prep, case_id="ok") == []
    assert any("looks like MR" in w and "CT window" in w for w in shift.input_check(mr, ct_prep, case_id="x"))
    assert any("looks like CT" in w for w in shift.input_check(ct, mr_prep, case_id="y"))
    ref = shift.training_reference([shift.intensity_profile(mr, mr_prep)])
    assert shift.input_check(mr * 1.5, mr_prep, ref) == []
    scaled = shift.input_check(mr * 20, mr_prep, ref, "scaled")
    assert any("raw intensity range" in w and "×" in w for w in scaled)


def test_histogram_standardisation_maps_different_scanners_onto_one_scale():
    from conftest import blob_volume

    img, _ = blob_volume()
    other = np.sqrt(img - img.min() + 1) * 40           # another scanner: a nonlinear response
    standard = shift.learn_landmarks([img, other])
    a, b = shift.apply_landmarks(img, standard), shift.apply_landmarks(other, standard)
    la, lb = landmarks(a), landmarks(b)
    assert np.allclose(la, standard, atol=1.0) and np.allclose(lb, standard, atol=1.0)
    # the map is monotonic: order of intensities is kept
    order = np.argsort(other.ravel()[:500])
    assert np.all(np.diff(b.ravel()[:500][order]) >= -1e-4)


@pytest.fixture(scope="module")
def trained(colin_crop, tmp_path_factory):
    out = tmp_path_factory.mktemp("shift_run")
    return mt.train(colin_crop["datalist"], out / "run", backbone="resnet18", weights=None, strategy="finetune",
                    epochs=3, steps_per_epoch=10, batch_size=4, patch=64, val_fraction=0,
                    histogram_standardise=True)


def test_ood_score_ranks_scrambled_and_wrong_modality_cases_above_the_untouched_one(trained, colin_crop):
    case = mt.read_case(colin_crop["image"])
    pkg = mt.ModelPackage.load(trained.package)
    ref = pkg.manifest.shift
    assert ref["ood"]["unusual_above"] > ref["ood"]["median"] > 0 and len(ref["ood"]["reference"]) >= 2
    assert len(pkg.preprocessing.histogram_landmarks) == len(shift.HIST_PERCENTILES)
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(case.image.ravel()).reshape(case.image.shape)   # same histogram, no anatomy
    # the wrong modality: a CT of this head (air -1000 HU, soft tissue ~40 HU, bone-bright rim 700 HU)
    body = case.image > np.percentile(case.image, 20)
    ct = np.where(body, 40.0 + rng.normal(0, 10, case.image.shape), -1000.0)
    ct[case.image > np.percentile(case.image, 97)] = 700.0
    preds = {name: mt.predict(pkg, mt.Case(img.astype(np.float32), case.geometry, None, name))
             for name, img in [("untouched", case.image), ("scrambled", scrambled), ("ct", ct)]}
    score = {k: p.ood["score"] for k, p in preds.items()}
    assert score["untouched"] < score["ct"] and score["untouched"] < score["scrambled"], score
    assert any("looks like CT" in w for w in preds["ct"].warnings) and preds["untouched"].warnings == []
    assert preds["untouched"].ood["verdict"] == "in range"
    assert preds["scrambled"].ood["verdict"] != "in range"
    row = preds["untouched"].volumes()[0]
    assert {"ood_score", "ood", "fraction", "fraction_flag", "training_fraction_min"} <= set(row)


@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_adabn_on_a_folder_of_target_cases_through_the_cli(trained, colin_crop, tmp_path):
    from conftest import digest, write_volume

    case = mt.read_case(colin_crop["image"])
    target = tmp_path / "site_b"
    target.mkdir()
    for i, gamma in enumerate((0.5, 0.6)):      # the new site's unlabelled images
        img = (case.image - case.image.min()) ** gamma * 30
        write_volume(target / f"t{i}.nii.gz", img.astype(np.float32), tuple(case.geometry.spacing),
                     tuple(case.geometry.origin), tuple(np.asarray(case.geometry.direction).ravel()))
    before = digest(*sorted(trained.package.iterdir()))
    image = target / "t0.nii.gz"
    assert main(["predict", "--model", str(trained.package), "--image", str(image), "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main(["predict", "--model", str(trained.package), "--image", str(image), "--out", str(tmp_path / "b.nii.gz"),
                 "--adapt-bn-on", str(target), "--table", str(tmp_path / "t.csv")]) == 0
    plain, _ = mt.read_image(tmp_path / "a.nii.gz")
    adapted, _ = mt.read_image(tmp_path / "b.nii.gz")
    assert not np.array_equal(plain, adapted)
    assert digest(*sorted(trained.package.iterdir())) == before          # the package is untouched
    assert "ood" in open(tmp_path / "t.csv", encoding="utf-8").readline()
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", str(trained.package), "--image", str(image), "--out", str(tmp_path / "c.nii.gz"),
                 "--adapt-bn-on", str(tmp_path / "empty")]) == 2
    assert not (tmp_path / "c.nii.gz").exists()


def test_the_input_check_runs_before_training_and_names_the_odd_case(tmp_path):
    from conftest import blob_volume, write_volume

    from MedTransferLib.core.progress import Reporter

    entries = []
    for i in range(3):
        image, label = blob_volume(seed=i)
        if i == 2:
            image = image * 40          # another scanner's scale
        write_volume(tmp_path / f"i{i}.nii.gz", image)
        write_volume(tmp_path / f"l{i}.nii.gz", label)
        entries.append({"image": f"i{i}.nii.gz", "label": f"l{i}.nii.gz", "id": f"case{i}"})
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "modality": "MR",
                                                 "training": entries}))
    events = []
    mt.train(tmp_path / "d.json", tmp_path / "run", reporter=Reporter(sink=events.append, stream=None, bar=False),
             backbone="resnet18", weights=None, strategy="finetune", epochs=1, steps_per_epoch=1, batch_size=2, patch=64)
    notes = [e["message"] for e in events if e["event"] == "note" and e["message"].startswith("input check")]
    assert notes and all("case2" in n for n in notes) and "raw intensity range" in notes[0]


def test_stats_distance_against_hand_computed_values():
    """|Δmean| / σ_ref + ½ |Δ log σ²|, averaged over channels then layers. Channels that deviate
    in opposite directions must add up, not cancel (the absolute values)."""
    import torch

    ref = {"a.mean": torch.tensor([0.0, 0.0]), "a.var": torch.tensor([4.0, 4.0]),
           "b.mean": torch.tensor([1.0]), "b.var": torch.tensor([1.0])}
    same = {k: v.clone() for k, v in ref.items()}
    assert shift.stats_distance(same, ref) == 0.0
    opposite_means = {**same, "a.mean": torch.tensor([2.0, -2.0])}          # each 2/σ=2/2 = 1
    assert shift.stats_distance(opposite_means, ref) == pytest.approx((1.0 + 0.0) / 2)
    e = float(np.e)
    opposite_vars = {**same, "a.var": torch.tensor([4.0 * e ** 2, 4.0 / e ** 2])}   # ½|±2| = 1 each
    assert shift.stats_distance(opposite_vars, ref) == pytest.approx((1.0 + 0.0) / 2)
    both = {**same, "b.mean": torch.tensor([4.0]), "b.var": torch.tensor([e ** 4])}   # 3/1 + ½·4 = 5
    assert shift.stats_distance(both, ref) == pytest.approx((0.0 + 5.0) / 2)
    assert np.isnan(shift.stats_distance({"c.mean": torch.tensor([0.0])}, ref))   # no layer in common
