"""Sample data (real, offline, checksummed) and the main job's outputs."""

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import MedTransferLib as mt
from MedTransferLib.data import sampledata


def test_sample_datalist_names_eight_aal_structures(colin):
    data = json.loads(colin["datalist"].read_text(encoding="utf-8"))
    assert data["labels"] == {"0": "background", "1": "Hippocampus_L", "2": "Hippocampus_R", "3": "Caudate_L",
                              "4": "Caudate_R", "5": "Putamen_L", "6": "Putamen_R", "7": "Thalamus_L",
                              "8": "Thalamus_R"}
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(colin["datalist"].parent / "aal.nii.gz")))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(colin["label"])))
    for i, value in enumerate(sampledata.STRUCTURES, start=1):
        assert np.array_equal(ours == i, aal == value)


def test_tampered_sample_files_are_detected(colin, tmp_path, monkeypatch):
    folder = tmp_path / "colin27"
    shutil.copytree(colin["datalist"].parent, folder)
    with open(folder / "ch2.nii.gz", "ab") as f:
        f.write(b"tampered")
    monkeypatch.setattr(sampledata, "_fetch_package", lambda dest: None)  # no network in tests
    with pytest.raises(mt.MedTransferError, match=r"\['ch2.nii.gz'\].*checksums"):
        mt.sample_data(tmp_path)


def test_without_apt_get_it_says_how_to_supply_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sampledata.shutil, "which", lambda name: None)
    with pytest.raises(mt.MedTransferError, match="apt-get/dpkg not found.*copy ch2.nii.gz"):
        mt.sample_data(tmp_path)


def test_sparse_datalist_labels_every_tenth_axial_slice(colin, tmp_path):
    path = mt.sparse_datalist(colin["datalist"], tmp_path / "sparse.json", every=10)
    entry = mt.load_datalist(path).training[0]
    assert entry.labelled_slices == list(range(0, 181, 10)) and entry.slice_axis == 2


@pytest.mark.slow   # the whole main job
def test_main_job_writes_every_output(colin, tmp_path, capsys):
    from MedTransferLib.app.demo import run_demo

    result = run_demo(tmp_path, cache=colin["datalist"].parent.parent, backbone="resnet18", weights=None,
                      epochs=1, steps_per_epoch=2, batch_size=2)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"prediction.nii.gz", "metrics.csv", "volumes.csv", "overlay.png", "scene", "model",
            "summary.json", "train_log.jsonl", "dataset_sparse.json"} <= names
    image = mt.read_case(colin["image"])
    assert mt.read_case(tmp_path / "prediction.nii.gz").geometry.matches(image.geometry) == []
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv", encoding="utf-8")))
    assert [r["structure"] for r in rows][0] == "Hippocampus_L" and len(rows) == 8
    png = sitk.ReadImage(str(tmp_path / "overlay.png"))
    assert png.GetNumberOfComponentsPerPixel() == 3 and png.GetSize()[1] == 2 * 217
    scene = tmp_path / "scene" / "MedTransferDemo.mrml"
    assert scene.is_file() and "MedTransfer prediction" in scene.read_text(encoding="utf-8")
    assert set(result["dice"]) == {r["structure"] for r in rows}
    assert "Dice on the never-labelled slices" in capsys.readouterr().err
