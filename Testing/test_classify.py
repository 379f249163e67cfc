"""Issue 3, classification: labels per volume or per slice (datalist or CSV), 2.5D and 3D, class
probabilities as a table (CSV and Slicer table node), AUC / accuracy / balanced accuracy /
confusion matrix, and a real slice-level task from the sample data."""

import csv
import json

import numpy as np
import pytest
from conftest import blob_volume, digest, write_volume

import MedTransferLib as mt
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.class_datalist import load_class_datalist
from MedTransferLib.data.metrics import classification_metrics
from MedTransferLib.inference.classify import evaluate_table, predict_class
from MedTransferLib.package.store import ModelPackage


def test_metrics_match_hand_computed_values():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.65, 0.35]])
    truth = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(probs, truth, ["a", "b"])
    assert m["confusion"] == [[2, 0], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    # AUC = P(positive scores above negative) over 6 pairs: 0.7, 0.8 beat 0.1 and 0.4; 0.35 beats 0.1 only
    assert m["auc"] == pytest.approx(5 / 6)
    three = classification_metrics(np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.05, np.array([0, 1, 2, 1]), list("xyz"))
    assert three["confusion"][1] == [0, 1, 1] and three["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


@pytest.fixture
def blob_classes(tmp_path):
    """Six small volumes: class 'lesion' has a bright blob, 'normal' has not."""
    entries = []
    for i in range(6):
        image, label = blob_volume(seed=i)
        if i % 2 == 0:
            image = np.where(label == 1, 100 + 10 * np.random.default_rng(i).normal(size=image.shape), image)
        write_volume(tmp_path / f"v{i}.nii.gz", image.astype(np.float32), (0.8, 0.8, 2.0))
        entries.append({"image": f"v{i}.nii.gz", "label": "normal" if i % 2 == 0 else 1})
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"task": "classification", "classes": ["normal", "lesion"], "modality": "MR",
                                "training": entries[:4], "test": entries[4:]}))
    return path


def test_a_classifier_s_budget_keeps_back_its_reference_statistics(blob_classes, tmp_path, monkeypatch):
    from test_continue import _spy_budget

    made = _spy_budget(monkeypatch)
    mt.train(blob_classes, tmp_path / "run", backbone="resnet18", weights=None, epochs=1, steps_per_epoch=1,
             batch_size=2, patch=64, val_fraction=0.5, max_seconds=500)
    assert [b.finish_steps for b in made] == [2.0 + 3.0 * 4]   # the 4 training volumes' statistics, the file, a margin


@pytest.mark.parametrize("mode,backbone", [("2.5d", "resnet18"), ("3d", "efficientnet-lite0")])
@pytest.mark.slow   # trainings
def test_volume_classifier_trains_predicts_and_evaluates(blob_classes, tmp_path, mode, backbone):
    before = digest(*sorted(blob_classes.parent.glob("v*.nii.gz")))
    events = []
    run = mt.train(blob_classes, tmp_path / "run", reporter=Reporter(sink=events.append, stream=None, bar=False),
                   mode=mode, backbone=backbone, weights=None, epochs=2, steps_per_epoch=3, batch_size=4,
                   patch=64, val_fraction=0.5)
    assert digest(*sorted(blob_classes.parent.glob("v*.nii.gz"))) == before
    pkg = ModelPackage.load(run.package)
    assert pkg.task == "classification" and pkg.manifest.classes == ["normal", "lesion"]
    assert pkg.manifest.model["spatial_dims"] == (3 if mode == "3d" else 2)
    assert sum(e["event"] == "validation" for e in events) == 2
    assert "2 of 4 cases held out" in " ".join(e.get("message", "") for e in events)
    dl = load_class_datalist(blob_classes)
    rows = [predict_class(run.package, c) for c, _ in dl.load_cases(dl.test)]
    assert [r["case"] for r in rows] == ["v4", "v5"]
    assert all(abs(r["p_normal"] + r["p_lesion"] - 1) < 1e-5 for r in rows)
    # covariate shift: each classified volume gets an OOD score against the training volumes;
    # a training volume itself is in range, its voxel-scrambled copy scores higher
    train_case = dl.load_cases(dl.training)[0][0]
    own = predict_class(run.package, train_case)
    scrambled = mt.Case(np.random.default_rng(0).permutation(train_case.image.ravel()).reshape(train_case.image.shape),
                        train_case.geometry, None, "scrambled")
    odd = predict_class(run.package, scrambled)
    assert own["ood"] == "in range" and odd["ood_score"] > own["ood_score"]
    assert all(np.isfinite(r["ood_score"]) for r in rows)
    metrics, matched = evaluate_table(rows, dl, "test")
    assert metrics["n"] == 2 and np.array(metrics["confusion"]).sum() == 2
    with pytest.raises(mt.MedTransferError, match="classification model"):
        mt.predict(run.package, dl.load_cases(dl.test)[0][0])


@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_classification_through_the_cli_with_a_csv(blob_classes, tmp_path, capsys):
    from MedTransferLib.app.cli import main

    table = tmp_path / "labels.csv"
    table.write_text("image,label\n" + "".join(f"{blob_classes.parent / f'v{i}.nii.gz'},"
                                               f"{'normal' if i % 2 == 0 else 'lesion'}\n" for i in range(4)))
    dl = load_class_datalist(table)
    assert dl.classes == ["lesion", "normal"] and [e.label for e in dl.training] == [1, 0, 1, 0]
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(table), "--out", str(out), "--backbone", "resnet18", "--weights",
                 "none", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4", "--patch", "64",
                 "--progress", "json"]) == 0
    probs = tmp_path / "probs.csv"
    assert main(["predict", "--model", str(out), "--datalist", str(blob_classes), "--table", str(probs)]) == 0
    with open(probs, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["v4", "v5"] and {"p_lesion", "p_normal", "predicted"} <= set(rows[0])
    # the model's classes are [lesion, normal]; the datalist names the same classes
    assert main(["evaluate", "--pred", str(probs), "--datalist", str(blob_classes), "--out",
                 str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert set(m) >= {"accuracy", "balanced_accuracy", "auc", "confusion"}
    # prior shift: a known prevalence moves every probability towards the common class
    shifted = tmp_path / "shifted.csv"
    assert main(["predict", "--model", str(out), "--datalist", str(blob_classes), "--table", str(shifted),
                 "--prior", "known:lesion=0.05,normal=0.95"]) == 0
    with open(shifted, newline="", encoding="utf-8") as f:
        after = list(csv.DictReader(f))
    assert all(float(a["p_normal"]) >= float(b["p_normal"]) for a, b in zip(after, rows))
    assert {"predicted_before"} <= set(after[0])
    assert main(["predict", "--model", str(out), "--datalist", str(blob_classes), "--table", str(shifted),
                 "--prior", "em"]) == 0
    # EM (Saerens et al. 2002), written out here: re-weight each case's posteriors by
    # prior/training prior, renormalise, re-estimate the prior as their mean, until it settles
    with open(shifted, newline="", encoding="utf-8") as f:
        em_rows = list(csv.DictReader(f))
    classes = ["lesion", "normal"]
    before = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    source = np.array(mt.ModelPackage.load(out).manifest.calibration["source_prior"], float)
    prior = source.copy()
    for _ in range(1000):
        adj = before * (prior / source)
        adj /= adj.sum(axis=1, keepdims=True)
        prior, last = adj.mean(axis=0), prior
        if np.abs(prior - last).max() < 1e-10:
            break
    got = np.array([[float(r[f"p_{c}"]) for c in classes] for r in em_rows])
    assert np.allclose(got, adj, atol=1e-4), (got, adj)
    err = capsys.readouterr().err
    said = err[err.index("prior (em): estimated"):].split("(training")[0]
    assert said.strip() == "prior (em): estimated " + ", ".join(f"{c} {v:.3f}" for c, v in zip(classes, prior))
    assert [r["predicted"] for r in em_rows] == [classes[i] for i in adj.argmax(axis=1)]
    assert main(["predict", "--model", str(out), "--datalist", str(blob_classes), "--prior", "sideways"]) == 2


def test_bad_classification_datalists_are_named(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"task": "classification", "classes": ["a"], "training": [{"image": "x"}]}))
    with pytest.raises(mt.MedTransferError, match="at least two class names"):
        load_class_datalist(p)
    p.write_text(json.dumps({"task": "classification", "classes": ["a", "b"],
                             "training": [{"image": "x", "label": "c"}]}))
    with pytest.raises(mt.MedTransferError, match=r"training\[0\] label 'c' is not one of"):
        load_class_datalist(p)
    p.write_text(json.dumps({"task": "classification", "classes": ["a", "b"], "training": [{"image": "x"}]}))
    with pytest.raises(mt.MedTransferError, match="neither 'label' nor 'slice_labels'"):
        load_class_datalist(p)


@pytest.mark.slow   # trainings
def test_slice_level_hippocampus_task_from_the_sample_data(colin, tmp_path):
    """'Does this axial slice contain the hippocampus?' on Colin27: every 3rd slice labelled,
    trained end to end with the genuine ImageNet Lite0 encoder, judged on the other slices."""
    case = mt.read_case(colin["image"], colin["label"])
    has = np.isin(case.label, [1, 2]).any(axis=(1, 2))          # per axial slice (k)
    labelled = list(range(20, 140, 3))
    (tmp_path / "d.json").write_text(json.dumps({
        "task": "classification", "classes": ["no hippocampus", "hippocampus"], "modality": "MR",
        "training": [{"image": str(colin["image"]), "slice_labels": {str(s): int(has[s]) for s in labelled}}]}))
    events = []
    run = mt.train(tmp_path / "d.json", tmp_path / "run", reporter=Reporter(sink=events.append, stream=None, bar=False),
                   epochs=3, steps_per_epoch=10, batch_size=8, patch=96, val_fraction=0.2, strategy="auto")
    manifest = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["strategy"]["advice"]["labelled_items"] == 32 and manifest["strategy"]["strategy"] != "auto"
    cal = manifest["calibration"]   # temperature and P(ŷ|y) from the held-out slices (prior shift)
    assert cal["temperature"] > 0 and sum(cal["validation_counts"]) == cal["validation_items"] > 0
    assert np.allclose(np.array(cal["confusion"]).sum(axis=0)[np.array(cal["validation_counts"]) > 0], 1, atol=1e-3)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    others = [s for s in range(20, 140) if s not in labelled]
    rows = predict_class(run.package, mt.read_case(colin["image"]), per_slice=True, slices=others)
    m = classification_metrics(np.array([[r["p_no hippocampus"], r["p_hippocampus"]] for r in rows]),
                               has[others].astype(int), ["no", "yes"])
    assert m["auc"] > 0.8 and m["balanced_accuracy"] > 0.7, m


def test_volume_nodes_are_classified_into_a_slicer_table(blob_classes, tmp_path):
    """Real MRML: two volume nodes → one table node with a row of probabilities per volume."""
    slicer = pytest.importorskip("slicer")
    from MedTransferLib.slicer.exchange import classify_to_table
    from MedTransferLib.slicer.mrml import case_to_volume_node, node_array
    from MedTransferLib.slicer.tables import table_node_rows

    run = mt.train(blob_classes, tmp_path / "run", backbone="resnet18", weights=None, epochs=1,
                   steps_per_epoch=1, batch_size=2, patch=64, val_fraction=0)
    scene = slicer.vtkMRMLScene()
    dl = load_class_datalist(blob_classes)
    nodes = [case_to_volume_node(scene, c, c.case_id) for c, _ in dl.load_cases(dl.test)]
    before = [node_array(n).copy() for n in nodes]
    table = classify_to_table(nodes, run.package, device="cpu")
    rows = table_node_rows(table)
    assert [r["case"] for r in rows] == ["v4", "v5"]
    assert all(abs(r["p_normal"] + r["p_lesion"] - 1) < 1e-5 for r in rows)
    assert table.GetTable().GetNumberOfRows() == 2
    assert all(np.array_equal(node_array(n), b) for n, b in zip(nodes, before))   # only read
