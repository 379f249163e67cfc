"""Points 6–9 end to end: training (real data), the model package, prediction in the input's
geometry, and evaluation."""

import json

import numpy as np
import pytest
from conftest import OBLIQUE, blob_volume, digest, write_volume

import MedTransferLib as mt
from MedTransferLib.core.progress import Reporter
from MedTransferLib.package.store import MANIFEST, WEIGHTS, ModelPackage

TINY = dict(backbone="resnet18", weights=None, epochs=2, steps_per_epoch=3, batch_size=2, patch=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colin_crop):
    """A short real-data run on the Colin27 crop with the genuine ImageNet Lite0 encoder."""
    out = tmp_path_factory.mktemp("run")
    events = []
    before = digest(colin_crop["image"], colin_crop["label"], colin_crop["datalist"])
    run = mt.train(colin_crop["datalist"], out, reporter=Reporter(sink=events.append, stream=None, bar=False),
                   epochs=3, steps_per_epoch=8, batch_size=4, seed=0, strategy="finetune")
    assert digest(colin_crop["image"], colin_crop["label"], colin_crop["datalist"]) == before
    return run, events, out


def test_training_reports_progress_and_writes_a_complete_package(trained):
    run, events, out = trained
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    steps = [e for e in events if e["event"] == "step"]
    assert len(steps) == 24 and all({"epoch", "step", "loss", "eta_s"} <= set(e) for e in steps)
    assert sum(e["event"] == "validation" for e in events) == 3
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
    start = events[0]
    assert start["trainable_parameters"] == start["total_parameters"] and start["strategy"] == "finetune"
    manifest = json.loads((run.package / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["complete"] is True
    assert [lab["name"] for lab in manifest["labels"]][:2] == ["Hippocampus_L", "Hippocampus_R"]
    assert manifest["preprocessing"]["modality"] == "MR"
    assert manifest["provenance"]["seed"] == 0 and manifest["provenance"]["versions"]["torch"]
    assert len(manifest["provenance"]["inputs"][0]["fingerprint"]) == 64
    assert "held out" in manifest["provenance"]["split"]
    assert sorted(p.name for p in out.iterdir()) == ["model", "run.json"]  # no temp dirs, no lock, no state left
    assert not any(p.suffix == ".pkl" or p.suffix == ".pt" for p in run.package.iterdir())


def test_training_loss_goes_down_on_real_data(trained):
    run, events, _ = trained
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_prediction_is_in_the_input_geometry_with_volumes(trained, colin_crop, tmp_path):
    run, _, _ = trained
    # the same image, re-saved with an oblique direction and anisotropic spacing
    case = mt.read_case(colin_crop["image"])
    path = write_volume(tmp_path / "oblique.nrrd", case.image, (0.9, 1.1, 1.3), (3.0, 2.0, 1.0), OBLIQUE)
    oblique = mt.read_case(path)
    pred = mt.predict(run.package, oblique)
    assert pred.label.shape == oblique.image.shape
    out = mt.write_label(tmp_path / "seg.nii.gz", pred.label, oblique.geometry)
    assert mt.read_case(out).geometry.matches(oblique.geometry) == []
    assert set(np.unique(pred.label)) <= {0, *range(1, 9)}
    rows = pred.volumes()
    assert [r["structure"] for r in rows][:1] == ["Hippocampus_L"]
    vox = 0.9 * 1.1 * 1.3 / 1000
    assert all(abs(r["volume_ml"] - r["voxels"] * vox) < 1e-9 for r in rows)


def test_frozen_strategy_leaves_the_pretrained_encoder_untouched(colin_crop, tmp_path):
    from safetensors.torch import load_file

    from MedTransferLib.models.backbones import build_encoder

    run = mt.train(colin_crop["datalist"], tmp_path, strategy="frozen", epochs=1, steps_per_epoch=2,
                   batch_size=2, val_fraction=0)
    saved = load_file(str(run.package / WEIGHTS))
    reference = build_encoder("efficientnet-lite0", "imagenet").state_dict()
    assert all(np.array_equal(saved[f"encoder.{k}"].numpy(), v.numpy()) for k, v in reference.items())


def test_early_stopping_stops_when_validation_does_not_improve(blob_datalist, tmp_path):
    events = []
    run = mt.train(blob_datalist, tmp_path, reporter=Reporter(sink=events.append, stream=None, bar=False),
                   **{**TINY, "epochs": 6, "lr": 1e-9, "patience": 1})
    assert run.metrics["stopped_early"] and run.metrics["epochs_run"] < 6
    assert any("early stop" in e.get("message", "") for e in events)


def test_training_refuses_a_structure_that_no_label_map_contains(tmp_path):
    image, label = blob_volume()
    write_volume(tmp_path / "i.nii.gz", image)
    write_volume(tmp_path / "l.nii.gz", label)
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b", "3": "ghost"},
                                                "training": [{"image": "i.nii.gz", "label": "l.nii.gz"}]}))
    with pytest.raises(mt.MedTransferError, match=r"\['ghost'\] appear in no training label map"):
        mt.train(tmp_path / "d.json", tmp_path / "run", **TINY)


def test_package_problems_are_refused_clearly(trained, tmp_path):
    import shutil

    run, _, _ = trained

    def copy():
        dst = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run.package, dst)
        return dst

    with pytest.raises(mt.MedTransferError, match="does not exist"):
        ModelPackage.load(tmp_path / "nothing")
    m = copy()
    (m / MANIFEST).unlink()
    with pytest.raises(mt.MedTransferError, match="has no manifest.json"):
        ModelPackage.load(m)
    m = copy()
    data = json.loads((m / MANIFEST).read_text(encoding="utf-8"))
    data["labels"][0]["name"] = "Amygdala_L"  # edited after training
    (m / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(mt.MedTransferError, match="changed after training"):
        ModelPackage.load(m)
    m = copy()
    (m / MANIFEST).write_text("{broken")
    with pytest.raises(mt.MedTransferError, match="not valid JSON"):
        ModelPackage.load(m)
    m = copy()
    data = json.loads((m / MANIFEST).read_text(encoding="utf-8"))
    data["format_version"] = 99
    (m / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(mt.MedTransferError, match="newer than this"):
        ModelPackage.load(m)
    m = copy()
    (m / WEIGHTS).write_bytes((m / WEIGHTS).read_bytes()[:-10] + b"0123456789")
    with pytest.raises(mt.MedTransferError, match="does not match the manifest's checksum"):
        ModelPackage.load(m)
    assert ModelPackage.load(run.package).labels[0].name == "Hippocampus_L"  # original still fine


def test_dice_and_hd95_match_hand_computed_values():
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(ref)
    ref[5:15, 5:15, 5:15] = 1
    pred[5:15, 5:15, 7:17] = 1          # shifted by 2 voxels along i
    geo = mt.Geometry((20, 20, 20), (0.5, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    rows = mt.evaluate(pred, ref, [(1, "cube")], geo)
    assert rows[0]["dice"] == pytest.approx(2 * 800 / 2000)
    assert rows[0]["hd95_mm"] == pytest.approx(1.0)  # 2 voxels × 0.5 mm
    assert rows[0]["volume_ref_ml"] == pytest.approx(1000 * 0.5 / 1000)
    only = mt.evaluate(pred, ref, [(1, "cube")], geo, slices=[5, 6], axis=2)
    assert only[0]["dice"] == pytest.approx(0.8)  # same overlap on each slice
    empty = mt.evaluate(np.zeros_like(ref), ref, [(1, "cube")], geo)
    assert empty[0]["dice"] == 0 and np.isnan(empty[0]["hd95_mm"])
