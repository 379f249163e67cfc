"""Results in the scene: table nodes, the learning-curve plot, subject-hierarchy placement, a
saved scene."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer.mrml import (
    _mods,
    labels_from_segments,
    node_geometry,
    segmentation_to_label,
)


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


def audit_to_table(volume_node, segmentation_nodes, segment_names_: list[str], name: str = "MedTransfer label audit"):
    """Concept shift made visible: agreement between two or more segmentations of the same
    structures on one volume (Dice, volumes, volume difference, HD95, mean surface distance per
    structure and pair; mean Dice per annotator) as a table node beside the volume. The
    segmentations are matched by segment name and only read."""
    from MedTransferLib.shift.audit import label_audit

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
