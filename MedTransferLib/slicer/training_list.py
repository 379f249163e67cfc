"""The panel's Training data list: pairing segmentations with their volumes, the segments they
share, labelled-slice counts."""

from __future__ import annotations

from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer.mrml import (
    _mods,
    empty_slices,
    labels_from_segments,
    segment_names,
    segmentation_to_label,
    set_empty_slices,
)
from MedTransferLib.slicer.mrml import is_image_volume as _is_image_volume
from MedTransferLib.slicer.views import slice_index_in_view, view_axis


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
                          axis: int | None = None) -> list[dict]:
    """Per pair: how many slices along ``axis`` (None: the one the Red view steps along in that
    volume) carry labels the training will use (with ``unpainted='ignore'`` the slices where any
    chosen segment is painted; with 'background' every slice) and how many voxels each chosen
    segment has."""
    rows = []
    if not pairs or not segment_names_:
        return rows
    labels = labels_from_segments(pairs[0][1], segment_names_)
    for volume, seg in pairs:
        along = view_axis(volume) if axis is None else axis
        label = segmentation_to_label(seg, volume, labels, "ignore", along)
        arr_axis = 2 - along
        painted = int((label != IGNORE).any(axis=tuple(a for a in range(3) if a != arr_axis)).sum())
        total = int(label.shape[arr_axis])
        rows.append({"volume": volume.GetName(), "segmentation": seg.GetName(),
                     "labelled_slices": painted if unpainted == "ignore" else total,
                     "empty_slices": len(empty_slices(seg, along)),
                     "painted_slices": painted, "slices": total,
                     **{f"voxels_{lab.name}": int((label == lab.value).sum()) for lab in labels}})
    return rows


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

    def toggle_empty_in_view(self, index: int, slice_node, axis: int | None = None) -> str:
        """Mark (or unmark) the slice a slice view shows as labelled with nothing on it, for the
        row ``index`` (the only row when none is selected); returns what happened, in words.
        ``axis`` None: the voxel axis the view steps along in that volume."""
        if not 0 <= index < len(self.rows):
            if len(self.rows) != 1:
                raise MedTransferError("select the row of the volume whose slice is empty")
            index = 0
        row = self.rows[index]
        if row["segmentation"] is None:
            raise MedTransferError(f"'{row['volume'].GetName()}' has no segmentation to mark slices in")
        if slice_node is None:
            raise MedTransferError("no slice view found: show the volume in the Red view, on the empty slice")
        volume, seg = row["volume"], row["segmentation"]
        axis = view_axis(volume, slice_node) if axis is None else axis
        k = slice_index_in_view(volume, slice_node, axis)
        n = volume.GetImageData().GetDimensions()[axis] if volume.GetImageData() is not None else 0
        if not 0 <= k < n:
            raise MedTransferError(f"the Red view shows no slice of '{volume.GetName()}' (index {k}); "
                                   f"scroll to the empty slice first")
        marked = set(empty_slices(seg, axis))
        now = k not in marked
        set_empty_slices(seg, marked ^ {k}, axis)
        verb = "marked as labelled, with none of the structures on it" if now else "no longer marked empty"
        return f"slice {k} of '{volume.GetName()}' {verb} ({len(marked ^ {k})} marked empty)"

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

    def painted(self) -> list[tuple]:
        """(volume, segmentation) of every row with a segmentation; empty when there is none
        (Apply works without a training list, unlike Train)."""
        return [(r["volume"], r["segmentation"]) for r in self.rows if r["segmentation"] is not None]

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
                    row["labelled"] = f"{c['labelled_slices']} / {c['slices']}" + (
                        f" ({c['empty_slices']} marked empty)" if c["empty_slices"] and unpainted == "ignore" else "")
                except MedTransferError as exc:   # e.g. a chosen segment it does not have
                    row["labelled"] = f"— ({str(exc).split(';')[0]})"
            out.append(row)
        return out
