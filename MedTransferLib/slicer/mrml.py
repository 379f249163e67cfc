"""MRML nodes ↔ :class:`~MedTransferLib.core.case.Case`: volumes, segmentations, geometry,
terminology.

With :mod:`.tables`, the only engine modules that import ``slicer``/``vtk``. They use node and
logic APIs directly (no ``slicer.util`` helpers that need ``slicer.app``), so they run both inside
Slicer and against the ``slicer-core`` wheel's real MRML classes in tests."""

from __future__ import annotations

import numpy as np

from MedTransferLib.core.case import IGNORE, Case, Geometry
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label
from MedTransferLib.slicer.views import view_axis


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
                          unpainted: str = "background", axis: int | None = None) -> np.ndarray:
    """Label array ``(k, j, i)`` on ``reference_volume``'s grid from the segments named in
    ``labels`` (matched by name; each gets its label's value). Other segments are ignored.

    ``unpainted="ignore"``: slices along ``axis`` where none of the chosen segments is painted
    are marked :data:`IGNORE` (sparse labelling) — except the slices the user marked as empty
    (:func:`empty_slices`), which are labelled background; ``"background"``: every unpainted
    slice counts as background. ``axis`` None: the voxel axis the Red view steps along
    (:func:`view_axis`).
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
        axis = view_axis(reference_volume) if axis is None else axis
        arr_axis = 2 - axis
        other = tuple(a for a in range(3) if a != arr_axis)
        painted = (out > 0).any(axis=other)
        marked = empty_slices(segmentation_node, axis)   # labelled, with nothing on them
        outside = [s for s in marked if not 0 <= s < painted.size]
        if outside:
            raise MedTransferError(f"segmentation '{segmentation_node.GetName()}' marks slices {outside} as empty, "
                                   f"outside volume '{reference_volume.GetName()}' ({painted.size} slices along "
                                   f"axis {axis}); unmark them (logic.setEmptySlices)")
        painted[marked] = True
        shape = [1, 1, 1]
        shape[arr_axis] = -1
        out = np.where(painted.reshape(shape), out, IGNORE).astype(out.dtype)
    return out


EMPTY_SLICES = "MedTransfer.EmptySlices"   # segmentation node attribute: {"axis": [slice, ...]} as JSON


def empty_slices(segmentation_node, axis: int = 2) -> list[int]:
    """The slices along voxel ``axis`` (of the volume the segmentation is paired with) that the
    user marked as labelled with none of the structures on them. Stored on the segmentation node,
    so they are saved with the scene."""
    import json

    raw = segmentation_node.GetAttribute(EMPTY_SLICES)
    if not raw:
        return []
    try:
        return sorted({int(s) for s in json.loads(raw).get(str(axis), [])})
    except (ValueError, TypeError, AttributeError):
        raise MedTransferError(f"segmentation '{segmentation_node.GetName()}': its {EMPTY_SLICES} attribute "
                               f"is not readable ({raw[:40]!r}); clear it with "
                               f"logic.setEmptySlices(segmentationNode, [])") from None


def set_empty_slices(segmentation_node, slices, axis: int = 2) -> None:
    import json

    raw = segmentation_node.GetAttribute(EMPTY_SLICES)
    try:
        data = json.loads(raw) if raw else {}
        data = data if isinstance(data, dict) else {}
    except ValueError:
        data = {}
    data[str(axis)] = sorted({int(s) for s in slices})
    segmentation_node.SetAttribute(EMPTY_SLICES, json.dumps(data))


def nodes_to_case(volume_node, segmentation_node, labels: list[Label], unpainted: str = "background",
                  axis: int | None = None) -> Case:
    """A training :class:`Case` from a volume and its segmentation (input nodes are not modified)."""
    case = volume_node_to_case(volume_node)
    case.label = segmentation_to_label(segmentation_node, volume_node, labels, unpainted, axis)
    return case


def label_to_segmentation_node(scene, label: np.ndarray, geometry: Geometry, labels: list[Label],
                               name: str = "MedTransfer segmentation", reference_volume=None, node=None):
    """A new segmentation node with one segment per label (names and colours from ``labels``);
    with ``node`` (a segmentation node of ``scene``), that node's segments are replaced instead.
    ``label`` is in ``reference_volume``'s own grid: the node goes under the volume's transform,
    if it has one, so the segments are shown on the voxels they were predicted for."""
    _, vtk, _ = _mods()
    logic = segmentations_logic(scene)
    if node is not None and node.GetScene() is scene and scene.GetNodeByID(node.GetID()) is node:
        seg_node = node
        seg_node.GetSegmentation().RemoveAllSegments()
    else:
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg_node.CreateDefaultDisplayNodes()
    transform = None
    if reference_volume is not None:
        seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        transform = reference_volume.GetTransformNodeID()
        seg_node.SetAndObserveTransformNodeID(transform)
    with _Scratch(scene):
        tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medtransfer_import")
        tmp.SetAndObserveTransformNodeID(transform)   # the label's frame: the segmentation's
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


def is_image_volume(node) -> bool:
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode")
            and not node.IsA("vtkMRMLLabelMapVolumeNode"))
