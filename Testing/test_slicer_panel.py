"""Issue 5: what the Slicer panel does to the scene, against the real MRML of slicer-core —
pairing, segment matching, labelled-slice counts, terminology, subject-hierarchy placement,
classification export, model summary/copy and device choices."""

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from conftest import OBLIQUE, blob_volume, red_view  # noqa: E402

import MedTransferLib as mt  # noqa: E402
from MedTransferLib.core.errors import MedTransferError  # noqa: E402
from MedTransferLib.core.labels import default_color  # noqa: E402
from MedTransferLib.package.store import ModelPackage  # noqa: E402
from MedTransferLib.slicer import bridge as sb  # noqa: E402

GEO = mt.Geometry((48, 40, 16), (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
LIVER_TERM = ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
              "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


@pytest.fixture
def scene():
    """A scene whose Red view shows the k slices of volumes on ``GEO`` (turned to that oblique
    grid's plane): the slices the tests paint on."""
    s = slicer.vtkMRMLScene()
    sb.segmentations_logic(s)
    red_view(s, GEO.ijk_to_ras()[:3, 2])
    return s


def _pair(scene, name, segments, painted_slices=None, seed=0):
    image, label = blob_volume(seed=seed)
    vol = sb.case_to_volume_node(scene, mt.Case(image, GEO), name)
    if painted_slices is not None:
        keep = np.zeros(label.shape[0], bool)
        keep[list(painted_slices)] = True
        label = np.where(keep[:, None, None], label, 0).astype(np.uint8)
    labels = [mt.Label(v, n, default_color(v)) for v, n in segments]
    seg = sb.label_to_segmentation_node(scene, label, GEO, labels, f"{name} segmentation", reference_volume=vol)
    return vol, seg, label


def test_add_all_pairs_each_segmentation_with_its_reference_volume_and_reports_orphans(scene):
    a, seg_a, _ = _pair(scene, "A", [(1, "bright"), (2, "dim")])
    b, seg_b, _ = _pair(scene, "B", [(1, "bright"), (2, "dim")], seed=1)
    orphan = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn nowhere")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    pairs, problems = sb.pair_all(scene)
    assert pairs == [(a, seg_a), (b, seg_b)]
    assert len(problems) == 1 and "drawn nowhere" in problems[0] and "by hand" in problems[0]
    assert orphan.GetSegmentation().GetNumberOfSegments() == 0


def test_segment_names_must_match_across_cases_and_mismatches_are_listed(scene):
    _pair(scene, "A", [(1, "Liver"), (2, "Spleen")])
    _pair(scene, "B", [(1, "Liver"), (2, "Kidney")])
    common, missing = sb.common_segments(sb.pair_all(scene)[0])
    assert common == ["Liver"]
    assert missing == {"A segmentation (A)": ["Kidney"], "B segmentation (B)": ["Spleen"]}


def test_labelled_slice_counts_follow_the_sparse_labelling_choice(scene):
    vol, seg, label = _pair(scene, "A", [(1, "bright"), (2, "dim")], painted_slices=[4, 8, 11])
    rows = sb.labelled_slice_counts([(vol, seg)], ["bright", "dim"], unpainted="ignore")
    assert rows[0]["labelled_slices"] == 3 and rows[0]["slices"] == 16
    assert rows[0]["voxels_bright"] == int((label == 1).sum()) and rows[0]["voxels_dim"] == int((label == 2).sum())
    assert sb.labelled_slice_counts([(vol, seg)], ["bright", "dim"], "background")[0]["labelled_slices"] == 16
    assert sb.labelled_slice_counts([(vol, seg)], ["dim"], "ignore")[0]["painted_slices"] == \
        int((label == 2).any(axis=(1, 2)).sum())


def test_training_list_adds_removes_and_refuses_what_cannot_train(scene):
    a, seg_a, _ = _pair(scene, "A", [(1, "bright"), (2, "dim")], painted_slices=[2, 6])
    b, seg_b, _ = _pair(scene, "B", [(1, "bright")], seed=1)
    pl = sb.TrainingPairs()
    pl.add(a, seg_a)
    with pytest.raises(MedTransferError, match="already in the list"):
        pl.add(a, seg_a)
    with pytest.raises(MedTransferError, match="not a label map"):
        pl.add(scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm"), seg_a)
    assert pl.add_all(scene) == [] and len(pl) == 2          # A not added twice
    assert pl.segments() == (["bright"], {"B segmentation (B)": ["dim"]})
    rows = pl.table(["bright"], "ignore")
    assert [r["volume"] for r in rows] == ["A", "B"] and rows[0]["labelled"] == "2 / 16"
    assert rows[1]["labelled"].endswith(" / 16")
    assert "has no segment 'dim'" in pl.table(["dim"], "ignore")[1]["labelled"]
    pl.add(b)                                                  # a volume only: classification row
    with pytest.raises(MedTransferError, match="no segmentation"):
        pl.pairs()
    pl.remove(2)
    assert pl.pairs() == [(a, seg_a), (b, seg_b)]
    scene.RemoveNode(seg_b)
    pl.prune(scene)
    assert pl.pairs() == [(a, seg_a)]


@pytest.mark.slow   # trains in a child process
def test_terminology_survives_training_and_results_sit_with_the_volume(scene, tmp_path):
    """Segments painted with a terminology come back from prediction with it; the result nodes
    go under the volume's study in the subject hierarchy; inputs are untouched."""
    from MedTransferLib.core.runner import Job

    vol, seg, _ = _pair(scene, "MR", [(1, "Liver"), (2, "dim")], painted_slices=range(0, 16, 2))
    liver = seg.GetSegmentation().GetNthSegment(0)
    liver.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), LIVER_TERM)
    assert sb.segment_terminology(liver) == LIVER_TERM
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
    study = sh.CreateStudyItem(patient, "study")
    sh.CreateItem(study, vol)   # what Slicer's subject hierarchy does when a volume is loaded
    before = sb.node_array(vol).copy()
    dim_term = sb.segment_terminology(seg.GetSegmentation().GetNthSegment(1))   # Slicer's default entry

    path = sb.export_training_data([(vol, seg)], ["Liver", "dim"], tmp_path / "data", "ignore")
    assert json.loads(path.read_text())["terminology"]["1"] == LIVER_TERM
    dl = mt.load_datalist(path)
    assert [lab.terminology for lab in dl.labels] == [LIVER_TERM, dim_term]
    job = Job(["train", "--datalist", str(path), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
               "--weights", "none", "--strategy", "finetune", "--epochs", "1", "--steps-per-epoch", "1",
               "--batch-size", "2", "--patch", "64"]).start()
    assert job.wait(timeout=300) == "finished", job.error
    out, table, metrics = sb.predict_to_nodes(vol, job.result["package"], reference_segmentation=seg)
    segs = out.GetSegmentation()
    assert sb.segment_terminology(segs.GetNthSegment(0)) == LIVER_TERM
    assert sb.segment_terminology(segs.GetNthSegment(1)) == dim_term
    assert np.allclose(segs.GetNthSegment(0).GetColor(), liver.GetColor())
    for node in (out, table, metrics):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    assert np.array_equal(sb.node_array(vol), before) and sb.segment_terminology(liver) == LIVER_TERM


def test_classification_training_data_from_volumes_and_typed_classes(scene, tmp_path):
    from MedTransferLib.data.class_datalist import load_class_datalist

    vols = [sb.case_to_volume_node(scene, mt.Case(blob_volume(seed=i)[0], GEO), f"V{i}") for i in range(3)]
    path = sb.export_classification_data(vols, ["lesion", "normal", " lesion "], tmp_path / "cls")
    dl = load_class_datalist(path)
    assert dl.classes == ["lesion", "normal"] and [e.label for e in dl.training] == [0, 1, 0]
    case = dl.load_cases()[0][0]
    assert np.allclose(case.image, sb.node_array(vols[0])) and case.geometry.matches(GEO) == []
    with pytest.raises(MedTransferError, match="no class"):
        sb.export_classification_data(vols, ["a", "", "b"], tmp_path / "x")
    with pytest.raises(MedTransferError, match="at least two"):
        sb.export_classification_data(vols, ["a", "a", "a"], tmp_path / "y")


def test_model_summary_and_a_verified_copy(blob_datalist, tmp_path):
    run = mt.train(blob_datalist, tmp_path / "run", backbone="resnet18", weights=None, strategy="finetune",
                   epochs=1, steps_per_epoch=1, batch_size=2, patch=64)
    pkg = ModelPackage.load(run.package)
    s = pkg.summary()
    assert s["structures"] == ["bright", "dim"] and s["backbone"] == "resnet18" and s["strategy"] == "finetune"
    assert s["cases"] == 2 and s["labelled_slices"] == 6 + 16 and s["epochs_run"] == 1
    text = pkg.describe()
    assert "bright, dim" in text and "resnet18" in text and "validation" in text
    copy = pkg.copy_to(tmp_path / "saved" / "my model")
    assert copy.manifest == pkg.manifest and (tmp_path / "saved" / "my model" / "model.safetensors").is_file()
    manifest = tmp_path / "saved" / "my model" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["labels"][0]["name"] = "edited"
    manifest.write_text(json.dumps(m))
    with pytest.raises(MedTransferError, match="changed after training"):
        ModelPackage.load(manifest.parent).copy_to(tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_device_choices_offer_auto_and_cpu_and_say_what_auto_is():
    import torch

    from MedTransferLib.core.device import available_devices

    choices = available_devices()
    keys = [c["key"] for c in choices]
    assert keys[0] == "auto" and keys[-1] == "cpu"
    if not torch.cuda.is_available():
        assert "CPU" in choices[0]["label"] and choices[0]["resolves_to"] in ("cpu", "mps")
    else:
        assert any(k.startswith("cuda:") for k in keys) and "GB" in choices[1]["label"]


def test_label_audit_of_two_segmentations_becomes_a_table_beside_the_volume(scene):
    from MedTransferLib.shift.audit import label_audit

    vol, seg_a, label = _pair(scene, "MR", [(1, "bright"), (2, "dim")])
    shifted = np.roll(label, 2, axis=2)          # a second reader, two voxels to the side
    seg_b = sb.label_to_segmentation_node(scene, shifted, GEO, [mt.Label(1, "bright", (1, 0, 0)),
                                                                 mt.Label(2, "dim", (0, 1, 0))], "reader 2")
    table = sb.audit_to_table(vol, [seg_a, seg_b], ["bright", "dim"])
    rows = sb.table_node_rows(table)
    expected = label_audit({"a": label.astype(int), "b": shifted.astype(int)},
                           [mt.Label(1, "bright", (1, 0, 0)), mt.Label(2, "dim", (0, 1, 0))], GEO)
    assert [r["structure"] for r in rows[:2]] == ["bright", "dim"]
    assert [r["dice"] for r in rows[:2]] == pytest.approx([e["dice"] for e in expected[:2]])
    assert 0.3 < rows[0]["dice"] < 1.0
    with pytest.raises(MedTransferError, match="two or more"):
        sb.audit_to_table(vol, [seg_a], ["bright"])


def test_bad_volume_nodes_are_named(scene):
    import vtk
    from vtk.util import numpy_support

    vol = sb.case_to_volume_node(scene, mt.Case(np.ones((4, 5, 6), np.float64) * 1e300, _geo_small()), "huge")
    with pytest.raises(MedTransferError, match="beyond the float32 range"):
        sb.volume_node_to_case(vol)
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    img = vtk.vtkImageData()
    img.SetDimensions(6, 5, 4)
    arr = numpy_support.numpy_to_vtk(np.zeros((120, 3), np.uint8), deep=True)
    img.GetPointData().SetScalars(arr)
    rgb.SetAndObserveImageData(img)
    with pytest.raises(MedTransferError, match="components per voxel"):
        sb.volume_node_to_case(rgb)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(MedTransferError, match="no image data"):
        sb.volume_node_to_case(empty)


def _geo_small():
    return mt.Geometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def test_apply_request_carries_the_painted_slices_of_a_training_volume(scene, blob_datalist, tmp_path):
    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.slicer import apply_files

    run = mt.train(blob_datalist, tmp_path / "run", backbone="resnet18", weights=None, strategy="finetune",
                   epochs=1, steps_per_epoch=1, batch_size=2, patch=64)
    pkg = ModelPackage.load(run.package)
    # the segments in the other order and other values than the model's: matched by name
    vol, seg, label = _pair(scene, "A", [(1, "dim"), (2, "bright")], painted_slices=[4, 8, 11])
    other, _, _ = _pair(scene, "B", [(1, "dim"), (2, "bright")], seed=1)
    request = json.loads(open(apply_files.write_request([vol, other], pkg, None, "cpu", None, tmp_path,
                                                        [(vol, seg)])).read())
    first, second = request["cases"]
    assert "painted" not in second                        # not in the training list: the network alone
    painted, _ = mt.read_image(tmp_path / first["painted"], "label")
    want = np.full(label.shape, IGNORE, np.uint8)
    for k in (4, 8, 11):
        want[k] = np.select([label[k] == 1, label[k] == 2], [2, 1], 0)   # dim → the model's 2, bright → 1
    assert np.array_equal(painted, want)
    # a segmentation without every structure of the model guides nothing
    partial, seg_partial, _ = _pair(scene, "C", [(1, "bright")], painted_slices=[4])
    assert apply_files.painted_label(partial, [(partial, seg_partial)], pkg) is None
    assert apply_files.painted_label(vol, None, pkg) is None
    # the panel's list: its painted pairs, and none (no error) when the list is empty
    listed = sb.TrainingPairs()
    assert listed.painted() == []
    listed.add(other)
    listed.add(vol, seg)
    assert listed.painted() == [(vol, seg)]
