"""MRML nodes ↔ :class:`Case`, and results back into a Slicer scene.

The only engine module that imports ``slicer``/``vtk``. It uses node and logic APIs directly
(no ``slicer.util`` helpers that need ``slicer.app``), so it runs both inside Slicer and against
the ``slicer-core`` wheel's real MRML classes in tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .case import IGNORE, Case, Geometry
from .errors import MedTransferError
from .labels import Label


def _mods():
    import slicer
    import vtk
    from vtk.util import numpy_support

    return slicer, vtk, numpy_support


_LOGICS: dict = {}  # one logic per scene: a second one would re-register node classes


def segmentations_logic(scene):
    """A segmentations logic bound to ``scene`` (registers the segment representations)."""
    slicer, _, _ = _mods()
    app_logic = getattr(getattr(slicer, "modules", None), "segmentations", None)
    if app_logic is not None and hasattr(app_logic, "logic") and app_logic.logic() is not None:
        return app_logic.logic()  # inside the Slicer application
    logic = _LOGICS.get(scene)
    if logic is None:
        logic = _LOGICS[scene] = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
    return logic


class _Scratch:
    """Removes every node added to ``scene`` inside the ``with`` block (helper labelmaps and the
    display and colour nodes the segmentations logic adds for them), so the user's scene only
    gains the results."""

    def __init__(self, scene):
        self.scene = scene

    def __enter__(self):
        self.before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        return self

    def __exit__(self, *exc):
        added = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in self.before:
                self.scene.RemoveNode(node)
        return False


def _matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(a: np.ndarray):
    _, vtk, _ = _mods()
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def node_geometry(node) -> Geometry:
    """Voxel grid of a volume node, from its IJK→RAS matrix."""
    _, vtk, _ = _mods()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return Geometry.from_ijk_to_ras(_matrix_to_numpy(m), node.GetImageData().GetDimensions())


def node_array(node) -> np.ndarray:
    """A copy of a volume node's voxels as ``(k, j, i)``."""
    _, _, ns = _mods()
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        name = node.GetName() if node is not None else "None"
        raise MedTransferError(f"volume '{name}' has no image data; load or create the volume first")
    if image.GetNumberOfScalarComponents() != 1:
        raise MedTransferError(f"volume '{node.GetName()}' has {image.GetNumberOfScalarComponents()} "
                               f"components per voxel; convert it to a scalar volume (e.g. "
                               f"Vector to Scalar Volume module)")
    i, j, k = image.GetDimensions()
    return ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i).copy()


def volume_node_to_case(node, case_id: str | None = None) -> Case:
    """A scalar volume node → :class:`Case` (image as float32, exact geometry)."""
    arr = node_array(node)
    if not np.isfinite(arr).all():
        raise MedTransferError(f"volume '{node.GetName()}' has NaN/Inf voxels; fix them first")
    with np.errstate(over="ignore"):
        arr32 = arr.astype(np.float32)
    if not np.isfinite(arr32).all():
        raise MedTransferError(f"volume '{node.GetName()}' has values beyond the float32 range "
                               f"({float(arr.min()):.3g} … {float(arr.max()):.3g}); rescale it first")
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise MedTransferError(f"volume '{node.GetName()}' is not a 3D volume (shape {arr.shape})")
    return Case(arr32, node_geometry(node), None, case_id or node.GetName(), {"node_id": node.GetID()})


def _set_array(node, array: np.ndarray, geometry: Geometry) -> None:
    _, vtk, ns = _mods()
    k, j, i = array.shape
    if (i, j, k) != tuple(geometry.size):
        raise MedTransferError(f"array of shape {array.shape} does not fit geometry size {geometry.size}")
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(ns.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_numpy_to_matrix(geometry.ijk_to_ras()))


def case_to_volume_node(scene, case: Case, name: str | None = None):
    """A new scalar volume node holding ``case.image`` in its geometry."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or case.case_id)
    _set_array(node, case.image, case.geometry)
    node.CreateDefaultDisplayNodes()
    return node


def _terminology_tag() -> str:
    slicer, _, _ = _mods()
    return slicer.vtkSegment.GetTerminologyEntryTagName()


def segment_terminology(segment) -> str:
    """The segment's terminology entry (Slicer's ``TerminologyEntry`` tag), or ""."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(_terminology_tag(), value) else ""


def segment_names(segmentation_node) -> list[str]:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegment(n).GetName() for n in range(seg.GetNumberOfSegments())]


def segmentation_to_label(segmentation_node, reference_volume, labels: list[Label],
                          unpainted: str = "background", axis: int = 2) -> np.ndarray:
    """Label array ``(k, j, i)`` on ``reference_volume``'s grid from the segments named in
    ``labels`` (matched by name; each gets its label's value). Other segments are ignored.

    ``unpainted="ignore"``: slices along ``axis`` where none of the chosen segments is painted
    are marked :data:`IGNORE` (sparse labelling); ``"background"``: they count as background.
    """
    _, vtk, _ = _mods()
    if unpainted not in ("background", "ignore"):
        raise MedTransferError(f"unpainted must be 'background' or 'ignore', not '{unpainted}'")
    seg = segmentation_node.GetSegmentation()
    by_name = {seg.GetNthSegment(n).GetName(): seg.GetNthSegmentID(n) for n in range(seg.GetNumberOfSegments())}
    missing = [lab.name for lab in labels if lab.name not in by_name]
    if missing:
        raise MedTransferError(f"segmentation '{segmentation_node.GetName()}' has no segment named "
                               f"{missing}; it has {sorted(by_name)} — rename segments to match")
    scene = segmentation_node.GetScene()
    logic = segmentations_logic(scene)
    geometry = node_geometry(reference_volume)
    out = np.zeros(tuple(geometry.size)[::-1], dtype=np.uint8 if max(l.value for l in labels) < 255 else np.uint16)
    with _Scratch(scene):
        tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medtransfer_export")
        for lab in labels:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(by_name[lab.name])
            if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, tmp, reference_volume):
                raise MedTransferError(f"segment '{lab.name}' could not be exported onto volume "
                                       f"'{reference_volume.GetName()}'")
            mask = node_array(tmp) > 0
            out[mask] = lab.value
    if unpainted == "ignore":
        arr_axis = 2 - axis
        other = tuple(a for a in range(3) if a != arr_axis)
        painted = (out > 0).any(axis=other)
        shape = [1, 1, 1]
        shape[arr_axis] = -1
        out = np.where(painted.reshape(shape), out, IGNORE).astype(out.dtype)
    return out


def nodes_to_case(volume_node, segmentation_node, labels: list[Label], unpainted: str = "background",
                  axis: int = 2) -> Case:
    """A training :class:`Case` from a volume and its segmentation (input nodes are not modified)."""
    case = volume_node_to_case(volume_node)
    case.label = segmentation_to_label(segmentation_node, volume_node, labels, unpainted, axis)
    return case


def label_to_segmentation_node(scene, label: np.ndarray, geometry: Geometry, labels: list[Label],
                               name: str = "MedTransfer segmentation", reference_volume=None):
    """A new segmentation node with one segment per label (names and colours from ``labels``)."""
    _, vtk, _ = _mods()
    logic = segmentations_logic(scene)
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    with _Scratch(scene):
        tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medtransfer_import")
        segmentation = seg_node.GetSegmentation()
        for lab in labels:
            mask = (label == lab.value).astype(np.uint8)
            if mask.any():
                _set_array(tmp, mask, geometry)
                before = segmentation.GetNumberOfSegments()
                if not logic.ImportLabelmapToSegmentationNode(tmp, seg_node):
                    raise MedTransferError(f"could not add segment '{lab.name}' to '{name}'")
                segment = segmentation.GetNthSegment(before)
            else:  # keep every trained structure visible in the list, even when not found
                segment = segmentation.GetSegment(segmentation.AddEmptySegment("", lab.name, lab.color))
            segment.SetName(lab.name)
            segment.SetColor(*lab.color)
            segment.SetTag("MedTransfer.LabelValue", str(lab.value))
            if lab.terminology:
                segment.SetTag(_terminology_tag(), lab.terminology)
    return seg_node


def rows_to_table_node(scene, rows: list[dict], name: str = "MedTransfer table"):
    """A table node with one column per key (numbers as double/int columns, others as text)."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    _fill_table(node, rows)
    return node


def _fill_table(node, rows: list[dict]) -> None:
    """Replace a table node's columns by ``rows`` (one column per key, typed)."""
    _, vtk, _ = _mods()
    node.RemoveAllColumns()
    table = node.GetTable()
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    for col in columns:
        values = [row.get(col) for row in rows]
        if all(isinstance(v, (bool, np.bool_)) for v in values if v is not None):
            arr = vtk.vtkStringArray()
            values = ["" if v is None else str(bool(v)) for v in values]
        elif all(isinstance(v, (int, np.integer)) for v in values if v is not None):
            arr = vtk.vtkIntArray()
            values = [0 if v is None else int(v) for v in values]
        elif all(isinstance(v, (int, float, np.number)) for v in values if v is not None):
            arr = vtk.vtkDoubleArray()
            values = [float("nan") if v is None else float(v) for v in values]
        else:
            arr = vtk.vtkStringArray()
            values = ["" if v is None else str(v) for v in values]
        arr.SetName(col)
        for v in values:
            arr.InsertNextValue(v)
        table.AddColumn(arr)
    node.Modified()


def table_node_rows(node) -> list[dict]:
    """Rows of a table node as dicts (numbers as Python numbers)."""
    table = node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            col = table.GetColumn(c)
            v = col.GetValue(r)
            row[col.GetName()] = v if isinstance(v, str) else (int(v) if col.IsA("vtkIntArray") else float(v))
        rows.append(row)
    return rows


def save_scene(scene, path) -> Path:
    """Write ``scene`` as an .mrml file with every storable node's data beside it."""
    path = Path(path).resolve()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    extensions = {"vtkMRMLScalarVolumeNode": ".nrrd", "vtkMRMLLabelMapVolumeNode": ".nrrd",
                  "vtkMRMLSegmentationNode": ".seg.nrrd", "vtkMRMLTableNode": ".tsv"}
    scene.SetRootDirectory(str(folder))
    for n in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(n)
        if not node.IsA("vtkMRMLStorableNode") or node.GetClassName() not in extensions:
            continue
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in node.GetName())
        storage.SetFileName(str(folder / f"{safe}{extensions[node.GetClassName()]}"))
        if not storage.WriteData(node):
            raise MedTransferError(f"could not write '{node.GetName()}' to {storage.GetFileName()}")
    scene.SetURL(str(path))
    tmp = path.with_name(f"tmp-{path.stem}.mrml")
    scene.SetURL(str(tmp))
    if not scene.Commit():
        raise MedTransferError(f"could not write scene '{path}'")
    os.replace(tmp, path)
    scene.SetURL(str(path))
    return path


def labels_from_segments(segmentation_node, segment_names_: list[str]) -> list[Label]:
    """Label definitions (values 1..N, names and colours) for the chosen segments."""
    seg = segmentation_node.GetSegmentation()
    out = []
    for value, name in enumerate(segment_names_, start=1):
        segment = next((seg.GetNthSegment(n) for n in range(seg.GetNumberOfSegments())
                        if seg.GetNthSegment(n).GetName() == name), None)
        if segment is None:
            raise MedTransferError(f"segmentation '{segmentation_node.GetName()}' has no segment '{name}'; "
                                   f"it has {segment_names(segmentation_node)}")
        out.append(Label(value, name, tuple(float(c) for c in segment.GetColor()), segment_terminology(segment)))
    return out


def train_from_nodes(pairs, segment_names_: list[str], out, unpainted: str = "background",
                     axis: int = 2, reporter=None, **config):
    """Train on (volume node, segmentation node) pairs; segments are matched by name.

    Example (Slicer Python console):
        >>> run = train_from_nodes([(vol, seg)], ["tumor"], "/tmp/run", epochs=5)  # doctest: +SKIP
    """
    from .trainer import TrainConfig, train

    if not pairs:
        raise MedTransferError("no training pairs: choose at least one volume with its segmentation")
    labels = labels_from_segments(pairs[0][1], segment_names_)
    cases = []
    for volume, segmentation in pairs:
        case = nodes_to_case(volume, segmentation, labels, unpainted, axis)
        case.case_id = volume.GetName()
        cases.append(case)
    return train(cases, labels, out, TrainConfig(**config), reporter, axis)


def predict_to_nodes(volume_node, model, reference_segmentation=None, device: str = "auto"):
    """Segment a volume node: returns (segmentation node, volumes table, metrics table or None),
    placed with the volume in the subject hierarchy; segments carry the training segments'
    names, colours and terminology.

    The input volume (and reference) are only read. With a reference segmentation holding
    segments of the same names, a Dice/HD95 table is added.
    """
    from .metrics import evaluate
    from .prediction import predict

    scene = volume_node.GetScene()
    case = volume_node_to_case(volume_node)
    pred = predict(model, case, device=device)
    seg = label_to_segmentation_node(scene, pred.label, case.geometry, pred.labels,
                                     f"{volume_node.GetName()} MedTransfer", reference_volume=volume_node)
    volumes = rows_to_table_node(scene, pred.volumes(), f"{volume_node.GetName()} volumes")
    if pred.warnings:   # the input check's findings travel with the table (and the GUI shows them)
        volumes.SetAttribute("MedTransfer.Warnings", "\n".join(pred.warnings))
    metrics = None
    if reference_segmentation is not None:
        names = set(segment_names(reference_segmentation))
        common = [lab for lab in pred.labels if lab.name in names]
        if not common:
            raise MedTransferError(f"reference '{reference_segmentation.GetName()}' has none of the "
                                   f"model's segments {[lab.name for lab in pred.labels]}")
        ref = segmentation_to_label(reference_segmentation, volume_node, common)
        rows = evaluate(pred.label, ref, common, case.geometry, case_id=volume_node.GetName())
        metrics = rows_to_table_node(scene, rows, f"{volume_node.GetName()} metrics")
    place_with_volume(volume_node, [seg, volumes, metrics])
    return seg, volumes, metrics


def classify_to_table(volume_nodes, model, device: str = "auto", name: str = "MedTransfer classes",
                      prior: str | None = None):
    """Classify volume nodes with a classification package: one table node, a row per volume
    (``case, predicted, p_<class>…``). ``prior`` (em, bbse, known:…) adjusts the probabilities
    to these volumes' class prevalence (shift.prior_correction); the estimate is stored on the
    table as the attribute ``MedTransfer.Prior``. The volumes are only read."""
    from .classify import predict_class
    from .package import ModelPackage

    nodes = list(volume_nodes)
    if not nodes:
        raise MedTransferError("no volume given to classify")
    from .device import resolve_device

    pkg = model if isinstance(model, ModelPackage) else ModelPackage.load(model)
    dev = resolve_device(device)
    net = pkg.build_model(dev)   # once for all volumes
    rows = [predict_class(pkg, volume_node_to_case(n, n.GetName()), device=str(dev), model=net) for n in nodes]
    report = None
    if prior:
        from .shift import prior_correction

        rows, report = prior_correction(rows, pkg.manifest["classes"], pkg.manifest.get("calibration", {}), prior)
    table = rows_to_table_node(nodes[0].GetScene(), rows, name)
    if report:
        import json

        table.SetAttribute("MedTransfer.Prior", json.dumps(report))
    place_with_volume(nodes[0], [table])
    return table


def advise_from_nodes(pairs, segment_names_: list[str], unpainted: str = "background", **kw):
    """The strategy advisor on [(volume node, segmentation node), ...]: an :class:`~.advisor.Advice`."""
    from .advisor import advise

    labels = labels_from_segments(pairs[0][1], segment_names_)
    cases = [nodes_to_case(v, s, labels, unpainted) for v, s in pairs]
    return advise(cases, labels, **kw)


def learning_curve_nodes(scene, history: list[dict], table=None, chart=None,
                         name: str = "MedTransfer learning curve"):
    """A live learning curve: a table node (one row per epoch: epoch, train_loss, val_…) and a
    plot chart node with one line series per metric. Pass the returned nodes back in to update
    them as epochs arrive (the GUI does this from the runner's progress history).
    Returns ``(table, chart)``."""
    mods = _mods()
    slicer = mods[0]
    rows = [{k: v for k, v in h.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for h in history]
    columns = ["epoch"] + [k for k in dict.fromkeys(k for r in rows for k in r) if k != "epoch"]
    rows = [{c: r.get(c, float("nan")) for c in columns} for r in rows]
    if table is None:
        table = rows_to_table_node(scene, rows, f"{name} table")
    else:
        _fill_table(table, rows)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        chart.SetTitle(name)
        chart.SetXAxisTitle("epoch")
        chart.SetYAxisTitle("loss / validation score")
    have = {chart.GetNthPlotSeriesNode(i).GetYColumnName(): chart.GetNthPlotSeriesNode(i)
            for i in range(chart.GetNumberOfPlotSeriesNodes())}
    for col in columns[1:]:
        if col in have:
            continue
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {col}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(col)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return table, chart


def export_training_data(pairs, segment_names_: list[str], folder, unpainted: str = "background",
                         axis: int = 2):
    """Write (volume node, segmentation node) pairs as a datalist a child process can train on:
    one NRRD image and label map per pair (unlabelled voxels 255) and ``dataset.json``. The nodes
    are only read. Returns the datalist path."""
    from .fileutil import write_json
    from .io import write_image, write_label

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels_from_segments(pairs[0][1], segment_names_)
    entries = []
    for i, (volume, segmentation) in enumerate(pairs):
        case = nodes_to_case(volume, segmentation, labels, unpainted, axis)
        image = write_image(folder / f"case{i}_image.nrrd", case.image, case.geometry)
        label = write_label(folder / f"case{i}_label.nrrd", case.label, case.geometry)
        entries.append({"image": image.name, "label": label.name, "id": volume.GetName() or f"case{i}",
                        "labelled_slices": case.labelled_slices(axis), "slice_axis": axis})
    data = {"labels": {"0": "background", **{str(lab.value): lab.name for lab in labels}},
            "colors": {str(lab.value): list(lab.color) for lab in labels}, "training": entries}
    if any(lab.terminology for lab in labels):
        data["terminology"] = {str(lab.value): lab.terminology for lab in labels if lab.terminology}
    path = folder / "dataset.json"
    write_json(path, data)
    return path


# ---- what the Training data panel shows ------------------------------------------------------

def _is_image_volume(node) -> bool:
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode")
            and not node.IsA("vtkMRMLLabelMapVolumeNode"))


def pair_all(scene) -> tuple[list[tuple], list[str]]:
    """Pair every segmentation node in ``scene`` with its reference volume (the volume it was
    painted on, Slicer's ``referenceImageGeometryRef``). Returns ``(pairs, problems)``: a
    segmentation without such a volume is reported, not guessed."""
    slicer, _, _ = _mods()
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    pairs, problems = [], []
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    for n in range(nodes.GetNumberOfItems()):
        seg = nodes.GetItemAsObject(n)
        if seg.GetHideFromEditors():
            continue
        volume = seg.GetNodeReference(role)
        if _is_image_volume(volume):
            pairs.append((volume, seg))
        else:
            problems.append(f"segmentation '{seg.GetName()}' has no reference volume (it was not "
                            f"painted on a volume in this scene); add it with its volume by hand")
    return pairs, problems


def common_segments(pairs) -> tuple[list[str], dict[str, list[str]]]:
    """Segment names present in every pair's segmentation (in the first one's order), and per
    segmentation the names it lacks that others have. Names must match exactly: 'Liver' and
    'liver' are different structures until the user renames one."""
    if not pairs:
        return [], {}
    names = [segment_names(seg) for _, seg in pairs]
    union = list(dict.fromkeys(n for ns in names for n in ns))
    common = [n for n in names[0] if all(n in ns for ns in names)]
    missing = {}
    for (volume, seg), ns in zip(pairs, names):
        lacks = [n for n in union if n not in ns]
        if lacks:
            missing[f"{seg.GetName()} ({volume.GetName()})"] = lacks
    return common, missing


def labelled_slice_counts(pairs, segment_names_: list[str], unpainted: str = "ignore",
                          axis: int = 2) -> list[dict]:
    """Per pair: how many slices along ``axis`` carry labels the training will use (with
    ``unpainted='ignore'`` the slices where any chosen segment is painted; with 'background'
    every slice) and how many voxels each chosen segment has."""
    rows = []
    if not pairs or not segment_names_:
        return rows
    labels = labels_from_segments(pairs[0][1], segment_names_)
    for volume, seg in pairs:
        label = segmentation_to_label(seg, volume, labels, "ignore", axis)
        arr_axis = 2 - axis
        painted = int((label != IGNORE).any(axis=tuple(a for a in range(3) if a != arr_axis)).sum())
        total = int(label.shape[arr_axis])
        rows.append({"volume": volume.GetName(), "segmentation": seg.GetName(),
                     "labelled_slices": painted if unpainted == "ignore" else total,
                     "painted_slices": painted, "slices": total,
                     **{f"voxels_{lab.name}": int((label == lab.value).sum()) for lab in labels}})
    return rows


def place_with_volume(volume_node, nodes) -> None:
    """Put result nodes beside ``volume_node`` in the subject hierarchy (same parent: its
    patient/study), so they appear with the volume in the Data module."""
    slicer, _, _ = _mods()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volume_node)
    parent = sh.GetItemParent(volume_item) if volume_item else sh.GetSceneItemID()
    for node in nodes:
        if node is None:
            continue
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:   # Slicer's subject hierarchy plugins add an item for every new node; bare MRML does not
            sh.CreateItem(parent, node)


def export_classification_data(volume_nodes, classes: list[str], folder):
    """Write volume nodes with one class each as a classification datalist a child process can
    train on (one NRRD per volume + ``dataset.json``). The nodes are only read."""
    from .fileutil import write_json
    from .io import write_image

    volume_nodes = list(volume_nodes)
    if len(volume_nodes) != len(classes):
        raise MedTransferError(f"{len(volume_nodes)} volumes but {len(classes)} classes: give one class per volume")
    empty = [v.GetName() for v, c in zip(volume_nodes, classes) if not str(c).strip()]
    if empty:
        raise MedTransferError(f"volumes {empty} have no class; type one in the Class column")
    names = sorted({str(c).strip() for c in classes})
    if len(names) < 2:
        raise MedTransferError(f"every volume has class '{names[0]}'; a classifier needs at least two "
                               f"classes among the training volumes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (volume, cls) in enumerate(zip(volume_nodes, classes)):
        case = volume_node_to_case(volume)
        image = write_image(folder / f"case{i}_image.nrrd", case.image, case.geometry)
        entries.append({"image": image.name, "label": str(cls).strip(), "id": volume.GetName() or f"case{i}"})
    path = folder / "dataset.json"
    write_json(path, {"task": "classification", "classes": names, "training": entries})
    return path


class TrainingPairs:
    """The Training data list of the Slicer panel, as plain Python over MRML nodes (tested
    against real MRML; the widget only draws it): (volume, segmentation or None, class) rows.

    Segmentation needs a segmentation per row; classification needs a class per row (the
    segmentation is then optional and unused)."""

    def __init__(self):
        self.rows: list[dict] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, volume, segmentation=None, cls: str = "") -> None:
        if not _is_image_volume(volume):
            raise MedTransferError("choose a volume (a scalar image, not a label map) to add")
        for row in self.rows:
            if row["volume"] is volume and row["segmentation"] is segmentation:
                raise MedTransferError(f"'{volume.GetName()}' with '{segmentation.GetName() if segmentation else 'no segmentation'}' "
                                       f"is already in the list")
        self.rows.append({"volume": volume, "segmentation": segmentation, "class": str(cls)})

    def remove(self, index: int) -> None:
        del self.rows[index]

    def add_all(self, scene) -> list[str]:
        """Add every segmentation of ``scene`` with its reference volume (:func:`pair_all`),
        skipping pairs already listed; returns the problems to show."""
        pairs, problems = pair_all(scene)
        for volume, seg in pairs:
            if not any(r["volume"] is volume and r["segmentation"] is seg for r in self.rows):
                self.rows.append({"volume": volume, "segmentation": seg, "class": ""})
        return problems

    def set_class(self, index: int, cls: str) -> None:
        self.rows[index]["class"] = str(cls).strip()

    def prune(self, scene) -> None:
        """Drop rows whose nodes were removed from the scene."""
        def alive(node):
            return node is None or scene.GetNodeByID(node.GetID()) is node

        self.rows = [r for r in self.rows if alive(r["volume"]) and alive(r["segmentation"])]

    def pairs(self) -> list[tuple]:
        """(volume, segmentation) for segmentation training; a row without one is an error."""
        missing = [r["volume"].GetName() for r in self.rows if r["segmentation"] is None]
        if missing:
            raise MedTransferError(f"volumes {missing} have no segmentation; choose one for each, or "
                                   f"switch the task to classification")
        if not self.rows:
            raise MedTransferError("the training list is empty: add a volume with its segmentation "
                                   "(or press 'Add all')")
        return [(r["volume"], r["segmentation"]) for r in self.rows]

    def segments(self) -> tuple[list[str], dict[str, list[str]]]:
        """Segment names every listed segmentation has, and what each one lacks."""
        return common_segments([(r["volume"], r["segmentation"]) for r in self.rows if r["segmentation"] is not None])

    def table(self, segment_names_: list[str], unpainted: str = "ignore") -> list[dict]:
        """One display row per entry: names, labelled slices / slices, class."""
        out = []
        for r in self.rows:
            row = {"volume": r["volume"].GetName(),
                   "segmentation": r["segmentation"].GetName() if r["segmentation"] is not None else "",
                   "labelled": "", "class": r["class"]}
            if r["segmentation"] is not None and segment_names_:
                try:
                    c = labelled_slice_counts([(r["volume"], r["segmentation"])], segment_names_, unpainted)[0]
                    row["labelled"] = f"{c['labelled_slices']} / {c['slices']}"
                except MedTransferError as exc:   # e.g. a chosen segment it does not have
                    row["labelled"] = f"— ({str(exc).split(';')[0]})"
            out.append(row)
        return out


def audit_to_table(volume_node, segmentation_nodes, segment_names_: list[str], name: str = "MedTransfer label audit"):
    """Concept shift made visible: agreement between two or more segmentations of the same
    structures on one volume (Dice, volumes, volume difference, HD95, mean surface distance per
    structure and pair; mean Dice per annotator) as a table node beside the volume. The
    segmentations are matched by segment name and only read."""
    from .shift import label_audit

    segs = list(segmentation_nodes)
    if len(segs) < 2:
        raise MedTransferError("choose two or more segmentations of the same volume to compare")
    labels = labels_from_segments(segs[0], segment_names_)
    arrays = {}
    for seg in segs:
        key = seg.GetName() if seg.GetName() not in arrays else f"{seg.GetName()} ({seg.GetID()})"
        arrays[key] = segmentation_to_label(seg, volume_node, labels).astype(int)
    rows = label_audit(arrays, labels, node_geometry(volume_node))
    table = rows_to_table_node(volume_node.GetScene(), rows, name)
    place_with_volume(volume_node, [table])
    return table
