"""Issue 3, input channels: several co-registered images per case (T1 + T2, CT + PET) become
channels — per-channel preprocessing, modality-major slabs, the pretrained stem adapted — in
2.5D and 3D, through the datalist, the API and the CLI."""

import json

import numpy as np
import pytest
from conftest import OBLIQUE, blob_volume, write_volume

import MedTransferLib as mt
from MedTransferLib.data.datalist import parse_modality
from MedTransferLib.data.slabs import gather_slabs
from MedTransferLib.package.store import ModelPackage

GEO = dict(spacing=(0.8, 0.8, 2.0), origin=(5.0, -3.0, 1.0), direction=OBLIQUE)


@pytest.fixture
def t1_t2(tmp_path):
    """A T1-like and a T2-like image (inverted contrast) of one case, and its labels."""
    t1, label = blob_volume(seed=0)
    t2 = (700 - 0.8 * t1 + 15 * np.random.default_rng(1).normal(size=t1.shape)).astype(np.float32)
    write_volume(tmp_path / "t1.nii.gz", t1, **GEO)
    write_volume(tmp_path / "t2.nii.gz", t2, **GEO)
    write_volume(tmp_path / "lab.nii.gz", label, **GEO)
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "bright", "2": "dim"},
                                "modality": {"0": "T1w", "1": "T2w"},
                                "training": [{"image": ["t1.nii.gz", "t2.nii.gz"], "label": "lab.nii.gz",
                                              "labelled_slices": list(range(0, 16, 3))}]}))
    return path


def test_a_case_of_several_images_has_one_channel_each_and_must_share_a_grid(t1_t2, tmp_path):
    folder = t1_t2.parent
    case = mt.read_case([folder / "t1.nii.gz", folder / "t2.nii.gz"])
    assert case.image.shape == (2, 16, 40, 48) and case.channels == 2
    t1 = mt.read_case(folder / "t1.nii.gz")
    assert np.array_equal(case.image[0], t1.image) and case.geometry == t1.geometry
    shifted = write_volume(tmp_path / "t2_moved.nii.gz", case.image[1], (0.8, 0.8, 2.0), (9.0, -3.0, 1.0), OBLIQUE)
    with pytest.raises(mt.MedTransferError, match="t2_moved.*not on the voxel grid.*resample"):
        mt.read_case([folder / "t1.nii.gz", shifted])


def test_modalities_are_named_per_channel():
    assert parse_modality({"0": "FLAIR", "1": "T1w", "2": "T2"}) == ("MR", "MR", "MR")
    assert parse_modality(["CT", "PET"]) == ("CT", "MR")   # PET: intensity-normalised like MR
    assert parse_modality("MRI") == "MR"
    with pytest.raises(mt.MedTransferError, match="modality"):
        parse_modality("ultrasound")


def test_slabs_are_modality_major():
    image = np.arange(2 * 5 * 1 * 1, dtype=np.float32).reshape(2, 5, 1, 1)   # (C, S, H, W)
    slab = gather_slabs(image, [2], 3)[0, :, 0, 0]
    assert slab.tolist() == [1, 2, 3, 6, 7, 8]   # T1 s-1 s s+1, then T2 s-1 s s+1


def test_t1_t2_trains_in_2_5d_and_predicts_from_both_images(t1_t2, tmp_path):
    run = mt.train(t1_t2, tmp_path / "run", backbone="resnet18", weights=None, stem="repeat", epochs=1,
                   steps_per_epoch=2, batch_size=2, patch=64)
    pkg = ModelPackage.load(run.package)
    assert pkg.manifest.model["in_channels"] == 6 and pkg.manifest.slicing.channels == 2
    assert pkg.manifest.preprocessing.channel_modalities == ("MR", "MR")
    folder = t1_t2.parent
    case = mt.read_case([folder / "t1.nii.gz", folder / "t2.nii.gz"])
    pred = mt.predict(run.package, case)
    assert pred.label.shape == (16, 40, 48)
    with pytest.raises(mt.MedTransferError, match="trained on 2 image"):
        mt.predict(run.package, mt.read_case(folder / "t1.nii.gz"))
    # the channels are standardised separately: T2's inverted contrast stays inverted
    z = pkg.preprocessing.standardise(case.image)
    assert np.corrcoef(z[0].ravel(), z[1].ravel())[0, 1] < -0.5
    assert abs(float(z[0].mean())) < 0.05 and abs(float(z[1].mean())) < 0.05


def test_ct_plus_pet_in_3d_through_the_cli(tmp_path):
    from MedTransferLib.app.cli import main

    ct, label = blob_volume(seed=2)
    ct = (ct * 4 - 1000).astype(np.float32)                  # Hounsfield-like
    pet = (label * 5.0 + np.random.default_rng(0).random(label.shape)).astype(np.float32)
    for name, arr in (("ct", ct), ("pet", pet), ("lab", label)):
        write_volume(tmp_path / f"{name}.nii.gz", arr, **GEO)
    (tmp_path / "d.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "a", "2": "b"}, "modality": ["CT", "PET"],
        "training": [{"image": ["ct.nii.gz", "pet.nii.gz"], "label": "lab.nii.gz"}]}))
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(tmp_path / "d.json"), "--out", str(out), "--mode", "3d",
                 "--backbone", "segresnet", "--weights", "none", "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "1", "--patch", "32", "--progress", "json"]) == 0
    pkg = ModelPackage.load(out)
    assert pkg.manifest.model["in_channels"] == 2
    assert pkg.manifest.preprocessing.channel_modalities == ("CT", "MR")
    assert main(["predict", "--model", str(out), "--image", str(tmp_path / "ct.nii.gz"),
                 str(tmp_path / "pet.nii.gz"), "--out", str(tmp_path / "seg.nii.gz")]) == 0
    assert mt.read_case(tmp_path / "seg.nii.gz").image.shape == (16, 40, 48)


def _four_d(folder, name="t1t2.nii.gz", files=("t1.nii.gz", "t2.nii.gz")):
    """The case's channels in one 4D NIfTI (x, y, z, channel), as the Medical Segmentation
    Decathlon ships its multi-modal tasks; SimpleITK's JoinSeries keeps the oblique grid."""
    import SimpleITK as sitk

    joined = sitk.JoinSeries([sitk.ReadImage(str(folder / f)) for f in files])
    sitk.WriteImage(joined, str(folder / name))
    return folder / name


def test_a_4d_file_holds_a_cases_channels_as_the_decathlon_ships_them(t1_t2, tmp_path):
    folder = t1_t2.parent
    four_d = _four_d(folder)
    assert __import__("SimpleITK").ReadImage(str(four_d)).GetDimension() == 4
    case = mt.read_case(four_d)
    two = mt.read_case([folder / "t1.nii.gz", folder / "t2.nii.gz"])
    assert case.channels == 2 and np.array_equal(case.image, two.image)   # T1 first, then T2
    assert case.geometry.matches(two.geometry, tol=1e-9) == []            # the oblique 3D grid
    eight = mt.read_case(_four_d(folder, "eight.nii.gz", ["t1.nii.gz", "t2.nii.gz"] * 4))
    assert eight.channels == 8 and np.array_equal(eight.image[7], two.image[1])   # 8 is still channels
    from MedTransferLib.data.io import read_channels

    with pytest.raises(mt.MedTransferError, match="^image '.*nothing.nii.gz' does not exist"):
        read_channels(folder / "nothing.nii.gz")
    import gzip

    raw = gzip.decompress(four_d.read_bytes())
    (folder / "cut.nii").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(mt.MedTransferError, match="^image '.*cut.nii' could not be read: the file is truncated"):
        mt.read_case(folder / "cut.nii")                               # a 4D file cut short
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), str(folder / "flat.nii.gz"))
    with pytest.raises(mt.MedTransferError, match="^image '.*flat.nii.gz' is a 2D image"):
        mt.read_case(folder / "flat.nii.gz")
    series = _four_d(folder, "series.nii.gz", ["t1.nii.gz"] * 9)
    with pytest.raises(mt.MedTransferError, match="series.nii.gz.*9 volumes are a series, not channels"):
        mt.read_case(series)
    with pytest.raises(mt.MedTransferError, match="label map.*t1t2.nii.gz.*4D image"):
        mt.read_case(folder / "t1.nii.gz", four_d)                    # a label map stays 3D


def test_a_decathlon_datalist_with_4d_images_trains_and_predicts_through_the_cli(t1_t2, tmp_path):
    from MedTransferLib.app.cli import main

    folder = t1_t2.parent
    _four_d(folder)
    data = json.loads(t1_t2.read_text())
    data["training"][0]["image"] = "./t1t2.nii.gz"                    # MSD's relative path
    (folder / "msd.json").write_text(json.dumps(data))
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(folder / "msd.json"), "--out", str(out), "--backbone", "resnet18",
                 "--weights", "none", "--stem", "repeat", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "2", "--patch", "64", "--progress", "json"]) == 0
    pkg = ModelPackage.load(out)
    assert pkg.manifest.slicing.channels == 2 and pkg.manifest.preprocessing.channel_modalities == ("MR", "MR")
    assert main(["predict", "--model", str(out), "--image", str(folder / "t1t2.nii.gz"),
                 "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main(["predict", "--model", str(out), "--image", str(folder / "t1.nii.gz"), str(folder / "t2.nii.gz"),
                 "--out", str(tmp_path / "b.nii.gz")]) == 0
    a, b = mt.read_case(tmp_path / "a.nii.gz"), mt.read_case(tmp_path / "b.nii.gz")
    assert a.image.shape == (16, 40, 48) and np.array_equal(a.image, b.image)
