"""Point 11: the Slicer bridge against the real MRML classes of the slicer-core wheel."""

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from conftest import OBLIQUE, blob_volume, red_view  # noqa: E402

import MedTransferLib as mt  # noqa: E402
from MedTransferLib.slicer import bridge as sb  # noqa: E402

LABELS = [mt.Label(3, "Liver", (1.0, 0.0, 0.0)), mt.Label(7, "Spleen", (0.0, 1.0, 0.0)),
          mt.Label(9, "Kidney", (0.0, 0.0, 1.0))]


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    sb.segmentations_logic(s)
    return s


def _geo(size=(12, 10, 8)):
    return mt.Geometry(size, (0.5, 0.7, 3.0), (10.0, -20.0, 30.0), OBLIQUE)


def test_volume_node_round_trip_keeps_oblique_anisotropic_geometry_exactly(scene):
    image = np.random.default_rng(0).normal(size=(8, 10, 12)).astype(np.float32)
    node = sb.case_to_volume_node(scene, mt.Case(image, _geo()), "vol")
    back = sb.volume_node_to_case(node)
    assert back.geometry.matches(_geo(), tol=1e-9) == []
    assert np.array_equal(back.image, image)


def test_ijk_to_ras_is_lps_flipped():
    geo = _geo()
    assert np.allclose(geo.ijk_to_ras()[:2], -geo.ijk_to_lps()[:2])
    assert np.allclose(mt.Geometry.from_ijk_to_ras(geo.ijk_to_ras(), geo.size).ijk_to_lps(), geo.ijk_to_lps())


def test_label_to_segmentation_and_back_keeps_names_colours_and_values(scene):
    geo = _geo()
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((8, 10, 12), np.float32), geo), "vol")
    label = np.zeros((8, 10, 12), np.uint8)
    label[2:5, 3:7, 4:9] = 3
    label[6, 1:3, 1:3] = 7
    seg = sb.label_to_segmentation_node(scene, label, geo, LABELS, "pred", reference_volume=vol)
    assert sb.segment_names(seg) == ["Liver", "Spleen", "Kidney"]  # Kidney kept, though empty
    colours = [seg.GetSegmentation().GetNthSegment(i).GetColor() for i in range(3)]
    assert np.allclose(colours, [lab.color for lab in LABELS])
    back = sb.segmentation_to_label(seg, vol, LABELS)
    assert np.array_equal(back, label)
    only_liver = sb.segmentation_to_label(seg, vol, LABELS[:1])
    assert set(np.unique(only_liver)) == {0, 3}


def _sparse_pair(scene):
    """A volume and a segmentation with one structure painted on slices 2 and 5 of 8."""
    geo = _geo()
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((8, 10, 12), np.float32), geo), "vol")
    label = np.zeros((8, 10, 12), np.uint8)
    label[2, 3:7, 4:9] = 3
    label[5, 3:7, 4:9] = 3
    seg = sb.label_to_segmentation_node(scene, label, geo, LABELS[:1], "sparse")
    return vol, seg, label


def test_unpainted_slices_can_mean_unlabelled(scene):
    vol, seg, label = _sparse_pair(scene)
    sparse = sb.segmentation_to_label(seg, vol, LABELS[:1], unpainted="ignore", axis=2)
    assert [int(s) for s in np.nonzero((sparse != mt.IGNORE).any(axis=(1, 2)))[0]] == [2, 5]
    dense = sb.segmentation_to_label(seg, vol, LABELS[:1], unpainted="background")
    assert (dense != mt.IGNORE).all()


def test_a_missing_segment_name_is_reported_not_guessed(scene):
    geo = _geo()
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((8, 10, 12), np.float32), geo), "vol")
    seg = sb.label_to_segmentation_node(scene, np.zeros((8, 10, 12), np.uint8), geo, LABELS[:1], "s")
    with pytest.raises(mt.MedTransferError, match=r"no segment named \['Spleen'\]"):
        sb.segmentation_to_label(seg, vol, LABELS[:2])


def test_rows_to_table_node_and_back(scene):
    rows = [{"structure": "Liver", "voxels": 10, "volume_ml": 1.5},
            {"structure": "Spleen", "voxels": 3, "volume_ml": float("nan")}]
    node = sb.rows_to_table_node(scene, rows, "volumes")
    back = sb.table_node_rows(node)
    assert back[0] == rows[0] and back[1]["structure"] == "Spleen" and np.isnan(back[1]["volume_ml"])
    assert node.GetTable().GetColumnByName("voxels").IsA("vtkIntArray")


def test_scene_is_saved_and_reloads_with_its_nodes(scene, tmp_path):
    geo = _geo()
    image = np.random.default_rng(1).normal(size=(8, 10, 12)).astype(np.float32)
    vol = sb.case_to_volume_node(scene, mt.Case(image, geo), "vol")
    label = np.zeros((8, 10, 12), np.uint8)
    label[2:5, 3:7, 4:9] = 3
    sb.label_to_segmentation_node(scene, label, geo, LABELS[:1], "pred", reference_volume=vol)
    sb.rows_to_table_node(scene, [{"structure": "Liver", "volume_ml": 2.0}], "volumes")
    path = sb.save_scene(scene, tmp_path / "scene" / "s.mrml")
    again = slicer.vtkMRMLScene()
    sb.segmentations_logic(again)
    again.SetURL(str(path))
    assert again.Import()
    v = again.GetFirstNodeByName("vol")
    assert np.allclose(sb.node_array(v), image)
    assert sb.node_geometry(v).matches(geo) == []
    assert sb.segment_names(again.GetFirstNodeByName("pred")) == ["Liver"]
    assert sb.table_node_rows(again.GetFirstNodeByName("volumes"))[0]["structure"] == "Liver"


def test_train_from_nodes_and_predict_to_nodes_leave_inputs_untouched(scene, tmp_path):
    image, label = blob_volume()
    geo = mt.Geometry((48, 40, 16), (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
    vol = sb.case_to_volume_node(scene, mt.Case(image, geo), "MR")
    labels = [mt.Label(1, "bright", (1.0, 0.5, 0.0)), mt.Label(2, "dim", (0.0, 0.5, 1.0))]
    sparse = label.copy()
    sparse[1::2] = 0  # only even slices painted
    seg = sb.label_to_segmentation_node(scene, sparse, geo, labels, "painted", reference_volume=vol)
    image_before = sb.node_array(vol).copy()
    n_nodes = scene.GetNumberOfNodes()
    run = sb.train_from_nodes([(vol, seg)], ["bright", "dim"], tmp_path, unpainted="ignore",
                              backbone="resnet18", weights=None, epochs=1, steps_per_epoch=2, batch_size=2)
    assert scene.GetNumberOfNodes() == n_nodes  # no helper nodes left behind
    out, table, metrics = sb.predict_to_nodes(vol, run.package, reference_segmentation=seg)
    assert sb.segment_names(out) == ["bright", "dim"]
    assert [r["structure"] for r in sb.table_node_rows(table)] == ["bright", "dim"]
    assert {"dice", "hd95_mm"} <= set(sb.table_node_rows(metrics)[0])
    assert np.array_equal(sb.node_array(vol), image_before)
    assert sb.segment_names(seg) == ["bright", "dim"]


def test_learning_curve_table_and_chart_update_as_epochs_arrive(scene):
    history = [{"epoch": 1, "train_loss": 1.5, "val_dice": 0.2}]
    table, chart = sb.learning_curve_nodes(scene, history)
    assert table.GetTable().GetNumberOfRows() == 1
    names = [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert names == ["train_loss", "val_dice"]
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNodeID() == table.GetID() and series.GetXColumnName() == "epoch"
    history.append({"epoch": 2, "train_loss": 0.9, "val_dice": 0.5})
    table2, chart2 = sb.learning_curve_nodes(scene, history, table, chart)
    assert (table2, chart2) == (table, chart) and chart.GetNumberOfPlotSeriesNodes() == 2
    rows = sb.table_node_rows(table)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["val_dice"] == pytest.approx(0.5)
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 1   # no scratch left


@pytest.mark.slow   # child process
def test_nodes_export_to_a_datalist_a_child_process_trains_on(scene, tmp_path):
    """What the GUI's background training does: nodes → files + dataset.json → the CLI in a child
    process (the runner) → a model; the sparse labelling survives the trip."""
    from MedTransferLib.core.runner import Job

    image, label = blob_volume()
    geo = mt.Geometry((48, 40, 16), (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
    vol = sb.case_to_volume_node(scene, mt.Case(image, geo), "MR")
    labels = [mt.Label(1, "bright", (1.0, 0.5, 0.0)), mt.Label(2, "dim", (0.0, 0.5, 1.0))]
    sparse = label.copy()
    sparse[1::2] = 0
    seg = sb.label_to_segmentation_node(scene, sparse, geo, labels, "painted", reference_volume=vol)
    n_nodes = scene.GetNumberOfNodes()
    path = sb.export_training_data([(vol, seg)], ["bright", "dim"], tmp_path / "data", unpainted="ignore")
    assert scene.GetNumberOfNodes() == n_nodes
    dl = mt.load_datalist(path)
    case = dl.load_cases()[0]
    direct = sb.nodes_to_case(vol, seg, dl.labels, "ignore")
    assert np.array_equal(case.label, direct.label) and np.allclose(case.image, direct.image)
    assert case.geometry.matches(geo) == [] and [lab.name for lab in dl.labels] == ["bright", "dim"]
    job = Job(["train", "--datalist", str(path), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
               "--weights", "none", "--strategy", "finetune", "--epochs", "1", "--steps-per-epoch", "1",
               "--batch-size", "2", "--patch", "64"]).start()
    assert job.wait(timeout=300) == "finished", job.error
    table, chart = sb.learning_curve_nodes(scene, job.progress.history)
    assert table.GetTable().GetNumberOfRows() == 1


def test_slices_marked_empty_are_labelled_background_and_saved_on_the_node(scene):
    vol, seg, label = _sparse_pair(scene)
    sb.set_empty_slices(seg, [0, 7, 5])            # 5 is painted: it stays as painted
    assert sb.empty_slices(seg) == [0, 5, 7] and sb.empty_slices(seg, axis=1) == []
    sparse = sb.segmentation_to_label(seg, vol, LABELS[:1], unpainted="ignore", axis=2)
    assert [int(s) for s in np.nonzero((sparse != mt.IGNORE).any(axis=(1, 2)))[0]] == [0, 2, 5, 7]
    assert (sparse[0] == 0).all() and (sparse[7] == 0).all() and np.array_equal(sparse[5], label[5])
    assert seg.GetAttribute(sb.EMPTY_SLICES) == '{"2": [0, 5, 7]}'   # a node attribute: saved with the scene
    sb.set_empty_slices(seg, [9])
    with pytest.raises(mt.MedTransferError, match=r"marks slices \[9\] as empty, outside volume 'vol' \(8 slices"):
        sb.segmentation_to_label(seg, vol, LABELS[:1], unpainted="ignore", axis=2)
    seg.SetAttribute(sb.EMPTY_SLICES, "[not json")
    with pytest.raises(mt.MedTransferError, match="attribute is not readable"):
        sb.empty_slices(seg)


def test_the_slice_a_view_shows_is_found_in_the_volumes_grid(scene):
    geo = _geo()
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((8, 10, 12), np.float32), geo), "vol")
    view = slicer.vtkMRMLSliceNode()
    view.SetSingletonTag("Red")
    scene.AddNode(view)
    for k in (0, 3, 7):
        ras = geo.ijk_to_ras() @ np.array([5.0, 4.0, k, 1.0])   # a point of slice k, oblique grid
        for r in range(3):
            view.GetSliceToRAS().SetElement(r, 3, float(ras[r]))
        view.UpdateMatrices()
        assert sb.slice_index_in_view(vol, scene.GetSingletonNode("Red", "vtkMRMLSliceNode"), axis=2) == k


SAGITTAL = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)   # LPS, row-major: i → A, j → S, k → R


def test_a_volume_stored_sagittally_is_painted_along_the_axis_the_red_view_steps_along(scene, tmp_path):
    """A volume whose k runs left-right (a sagittal acquisition), painted on three axial slices in
    the Red view: those are slices along its voxel axis j, and only they are labelled — read along
    k, every sagittal slice crossing the paint would count as labelled, background all around it."""
    geo = mt.Geometry((8, 10, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), SAGITTAL)
    assert int(np.argmax(np.abs(np.asarray(SAGITTAL).reshape(3, 3)[2]))) == 1    # j is the body axis
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((12, 10, 8), np.float32), geo), "sagittal")
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:9, [1, 4, 6], 2:7] = 3                  # axial slices j = 1, 4, 6
    seg = sb.label_to_segmentation_node(scene, label, geo, LABELS[:1], "painted", reference_volume=vol)
    assert sb.view_axis(vol) == 1                   # no Red view: the patient's superior axis
    sparse = sb.segmentation_to_label(seg, vol, LABELS[:1], unpainted="ignore")
    assert (sparse != mt.IGNORE).any(axis=(0, 2)).nonzero()[0].tolist() == [1, 4, 6]
    assert (sparse[:, [0, 2, 3, 5, 7, 8, 9], :] == mt.IGNORE).all()
    path = sb.export_training_data([(vol, seg)], ["Liver"], tmp_path / "data", unpainted="ignore")
    entry = mt.load_datalist(path).training[0]
    assert entry.slice_axis == 1 and entry.labelled_slices == [1, 4, 6]
    assert sb.labelled_slice_counts([(vol, seg)], ["Liver"])[0]["labelled_slices"] == 3
    red = red_view(scene, [0.0, 0.0, 1.0])              # the Red view, axial
    assert sb.view_axis(vol) == 1 and sb.view_axis(vol, red) == 1
    red_view(scene, [1.0, 0.1, 0.0])                    # turned sagittal
    assert sb.view_axis(vol) == 2
    for k in (0, 5):                                # the slice a sagittal view shows, along k
        ras = geo.ijk_to_ras() @ np.array([3.0, 4.0, k, 1.0])
        red = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
        for r in range(3):
            red.GetSliceToRAS().SetElement(r, 3, float(ras[r]))
        red.UpdateMatrices()
        assert sb.slice_index_in_view(vol, red) == k


def test_a_volume_under_a_transform_is_painted_shown_and_segmented_where_the_views_show_it(scene):
    """A registered volume (under a transform, not hardened) is drawn where the transform puts it:
    here turned 90° about the R axis (its A axis shown pointing superior) and moved. The Red
    view's axial slices are then its j slices; the slice in view, the slice shown and the
    predicted segmentation must all go through the transform — without it they land elsewhere."""
    import vtk

    geo = mt.Geometry((12, 10, 8), (1.0, 1.5, 2.0), (4.0, -6.0, 3.0), np.eye(3))   # axial, LPS
    vol = sb.case_to_volume_node(scene, mt.Case(np.zeros((8, 10, 12), np.float32), geo), "registered")
    turn = np.array([[1.0, 0, 0, 7.0], [0, 0, -1.0, -5.0], [0, 1.0, 0, 11.0], [0, 0, 0, 1.0]])  # volume → world
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, turn[r, c])
    transform.SetMatrixTransformToParent(m)
    assert sb.view_axis(vol) == 2                       # before: axial volume, axial Red view
    vol.SetAndObserveTransformNodeID(transform.GetID())
    red = red_view(scene, [0.0, 0.0, 1.0])
    assert sb.view_axis(vol) == 1 and sb.view_axis(vol, red) == 1
    to_ijk = np.linalg.inv(geo.ijk_to_ras()) @ np.linalg.inv(turn)   # world → the volume's voxels
    for j in (0, 4, 9):
        world = turn @ geo.ijk_to_ras() @ np.array([5.0, j, 3.0, 1.0])
        for r in range(3):
            red.GetSliceToRAS().SetElement(r, 3, float(world[r]))
        red.UpdateMatrices()
        assert sb.slice_index_in_view(vol, red) == j
    sb.show_slice(vol, red, 6)
    shown = to_ijk @ np.array([red.GetSliceToRAS().GetElement(r, 3) for r in range(3)] + [1.0])
    assert shown[1] == pytest.approx(6.0)           # the view moved along its normal to slice j = 6
    label = np.zeros((8, 10, 12), np.uint8)
    label[2:6, 3:5, 1:4] = 3
    seg = sb.label_to_segmentation_node(scene, label, geo, LABELS[:1], "pred", reference_volume=vol)
    assert seg.GetTransformNodeID() == transform.GetID()
    assert np.array_equal(sb.segmentation_to_label(seg, vol, LABELS[:1]), label)
    again = sb.label_to_segmentation_node(scene, label[::-1].copy(), geo, LABELS[:1], node=seg, reference_volume=vol)
    assert again is seg and np.array_equal(sb.segmentation_to_label(seg, vol, LABELS[:1]), label[::-1])
