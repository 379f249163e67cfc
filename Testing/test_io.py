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


def test_outputs_get_the_permissions_a_new_file_gets(tmp_path):
    """The temporary file behind an atomic write is private (0600, mkstemp); the output must get
    what ``open`` gives under the umask, or keep the replaced file's mode."""
    import os
    import stat

    from MedTransferLib.core.files import atomic_dir, write_text

    old = os.umask(0o027)
    try:
        mt.write_label(tmp_path / "seg.nrrd", np.zeros((2, 3, 4), np.uint8), blob_case_geometry(tmp_path))
        write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "model") as d:
            (d / "x").write_text("1")
        mode = lambda p: stat.S_IMODE(p.stat().st_mode)   # noqa: E731
        assert mode(tmp_path / "seg.nrrd") == mode(tmp_path / "a.json") == 0o640
        assert mode(tmp_path / "model") == 0o750
        os.chmod(tmp_path / "a.json", 0o604)
        write_text(tmp_path / "a.json", "{}")   # replaced: keeps its mode
        assert mode(tmp_path / "a.json") == 0o604
    finally:
        os.umask(old)


def blob_case_geometry(tmp_path):
    image, _ = blob_volume()
    return mt.read_case(write_volume(tmp_path / "g.nii.gz", image)).geometry


def test_volume_outputs_are_checked_before_work(tmp_path):
    geometry = blob_case_geometry(tmp_path)
    _expect_error(r"label map '.*seg.txt': a volume is written as .nii.gz, .nii, .nrrd", mt.write_label,
                  tmp_path / "seg.txt", np.zeros((2, 3, 4), np.uint8), geometry)
    (tmp_path / "file").write_text("")
    _expect_error(r"'.*file' is a file, not a folder; choose a folder to write to", mt.write_label,
                  tmp_path / "file" / "seg.nii.gz", np.zeros((2, 3, 4), np.uint8), geometry)
    _expect_error(r"cannot write '.*file/sub' \(Not a directory\); choose a folder you can write to", mt.write_label,
                  tmp_path / "file" / "sub" / "seg.nii.gz", np.zeros((2, 3, 4), np.uint8), geometry)
    from MedTransferLib.core.files import check_outputs

    image = tmp_path / "g.nii.gz"
    _expect_error(r"--out '.*sub/../g.nii.gz' is the same file as the input --image '.*g.nii.gz'; .*never "
                  "overwritten", check_outputs, {"--out": tmp_path / "sub" / ".." / "g.nii.gz"},
                  {"--image": [tmp_path / "x.nii.gz", image]})
    _expect_error("--table 'o.csv' is the same file as the output --out 'o.csv'; write to another file name$",
                  check_outputs, {"--out": "o.csv", "--table": "o.csv"}, {"--image": None})
    check_outputs({"--out": tmp_path / "seg.nii.gz", "--table": None}, {"--image": image, "--painted": None})


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


def _nifti(version: int, endian: str, shape, bitpix: int, offset: int, ndim=None) -> bytes:
    """A NIfTI header written by hand from the format's byte layout (NIfTI-1: 348 bytes, dims at
    40 as 8 int16, bitpix at 72, vox_offset at 108 as float32; NIfTI-2: 540 bytes, bitpix at
    14, dims at 16 as 8 int64, vox_offset at 168 as int64), padded to ``offset``."""
    import struct

    dims = [len(shape) if ndim is None else ndim, *shape] + [1] * (7 - len(shape))
    head = bytearray(max(offset, 348 if version == 1 else 540))
    if version == 1:
        struct.pack_into(endian + "i", head, 0, 348)
        struct.pack_into(endian + "8h", head, 40, *dims)
        struct.pack_into(endian + "h", head, 72, bitpix)
        struct.pack_into(endian + "f", head, 108, float(offset))
    else:
        struct.pack_into(endian + "i", head, 0, 540)
        struct.pack_into(endian + "h", head, 14, bitpix)
        struct.pack_into(endian + "8q", head, 16, *dims)
        struct.pack_into(endian + "q", head, 168, offset)
    return bytes(head)


@pytest.mark.parametrize("version,endian", [(1, "<"), (1, ">"), (2, "<"), (2, ">")])
@pytest.mark.parametrize("gz", [False, True])
def test_a_nifti_shorter_than_its_header_says_is_named_with_its_byte_counts(tmp_path, version, endian, gz):
    from MedTransferLib.data.io import _nifti_truncated

    offset = 352 if version == 1 else 544
    shape, bitpix = (3, 5, 7), 16
    needed = offset + 3 * 5 * 7 * 2                      # 210 voxels of 2 bytes after the header
    head = _nifti(version, endian, shape, bitpix, offset)
    name = "x.nii.gz" if gz else "x.nii"

    def check(data: bytes):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if gz else data)
        return _nifti_truncated(path)

    assert check(head + bytes(needed - offset)) is None                  # exactly complete
    assert check(head + bytes(needed - offset + 9)) is None              # extra bytes are fine
    assert check(head + bytes(needed - offset - 1)) == f"holds {needed - 1} of {needed} bytes"
    assert check(head) == f"holds {offset} of {needed} bytes"
    # dims[0] counts the dimensions used: only the first 2 (3 × 5) here, the 7 after them ignored
    two = _nifti(version, endian, shape, bitpix, offset, ndim=2)
    assert check(two + bytes(30)) is None and check(two + bytes(29)) == f"holds {offset + 29} of {offset + 30} bytes"
    assert check(head[:347]) == "header is incomplete"
    # a dimension of 1 (or 0, as some writers put) counts once
    flat = _nifti(version, endian, (3, 1, 7), bitpix, offset)
    assert check(flat + bytes(42)) is None and check(flat + bytes(41)) == f"holds {offset + 41} of {offset + 42} bytes"
    zero = _nifti(version, endian, (3, 0, 7), bitpix, offset)
    assert check(zero + bytes(41)) == f"holds {offset + 41} of {offset + 42} bytes"


def test_nifti_checks_leave_unknown_headers_to_itk_and_name_a_broken_stream(tmp_path):
    from MedTransferLib.data.io import _nifti_truncated

    (tmp_path / "other.nii").write_bytes(b"\x00" * 400)                   # no NIfTI size field
    assert _nifti_truncated(tmp_path / "other.nii") is None
    whole = gzip.compress(_nifti(1, "<", (4, 4, 4), 8, 352) + bytes(64))
    (tmp_path / "cut.nii.gz").write_bytes(whole[:-12])                     # the gzip trailer is gone
    assert _nifti_truncated(tmp_path / "cut.nii.gz").startswith("compressed stream is broken (EOFError")
    # a large file is read in blocks: 5 MB of data behind the header, complete and one byte short
    big = _nifti(1, "<", (100, 100, 250), 16, 352)
    (tmp_path / "big.nii").write_bytes(big + bytes(5_000_000))
    assert _nifti_truncated(tmp_path / "big.nii") is None
    (tmp_path / "big.nii").write_bytes(big + bytes(4_999_999))
    assert _nifti_truncated(tmp_path / "big.nii") == "holds 5000351 of 5000352 bytes"


def test_voxel_to_world_matrices_agree_with_itk_on_an_oblique_anisotropic_grid(tmp_path):
    spacing, origin = (0.5, 0.7, 3.0), (10.0, -20.0, 30.0)
    img = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(OBLIQUE)
    geo = mt.Geometry((6, 5, 4), spacing, origin, OBLIQUE)
    for ijk in [(0, 0, 0), (5, 0, 0), (0, 4, 0), (0, 0, 3), (2, 3, 1)]:
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))             # ITK: LPS millimetres
        assert np.allclose(geo.ijk_to_lps() @ [*ijk, 1], [*lps, 1])
        assert np.allclose(geo.ijk_to_ras() @ [*ijk, 1], [-lps[0], -lps[1], lps[2], 1])   # RAS: x, y flipped
    back = mt.Geometry.from_ijk_to_ras(geo.ijk_to_ras(), (6, 5, 4))
    assert np.allclose(back.spacing, spacing) and np.allclose(back.origin, origin)
    assert np.allclose(back.direction, OBLIQUE) and back.size == (6, 5, 4)
    assert geo.voxel_volume_ml() == pytest.approx(0.5 * 0.7 * 3.0 / 1000)


def test_a_grid_mismatch_names_each_difference_within_a_scaled_tolerance():
    geo = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    same = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.05, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert geo.matches(same) == []            # 0.05 mm at 1000 mm: within 1e-4 of the largest value
    moved = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.2, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert geo.matches(moved) == ["origin (1000.2, 0.0, 0.0) vs (1000.0, 0.0, 0.0)"]
    small = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    off = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0002), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert small.matches(off) == ["origin (0.0, 0.0, 0.0002) vs (0.0, 0.0, 0.0)"]   # scale is at least 1
    assert small.matches(off, tol=1e-3) == []
    other = mt.Geometry((6, 5, 3), (1.0, 1.5, 2.0), (0.0, 0.0, 0.0), (0, 1, 0, 1, 0, 0, 0, 0, 1))
    assert small.matches(other) == ["size (6, 5, 3) vs (6, 5, 4)", "spacing (1.0, 1.5, 2.0) vs (1.0, 1.0, 2.0)",
                                    "direction (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0) vs "
                                    "(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)"]
    assert "np.float64" not in " ".join(small.matches(other))


def test_label_maps_are_written_in_the_smallest_type_and_compressed_exchange_images_are_not(tmp_path):
    geo = mt.Geometry((4, 3, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    label = np.zeros((2, 3, 4), np.int32)
    label[0, 0, 0] = 255                                   # the unlabelled value still fits a byte
    small = sitk.ReadImage(str(mt.write_label(tmp_path / "a.nrrd", label, geo)))
    assert small.GetPixelID() == sitk.sitkUInt8
    label[0, 0, 1] = 256
    big = sitk.ReadImage(str(mt.write_label(tmp_path / "b.nrrd", label, geo)))
    assert big.GetPixelID() == sitk.sitkUInt16 and sitk.GetArrayFromImage(big)[0, 0, 1] == 256

    def encoding(path):
        head = path.read_bytes().split(b"\n\n", 1)[0].decode()
        return next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("encoding"))

    assert encoding(tmp_path / "a.nrrd") == "gzip"         # label maps: compressed
    from MedTransferLib.data.io import write_image

    image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert encoding(write_image(tmp_path / "c.nrrd", image, geo)) == "gzip"
    assert encoding(write_image(tmp_path / "d.nrrd", image, geo, compress=False)) == "raw"
    back = sitk.ReadImage(str(tmp_path / "d.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(back), image) and back.GetPixelID() == sitk.sitkFloat32


def test_read_errors_name_the_input_kind_and_keep_itk_s_reason(tmp_path):
    image, label = blob_volume()
    img = write_volume(tmp_path / "img.nii.gz", image)
    _expect_error(r"^image '.*nope.nii.gz' does not exist", mt.read_case, tmp_path / "nope.nii.gz")
    _expect_error(r"^label map '.*nolab.nii.gz' does not exist", mt.read_case, img, tmp_path / "nolab.nii.gz")
    (tmp_path / "junk.nrrd").write_text("not an image at all")
    _expect_error(r"could not be read \(truncated, corrupt or not an image\? Unable to determine ImageIO reader "
                  r"for \".*junk.nrrd\"\); re-export", mt.read_case, tmp_path / "junk.nrrd")
    (tmp_path / "half.nrrd").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n")
    with pytest.raises(mt.MedTransferError) as err:
        mt.read_case(tmp_path / "half.nrrd")
    assert "require endian info" in str(err.value) and "0x" not in str(err.value)   # the reader's words, no address
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.float32)), str(tmp_path / "flat.nii.gz"))
    _expect_error(r"is a 2D image of size \(20, 20\); MedTransfer needs a 3D volume: stack the slices into a 3D "
                  r"volume$", mt.read_case, tmp_path / "flat.nii.gz")
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    _expect_error(r"is a 4D image of size \(5, 4, 3, 2\); MedTransfer needs a 3D volume: split it into 3D volumes "
                  r"\(one per time point or channel\)$", mt.read_image, tmp_path / "four.nii.gz")   # read_case: channels
    # an uncompressed NIfTI cut short is refused too (ITK would read zeros)
    raw = gzip.decompress(img.read_bytes())
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) - 100])
    _expect_error(r"^image '.*cut.nii' could not be read: the file is truncated", mt.read_case, tmp_path / "cut.nii")


def test_a_case_is_named_after_its_file_and_reads_channels_in_order(tmp_path):
    image, label = blob_volume()
    a = write_volume(tmp_path / "t1.v2.nii.gz", image)
    b = write_volume(tmp_path / "t2.nii.gz", image * 2 + 1)
    one = mt.read_case(a)
    assert one.case_id == "t1" and one.meta["image_path"] == str(a) and one.image.dtype == np.float32
    assert mt.read_case(a, case_id="patient 7").case_id == "patient 7"
    two = mt.read_case([a, b])
    assert two.image.shape == (2, *image.shape) and two.channels == 2 and two.case_id == "t1"
    assert np.array_equal(two.image[0], image) and np.array_equal(two.image[1], image * 2 + 1)
    assert two.meta["image_path"] == [str(a), str(b)]
    c = write_volume(tmp_path / "pet.nii.gz", image, (1.0, 1.0, 3.0))
    _expect_error(r"image '.*pet.nii.gz' is not on the voxel grid of '.*t1.v2.nii.gz' \(spacing \(1.0, 1.0, 3.0\) vs "
                  r"\(1.0, 1.0, 1.0\)\)", mt.read_case, [a, c])
    _expect_error("no image given", mt.read_case, [])


def test_labelled_slices_default_to_the_axial_axis_and_single_slices_read(tmp_path):
    image, label = blob_volume()                      # (k, j, i) = (16, 40, 48)
    img, lab = write_volume(tmp_path / "i.nii.gz", image), write_volume(tmp_path / "l.nii.gz", label)
    case = mt.read_case(img, lab, labelled_slices=[5])
    keep = np.flatnonzero((case.label != 255).any(axis=(1, 2)))
    assert keep.tolist() == [5]                       # voxel axis 2 (k) is the array's first
    thin = write_volume(tmp_path / "thin.nii.gz", image[:1])   # a volume one slice thick is still 3D
    assert mt.read_case(thin).image.shape == (1, 40, 48)
    huge = write_volume(tmp_path / "huge.nii.gz", image.astype(np.float64) * 1e37)
    lo, hi = float(image.min()) * 1e37, float(image.max()) * 1e37
    _expect_error(rf"values beyond the float32 range \(±3.4e38; here {lo:.3g} … {hi:.3g}\)".replace("+", r"\+"),
                  mt.read_case, huge)


def test_label_maps_are_checked_for_whole_numbers_slice_ranges_and_keep_large_values(tmp_path):
    image, label = blob_volume()                      # (k, j, i) = (16, 40, 48)
    img = write_volume(tmp_path / "i.nii.gz", image)
    whole = write_volume(tmp_path / "whole.nii.gz", label.astype(np.float32))       # 0., 1., 2.: fine
    assert np.array_equal(mt.read_case(img, whole).label, label)
    half = label.astype(np.float32)
    half[3, 3, 3] = 1.5
    _expect_error("non-integer values", mt.read_case, img, write_volume(tmp_path / "half.nii.gz", half))
    nan = label.astype(np.float32)
    nan[3, 3, 3] = np.nan
    _expect_error("non-integer values", mt.read_case, img, write_volume(tmp_path / "nan.mha", nan))
    lab = write_volume(tmp_path / "l.nii.gz", label)
    _expect_error(r"labelled_slices \[16\] .* outside 0..15 along voxel axis 2; give slice indices .*'slice_axis'",
                  mt.read_case, img, lab, labelled_slices=[3, 16])
    _expect_error(r"labelled_slices \[-1\]", mt.read_case, img, lab, labelled_slices=[-1])
    # along voxel axis 0 (i, the array's last axis) and 1 (j)
    for axis, array_axis, n in ((0, 2, 48), (1, 1, 40)):
        case = mt.read_case(img, lab, labelled_slices=[7, 9], slice_axis=axis)
        others = tuple(a for a in range(3) if a != array_axis)
        assert np.flatnonzero((case.label != 255).any(axis=others)).tolist() == [7, 9]
        _expect_error(rf"outside 0..{n - 1}", mt.read_case, img, lab, labelled_slices=[n], slice_axis=axis)
    big = label.astype(np.int32) * 150                 # values 150 and 300
    case = mt.read_case(img, write_volume(tmp_path / "big.nii.gz", big), label_values=[150, 300])
    assert case.label.max() == 300 and np.array_equal(case.label, big)
    marked = label.copy()
    marked[0] = 255                                     # the unlabelled value fits a byte
    assert mt.read_case(img, write_volume(tmp_path / "m.nii.gz", marked)).label.dtype == np.uint8


def test_itk_reasons_are_cut_to_what_a_user_needs():
    from MedTransferLib.data.io import _itk_reason

    assert _itk_reason("") == "no reason given"
    assert _itk_reason("Exception thrown in ReadImage: /src/x.cxx:9:\nthe file ends early") == "the file ends early"
    one = "sitk::ERROR: NrrdImageIO(0x55AB12cd): cannot read: bad ERROR: header"
    assert _itk_reason(one) == "NrrdImageIO: cannot read: bad ERROR: header"      # the first ERROR: only
    two = "x.cxx:1:\nitk::ERROR: first problem\nitk::ERROR: second problem"
    assert _itk_reason(two) == "first problem"                     # a last line that is an ERROR line is not added
    assert _itk_reason("itk::ERROR: broken\n[nrrd] endian missing") == "broken … [nrrd] endian missing"
    assert len(_itk_reason("itk::ERROR: " + "x" * 500)) == 240


def test_more_reading_edges(tmp_path):
    from MedTransferLib.data.io import _nifti_truncated

    _expect_error(r"^image '.*nothing.nii.gz' does not exist", mt.read_image, tmp_path / "nothing.nii.gz")
    image, label = blob_volume()
    i = write_volume(tmp_path / "i.nii.gz", image)
    big = label.astype(np.int32)
    big[big == 2] = 256                                     # 256 does not fit a byte
    lab = write_volume(tmp_path / "l.nii.gz", big)
    case = mt.read_case(i, lab, label_values=[1, 256])
    assert case.label.max() == 256 and case.meta["label_path"] == str(lab)
    # a header of exactly 348 bytes is complete; its one voxel (dims of 0 count once) is missing
    (tmp_path / "h.nii").write_bytes(_nifti(1, "<", (0, 0, 0), 16, 348)[:348])
    assert _nifti_truncated(tmp_path / "h.nii") == "holds 348 of 350 bytes"
    one_d = _nifti(1, "<", (5, 3, 2), 8, 352, ndim=1)        # 1D: only the first size counts
    (tmp_path / "o.nii").write_bytes(one_d + bytes(5))
    assert _nifti_truncated(tmp_path / "o.nii") is None
    geo = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    near = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.105, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert geo.matches(near) == ["origin (1000.105, 0.0, 0.0) vs (1000.0, 0.0, 0.0)"]   # 0.105 > 1e-4 × 1000
    fine = mt.Geometry((6, 5, 4), (1.0, 1.0, 2.0), (1000.123456, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert geo.matches(fine)[0].startswith("origin (1000.1235, 0.0, 0.0)")            # 4 decimals
