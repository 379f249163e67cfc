"""Issue 7: property-based tests (Hypothesis) for geometry, slab extraction, prediction geometry
and the datalist parser — random directions, spacings, sizes and documents, not hand-picked ones."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import MedTransferLib as mt
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.slabs import (
    from_slices_first,
    gather_slabs,
    slab_indices,
    to_slices_first,
)


def _rotation(q):
    """A proper rotation (det +1) from a quaternion."""
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


quaternions = st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(lambda q: np.linalg.norm(q) > 0.1)
spacings = st.tuples(*[st.floats(0.2, 12.0) for _ in range(3)])
origins = st.tuples(*[st.floats(-500, 500) for _ in range(3)])
sizes = st.tuples(*[st.integers(3, 12) for _ in range(3)])


@settings(max_examples=60, deadline=None)
@given(q=quaternions, spacing=spacings, origin=origins, size=sizes, flip=st.booleans())
def test_ijk_ras_round_trips_for_any_direction_and_spacing(q, spacing, origin, size, flip):
    rot = _rotation(q)
    if flip:   # improper directions (a mirrored axis) happen in real files too
        rot = rot @ np.diag([1.0, 1.0, -1.0])
    geo = mt.Geometry(size, spacing, origin, tuple(rot.ravel()))
    again = mt.Geometry.from_ijk_to_ras(geo.ijk_to_ras(), size)
    assert again.matches(geo, tol=1e-6) == []
    ijk = np.array([[0, 0, 0, 1], [size[0] - 1, 1, 2, 1]], float).T
    ras = geo.ijk_to_ras() @ ijk
    assert np.allclose(np.linalg.inv(geo.ijk_to_ras()) @ ras, ijk, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=quaternions, spacing=spacings, origin=origins, size=sizes)
def test_a_file_written_and_read_keeps_its_geometry(tmp_path, q, spacing, origin, size):
    geo = mt.Geometry(size, spacing, origin, tuple(_rotation(q).ravel()))
    image = np.arange(np.prod(size), dtype=np.float32).reshape(size[::-1])
    path = mt.write_image(tmp_path / "v.nrrd", image, geo)
    case = mt.read_case(path)
    assert case.geometry.matches(geo, tol=1e-4) == [] and np.array_equal(case.image, image)


@settings(max_examples=60, deadline=None)
@given(size=sizes, axis=st.integers(0, 2), k=st.sampled_from([1, 3, 5]), channels=st.integers(1, 2),
       data=st.data())
def test_slabs_along_each_axis_are_the_neighbouring_slices(size, axis, k, channels, data):
    vol = np.random.default_rng(0).normal(size=(channels,) + size[::-1]).astype(np.float32)
    sf = to_slices_first(vol, axis)
    assert np.array_equal(from_slices_first(sf, axis), vol)               # the round trip is exact
    n = sf.shape[1]
    s = data.draw(st.integers(0, n - 1))
    slab = gather_slabs(sf, [s], k)[0]                                    # (C·k, H, W)
    idx = slab_indices(s, n, k)
    assert list(idx) == [min(max(s + d, 0), n - 1) for d in range(-(k // 2), k // 2 + 1)]
    for c in range(channels):
        for j, t in enumerate(idx):
            # slice t along voxel axis `axis` of channel c, taken directly from the (k, j, i) array
            direct = np.take(vol[c], t, axis=2 - axis)
            assert np.array_equal(slab[c * k + j], direct)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from conftest import OBLIQUE, blob_volume, write_volume

    d = tmp_path_factory.mktemp("prop_model")
    image, label = blob_volume()
    write_volume(d / "i.nii.gz", image, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
    write_volume(d / "l.nii.gz", label, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
    (d / "d.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "modality": "MR",
                                          "training": [{"image": "i.nii.gz", "label": "l.nii.gz"}]}))
    return mt.train(d / "d.json", d / "run", backbone="resnet18", weights=None, strategy="finetune", epochs=1,
                    steps_per_epoch=1, batch_size=2, patch=64).package


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=quaternions, spacing=spacings, size=st.tuples(st.integers(5, 40), st.integers(5, 40), st.integers(2, 9)))
def test_prediction_is_always_in_the_exact_input_geometry(tiny_model, q, spacing, size):
    geo = mt.Geometry(size, spacing, (1.0, 2.0, 3.0), tuple(_rotation(q).ravel()))
    image = np.random.default_rng(1).normal(100, 20, size[::-1]).astype(np.float32)
    pred = mt.predict(tiny_model, mt.Case(image, geo), check=False)
    assert pred.label.shape == image.shape and pred.case.geometry is geo
    assert set(np.unique(pred.label)) <= {0, 1, 2}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["labels", "training", "modality", "colors", "test", "terminology", "x"]),
                           json_values, max_size=5))
def test_the_datalist_parser_never_crashes_on_any_json(tmp_path, doc):
    """Any JSON document either parses into a datalist or is refused with a MedTransferError that
    names the file — never a KeyError/TypeError traceback."""
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        dl = mt.load_datalist(path)
    except MedTransferError as exc:
        assert str(path) in str(exc) or "dataset.json" in str(exc)
    else:
        assert dl.training and all(lab.value > 0 for lab in dl.labels)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.dictionaries(st.integers(0, 300).map(str), st.text(min_size=1, max_size=6), min_size=1, max_size=4),
       slices=st.one_of(st.none(), st.lists(st.integers(-3, 30), max_size=5)))
def test_well_formed_datalists_round_trip_their_labels_and_slices(tmp_path, labels, slices):
    image = np.zeros((4, 5, 6), np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "i.nii.gz"))
    entry = {"image": "i.nii.gz", "label": "i.nii.gz"}
    if slices is not None:
        entry["labelled_slices"] = slices
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "training": [entry]}), encoding="utf-8")
    try:
        dl = mt.load_datalist(path)
    except MedTransferError as exc:
        assert "dataset.json" in str(exc)
        return
    # names are trimmed of surrounding whitespace
    assert {lab.value: lab.name for lab in dl.labels} == {int(v): n.strip() for v, n in labels.items() if int(v) != 0}
    assert dl.training[0].labelled_slices == slices
