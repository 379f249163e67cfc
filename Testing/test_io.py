"""Point 1: cases from files with exact geometry, sparse labels, and bad input."""

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE, blob_volume, digest, write_volume

import MedTransferLib as mt


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_reads_image_with_exact_geometry(tmp_path, ext):
    image, _ = blob_volume()
    path = write_volume(tmp_path / f"img{ext}", image, (0.5, 0.7, 3.0), (10.0, -20.0, 30.0), OBLIQUE)
    case = mt.read_case(path)
    assert case.geometry.size == (48, 40, 16)
    assert np.allclose(case.geometry.spacing, (0.5, 0.7, 3.0))
    assert np.allclose(case.geometry.origin, (10.0, -20.0, 30.0))
    assert np.allclose(case.geometry.direction, OBLIQUE, atol=1e-6)
    assert np.allclose(case.image, image)


def test_reads_a_dicom_series_folder(tmp_path):
    image, _ = blob_volume(shape=(6, 20, 24))
    vol = sitk.GetImageFromArray(image.astype(np.int16))
    vol.SetSpacing((0.9, 0.9, 2.5))
    vol.SetOrigin((-10.0, 4.0, 7.0))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        for tag, value in (("0020|000e", series_uid), ("0020|0013", str(k + 1)), ("0008|0060", "MR"),
                           ("0020|0032", "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", "2.5")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    case = mt.read_case(folder)
    assert case.image.shape == (6, 20, 24)
    assert np.allclose(case.geometry.spacing, (0.9, 0.9, 2.5), atol=1e-3)
    assert np.allclose(case.image, image.astype(np.int16))


def test_labelled_slices_mark_every_other_slice_unlabelled(tmp_path):
    image, label = blob_volume()
    img = write_volume(tmp_path / "img.nii.gz", image)
    lab = write_volume(tmp_path / "lab.nii.gz", label)
    case = mt.read_case(img, lab, labelled_slices=[2, 8], slice_axis=2, label_values=[1, 2])
    assert case.labelled_slices(2) == [2, 8]
    assert (case.label[[0, 1, 3, 15]] == mt.IGNORE).all()
    assert np.array_equal(case.label[8], label[8])


def test_ignore_value_in_the_label_map_is_unlabelled(tmp_path):
    image, label = blob_volume()
    label[:5] = 255
    case = mt.read_case(write_volume(tmp_path / "i.nii.gz", image), write_volume(tmp_path / "l.nii.gz", label),
                        label_values=[1, 2])
    assert case.labelled_slices(2) == list(range(5, 16))


def _expect_error(match, fn, *args, **kw):
    with pytest.raises(mt.MedTransferError, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize("change", ["size", "spacing", "origin", "direction"])
def test_refuses_label_on_another_grid_and_leaves_files_untouched(tmp_path, change):
    image, label = blob_volume()
    img = write_volume(tmp_path / "img.nii.gz", image, (1.0, 1.0, 2.0))
    kw = {"spacing": (1.0, 1.0, 2.0)}
    if change == "size":
        label = label[:, :, :-1]
    elif change == "spacing":
        kw["spacing"] = (1.0, 1.0, 2.5)
    elif change == "origin":
        kw["origin"] = (0.0, 3.0, 0.0)
    else:
        kw["direction"] = OBLIQUE
    lab = write_volume(tmp_path / "lab.nii.gz", label, **kw)
    before = digest(img, lab)
    _expect_error(f"not on the image's voxel grid.*{change}.*resample", mt.read_case, img, lab)
    assert digest(img, lab) == before


def test_refuses_label_values_not_in_the_datalist(tmp_path):
    image, label = blob_volume()
    label[0, 0, 0] = 7
    img, lab = write_volume(tmp_path / "i.nii.gz", image), write_volume(tmp_path / "l.nii.gz", label)
    _expect_error(r"values \[7\].*do not name", mt.read_case, img, lab, label_values=[1, 2])


def test_refuses_2d_and_4d_images(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), str(tmp_path / "flat.nii.gz"))
    _expect_error("2D image.*3D volume", mt.read_case, tmp_path / "flat.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32)), str(tmp_path / "t.nii.gz"))
    _expect_error("4D image|components per voxel", mt.read_case, tmp_path / "t.nii.gz")


def test_refuses_missing_corrupt_and_nan_files(tmp_path):
    _expect_error("does not exist", mt.read_case, tmp_path / "nope.nii.gz")
    image, _ = blob_volume()
    good = write_volume(tmp_path / "good.nii.gz", image)
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    _expect_error("could not be read", mt.read_case, tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nrrd").write_text("not an image at all")
    _expect_error("could not be read", mt.read_case, tmp_path / "junk.nrrd")
    image[3, 3, 3] = np.nan
    _expect_error("NaN/Inf", mt.read_case, write_volume(tmp_path / "nan.mha", image))


def test_write_label_keeps_geometry_and_is_atomic(tmp_path):
    image, label = blob_volume()
    case = mt.read_case(write_volume(tmp_path / "i.nii.gz", image, (0.5, 0.7, 3.0), (1.0, 2.0, 3.0), OBLIQUE))
    out = mt.write_label(tmp_path / "out" / "seg.nii.gz", label, case.geometry)
    back = mt.read_case(out)
    assert back.geometry.matches(case.geometry) == []
    assert np.array_equal(back.image, label)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.nii.gz"]  # no temp files left


def test_datalist_errors_name_the_problem(tmp_path):
    p = tmp_path / "dataset.json"
    _expect_error("does not exist", mt.load_datalist, p)
    p.write_text("{not json")
    _expect_error("not valid JSON", mt.load_datalist, p)
    p.write_text(json.dumps({"labels": {"0": "background"}, "training": [{"image": "a", "label": "b"}]}))
    _expect_error("names no structure", mt.load_datalist, p)
    p.write_text(json.dumps({"labels": {"0": "bg", "1": "x"}, "training": []}))
    _expect_error("'training' must be a non-empty list", mt.load_datalist, p)
    p.write_text(json.dumps({"labels": {"0": "bg", "1": "x"}, "training": [{"image": "a"}]}))
    _expect_error(r"training\[0\] has no 'label'", mt.load_datalist, p)
    p.write_text(json.dumps({"labels": {"0": "bg", "1": "x"},
                             "training": [{"image": "a", "label": "b", "labelled_slices": "3"}]}))
    _expect_error("labelled_slices must be a list", mt.load_datalist, p)


def test_datalist_resolves_paths_and_labels(blob_datalist):
    dl = mt.load_datalist(blob_datalist)
    assert [lab.name for lab in dl.labels] == ["bright", "dim"]
    assert dl.training[0].image == blob_datalist.parent / "img0.nii.gz"
    assert dl.training[0].labelled_slices == list(range(0, 16, 3))
    cases = dl.load_cases()
    assert cases[0].labelled_slices(2) == list(range(0, 16, 3))
    assert len(cases[1].labelled_slices(2)) == 16
