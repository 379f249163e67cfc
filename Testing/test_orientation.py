"""One anatomy stored in different voxel orders reaches the network in one order
(data/orientation.py): checked against SimpleITK's DICOMOrient, in training, prediction and the
live preview."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import blob_volume

import MedTransferLib as mt
from MedTransferLib.core.case import IGNORE, Case
from MedTransferLib.core.labels import Label
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.io import geometry_of, read_case, read_image
from MedTransferLib.data.orientation import orientation_code, reorientation, to_order
from MedTransferLib.inference.segment import predict
from MedTransferLib.package.manifest import Slicing
from MedTransferLib.package.store import ModelPackage
from MedTransferLib.training.config import TrainConfig
from MedTransferLib.training.preview import SlicePreview
from MedTransferLib.training.segmentation import Segmentation

TINY = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=2, steps_per_epoch=8, batch_size=4,
            patch=64, val_fraction=0)


def _image(array, code, spacing=(0.5, 0.7, 2.0), origin=(3.0, -4.0, 5.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code))
    return img


@pytest.mark.parametrize("source", ["LPS", "RAS", "PIL", "SAR"])
@pytest.mark.parametrize("target", ["LPS", "RAI", "ASL"])
def test_reordering_matches_simpleitk_and_goes_back(source, target):
    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)   # every axis a different length
    img = _image(array, source)
    geometry = geometry_of(img)
    assert orientation_code(geometry) == source
    turn = reorientation(geometry, target)
    if source == target:
        assert turn is None
        return
    expected = sitk.DICOMOrient(img, target)
    assert np.array_equal(turn.forward(array), sitk.GetArrayFromImage(expected))
    assert turn.geometry.matches(geometry_of(expected)) == []
    assert orientation_code(turn.geometry) == target
    assert np.array_equal(turn.back(turn.forward(array)), array)
    two = np.stack([array, -array])                 # (C, k, j, i): every channel alike
    assert np.array_equal(turn.forward(two)[1], -sitk.GetArrayFromImage(expected))
    assert np.array_equal(turn.back(turn.forward(two)), two)


def test_an_oblique_grid_goes_to_its_nearest_order_and_keeps_its_obliquity():
    c, s = np.cos(0.3), np.sin(0.3)                 # 17° about the body axis, then i reversed
    direction = (-c, -s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0)
    img = _image(np.zeros((4, 5, 6), np.float32), "LPS")
    img.SetDirection(direction)
    turn = reorientation(geometry_of(img), "LPS")
    assert turn.axes == (0, 1, 2) and turn.flips == (True, False, False)
    new = np.asarray(turn.geometry.direction).reshape(3, 3)
    assert np.allclose(new[:, 0], [c, s, 0.0]) and np.allclose(new[:, 1:], np.asarray(direction).reshape(3, 3)[:, 1:])
    # the same voxel at the same place: voxel (0, 0, 0) of the new grid is the old (5, 0, 0)
    assert np.allclose(turn.geometry.ijk_to_lps() @ [0, 0, 0, 1], turn.source.ijk_to_lps() @ [5, 0, 0, 1])


def test_slices_and_orders_map_back():
    turn = reorientation(geometry_of(_image(np.zeros((5, 6, 7), np.float32), "LPS")), "LPI")   # k reversed
    assert turn.slices_back(2, [0, 1]) == (2, [4, 3])
    turn = reorientation(geometry_of(_image(np.zeros((5, 6, 7), np.float32), "PIL")), "LPS")   # transposed
    assert turn.slices_back(2, [0]) == (1, [5])    # the new k is the old j (I→S: reversed), of 6 slices
    assert turn.slices_back(0, [0, 1]) == (2, [0, 1])   # the new i is the old k, the same way (L)
    assert to_order([], "LPS") == ([], [])
    case = Case(np.arange(210, dtype=np.float32).reshape(5, 6, 7), turn.source, np.arange(210).reshape(5, 6, 7) % 7,
                "c")
    assert to_order([case], "")[0][0] is case      # a model saved before orders were kept: as stored
    (moved,), (same,) = to_order([case], "LPS")
    assert same == turn and moved.case_id == "c" and moved.geometry == turn.geometry
    assert np.array_equal(moved.image, turn.forward(case.image)) and np.array_equal(moved.label, turn.forward(case.label))
    assert not np.array_equal(moved.label.ravel(), case.label.ravel())
    assert turn.case(Case(case.image, case.geometry)).label is None


def test_a_manifest_keeps_the_order_and_refuses_a_garbled_one():
    assert Slicing.from_json({"axis": 2, "slices": 3, "orientation": "PIL"}).orientation == "PIL"
    assert Slicing.from_json({"axis": 2, "slices": 3}).orientation == ""
    for bad in ("LPQ", "LLS", "LP", "lps"):
        with pytest.raises(ValueError, match="orientation"):
            Slicing.from_json({"axis": 2, "slices": 3, "orientation": bad})


def _stored(folder, name, array, code, label=None):
    """``array`` (LPS order) written in the voxel order ``code``, the same voxels in the same places."""
    image = sitk.DICOMOrient(_image(array, "LPS", (0.8, 0.8, 2.0), (0.0, 0.0, 0.0)), code)
    sitk.WriteImage(image, str(folder / f"{name}_img.nrrd"))
    if label is not None:
        sitk.WriteImage(sitk.DICOMOrient(_image(label, "LPS", (0.8, 0.8, 2.0), (0.0, 0.0, 0.0)), code),
                        str(folder / f"{name}_lab.nrrd"))
    return folder / f"{name}_img.nrrd"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two blob cases, the second stored mirrored and transposed (PIL), and a tiny model trained on them."""
    folder = tmp_path_factory.mktemp("orders")
    for i, code in enumerate(("LPS", "PIL")):
        image, label = blob_volume(seed=i)
        _stored(folder, f"case{i}", image, code, label)
    datalist = folder / "dataset.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "bright", "2": "dim"}, "modality": "MR",
                                    "training": [{"image": f"case{i}_img.nrrd", "label": f"case{i}_lab.nrrd"}
                                                 for i in range(2)]}))
    run = mt.train(datalist, folder / "run", reporter=Reporter(stream=None, bar=False), **TINY)
    return folder, datalist, run


def test_training_brings_every_case_into_the_first_case_s_order(mixed):
    folder, datalist, run = mixed
    assert ModelPackage.load(run.package).manifest.slicing.orientation == "LPS"
    cases = [read_case(folder / f"case{i}_img.nrrd", folder / f"case{i}_lab.nrrd") for i in range(2)]
    labels = [Label(1, "bright", (1, 0, 0)), Label(2, "dim", (0, 1, 0))]
    task = Segmentation(cases, labels)
    task.check_inputs(TrainConfig(**TINY))
    first, second = blob_volume(seed=1)
    assert task.cases[0] is cases[0]                                # already in the order
    assert np.array_equal(task.cases[1].image, first) and np.array_equal(task.cases[1].label, second)
    assert task.given[1] is cases[1] and task.turns[1].source == cases[1].geometry


@pytest.mark.parametrize("guided", [False, True])
def test_a_prediction_does_not_depend_on_the_order_the_volume_is_stored_in(mixed, tmp_path, guided):
    folder, _, run = mixed
    image, label = blob_volume(seed=2)
    painted = np.full_like(label, IGNORE)
    painted[::4] = label[::4]                       # every 4th axial slice painted
    results = {}
    for code in ("LPS", "RAI", "SPR"):
        path = _stored(tmp_path, code, image, code, painted)
        case = read_case(path)
        if guided:
            case.label = read_image(tmp_path / f"{code}_lab.nrrd")[0]
        pred = predict(run.package, case, check=False, guide=guided)
        assert pred.case.geometry == case.geometry and pred.label.shape == case.image.shape
        # back in LPS order, to compare voxel for voxel
        lps = sitk.DICOMOrient(_image(pred.label, code, case.geometry.spacing, case.geometry.origin), "LPS")
        results[code] = sitk.GetArrayFromImage(lps)
    assert np.array_equal(results["RAI"], results["LPS"]) and np.array_equal(results["SPR"], results["LPS"])
    assert len(np.unique(results["LPS"])) > 1      # not trivially equal: the tiny model finds something


def test_a_prediction_as_stored_differs_without_the_order(mixed, tmp_path):
    """The check above can fail: a model that ignores the order (saved before orders were kept)
    gives another label map for the mirrored volume."""
    folder, _, run = mixed
    pkg = ModelPackage.load(run.package)
    pkg.manifest.slicing.orientation = ""
    image, _ = blob_volume(seed=2)
    out = {}
    for code in ("LPS", "RAI"):
        case = read_case(_stored(tmp_path, code, image, code))
        label = predict(pkg, case, check=False).label
        out[code] = sitk.GetArrayFromImage(sitk.DICOMOrient(
            _image(label, code, case.geometry.spacing, case.geometry.origin), "LPS"))
    assert not np.array_equal(out["RAI"], out["LPS"])


def test_a_preview_of_a_reordered_case_is_written_in_its_own_order(tmp_path):
    """A case stored with k reversed: the preview file is in its grid, the viewed slices and the
    suggested one are its own indices."""
    stored = np.zeros((10, 4, 5), np.float32)
    own = Case(stored, geometry_of(_image(stored, "LPI")), np.full(stored.shape, IGNORE, np.uint8))
    own.label[1] = 0                                # its slice 1 painted (empty): the network's 8
    (case,), (turn,) = to_order([own], "LPS")
    asked = []

    def predict_(c, slices):                        # class 1 on the network's slice 0 only; unsure elsewhere
        asked.append(list(slices))
        probs = np.full((len(slices), 2, 4, 5), 0.5, np.float32)
        probs[[i for i, s in enumerate(slices) if s == 0], 1] = 1.0
        probs[[i for i, s in enumerate(slices) if s == 0], 0] = 0.0
        return probs

    assert SlicePreview([case], 2, [1], predict_).to_case(0, range(3)) == [0, 1, 2]   # no turns: as stored
    target = SlicePreview([case], 2, [1], predict_, turns=[turn])
    assert target.from_view(0, [0, 1]) == [8, 9]    # its slices 0 and 1 are the network's 9 and 8
    target.write(0, [0, 2, 3, 4], tmp_path / "p.nrrd")
    label, geometry = read_image(tmp_path / "p.nrrd")
    assert geometry == own.geometry
    assert label[9].all() and not label[:9].any()   # the network's slice 0 is its slice 9
    assert target.to_case(0, [0, 3]) == [9, 6]
    assert target.suggest(0) == [7]                 # the network's 2: the first of the unsure slices


def test_a_transposed_case_s_preview_speaks_of_its_own_slices(tmp_path):
    """A case stored sagittally (PIL) for a network reading axial slices (LPS): the network's
    slices are the case's slices along its own axis j (running the other way), which is the axis
    the Slicer panel reads the Red view's slice on."""
    stored = np.zeros((10, 6, 8), np.float32)
    own = Case(stored, geometry_of(_image(stored, "PIL")), np.full(stored.shape, IGNORE, np.uint8))
    own.label[:, 1, :] = 0                          # its j = 1 painted (empty): the network's slice 4
    (case,), (turn,) = to_order([own], "LPS")
    probs = lambda c, slices: np.full((len(slices), 2) + case.image.shape[1:], 0.5, np.float32)  # noqa: E731
    target = SlicePreview([case], 2, [1], probs, turns=[turn])
    assert target.from_view(0, [3]) == [2] and target.to_case(0, [0, 1]) == [5, 4]
    target.write(0, list(range(target.slices(0))), tmp_path / "p.nrrd")
    assert target.suggest(0) == [5]                 # the network's 0: unsure, 3+ slices from the painted one
    label, geometry = read_image(tmp_path / "p.nrrd")
    assert geometry == own.geometry and label.shape == stored.shape and (label[:, 1, :] == 0).all()


def test_a_classification_entry_s_slice_labels_follow_its_case_into_another_order():
    from MedTransferLib.data.class_datalist import ClassEntry
    from MedTransferLib.training.classification import entry_in_order

    reversed_k = reorientation(geometry_of(_image(np.zeros((10, 4, 5), np.float32), "LPI")), "LPS")
    entry = ClassEntry("a.nrrd", slice_labels={0: 1, 3: 0, 10: 0, 99: 1}, slice_axis=2, case_id="a")
    moved = entry_in_order(entry, reversed_k)
    assert moved.slice_axis == 2 and moved.slice_labels == {9: 1, 6: 0, 10: 0, 99: 1}   # 10, 99: still outside
    sagittal = reorientation(geometry_of(_image(np.zeros((10, 6, 8), np.float32), "PIL")), "LPS")
    moved = entry_in_order(ClassEntry("b.nrrd", slice_labels={0: 1}, slice_axis=1, case_id="b"), sagittal)
    assert moved.slice_axis == 2 and moved.slice_labels == {5: 1}               # its j (I→S) is the new k
    assert entry_in_order(entry, None) is entry
    assert entry_in_order(ClassEntry("c.nrrd", label=1), reversed_k).label == 1


def test_a_class_prediction_does_not_depend_on_the_order_the_volume_is_stored_in(tmp_path):
    from MedTransferLib.inference.classify import predict_class

    entries = []
    for i in range(4):
        image, _ = blob_volume(seed=i)
        _stored(tmp_path, f"v{i}", image * (1 + i % 2), ("LPS", "RAI")[i // 2])
        entries.append({"image": f"v{i}_img.nrrd", "label": i % 2})
    datalist = tmp_path / "classes.json"
    datalist.write_text(json.dumps({"task": "classification", "classes": ["a", "b"], "modality": "MR",
                                    "training": entries}))
    run = mt.train(datalist, tmp_path / "run", reporter=Reporter(stream=None, bar=False), backbone="resnet18",
                   weights=None, epochs=1, steps_per_epoch=2, batch_size=2, patch=64, val_fraction=0)
    assert ModelPackage.load(run.package).manifest.slicing.orientation == "LPS"
    image, _ = blob_volume(seed=5)
    rows = {code: predict_class(run.package, read_case(_stored(tmp_path, code, image, code)), per_slice=True)
            for code in ("LPS", "LPI", "SPR")}
    n = len(rows["LPS"])
    p = {code: {r["slice"]: r["p_b"] for r in rs} for code, rs in rows.items()}
    assert all(p["LPI"][n - 1 - s] == pytest.approx(p["LPS"][s], abs=1e-5) for s in range(n))   # k reversed
    assert sorted(p["SPR"]) == list(range(n))       # its own slices along i, which runs I→S: the same order
    assert all(p["SPR"][s] == pytest.approx(p["LPS"][s], abs=1e-5) for s in range(n))
    assert len({round(v, 4) for v in p["LPS"].values()}) > 1    # the slices differ: the order is seen
    whole = {code: predict_class(run.package, read_case(_stored(tmp_path, code, image, code)))["p_b"]
             for code in ("LPS", "LPI", "SPR")}
    assert whole["LPI"] == pytest.approx(whole["LPS"], abs=1e-5) and whole["SPR"] == pytest.approx(whole["LPS"], abs=1e-5)


def test_a_slice_classifier_trains_on_each_case_s_slices_in_the_first_case_s_order(tmp_path):
    import torch

    from MedTransferLib.training.classification import Classification

    entries = []
    for i, code in enumerate(("LPS", "LPI")):       # the second stored upside down
        image, _ = blob_volume(seed=i)
        _stored(tmp_path, f"v{i}", image, code)
        entries.append({"image": f"v{i}_img.nrrd", "slice_labels": {"2": 0, "12": 1}, "slice_axis": 2})
    datalist = tmp_path / "slices.json"
    datalist.write_text(json.dumps({"task": "classification", "classes": ["a", "b"], "modality": "MR",
                                    "training": entries}))
    config = TrainConfig(backbone="resnet18", weights=None, patch=64, batch_size=2, epochs=1, steps_per_epoch=1)
    task = Classification(datalist)
    task.check_inputs(config)
    task.prepare(config, torch.device("cpu"), np.random.default_rng(0), Reporter(stream=None, bar=False))
    assert task.entries[0].slice_labels == {2: 0, 12: 1}
    assert task.entries[1].slice_labels == {13: 0, 3: 1}     # its slices 2 and 12 of 16, counted from the other end
    assert np.array_equal(task.cases[1].image, blob_volume(seed=1)[0]) and task.given[1].image.shape == (16, 40, 48)
    assert not np.array_equal(task.given[1].image, task.cases[1].image)


@pytest.mark.slow   # a 3D training
def test_a_3d_model_reads_every_case_in_its_order_too(mixed, tmp_path):
    folder, datalist, _ = mixed
    run = mt.train(datalist, tmp_path / "run3d", reporter=Reporter(stream=None, bar=False),
                   **dict(TINY, mode="3d", backbone="segresnet", patch=32, batch_size=2, steps_per_epoch=4))
    assert ModelPackage.load(run.package).manifest.slicing.orientation == "LPS"
    image, _ = blob_volume(seed=2)
    out = {}
    for code in ("LPS", "RAI", "SPR"):
        case = read_case(_stored(tmp_path, code, image, code))
        label = predict(run.package, case, check=False).label
        out[code] = sitk.GetArrayFromImage(sitk.DICOMOrient(
            _image(label, code, case.geometry.spacing, case.geometry.origin), "LPS"))
    assert np.array_equal(out["RAI"], out["LPS"]) and np.array_equal(out["SPR"], out["LPS"])
    assert len(np.unique(out["LPS"])) > 1
