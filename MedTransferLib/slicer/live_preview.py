"""The panel's side of the live preview (``train --preview``): which slices the user looks at
(written for the training process to predict first), each preview drawn into one segmentation
node (its segments replaced in place), and the slice the last preview suggests labelling next.
No Qt: the widget passes the Red view's nodes in."""

from __future__ import annotations

from pathlib import Path

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer.apply_files import alive


class LivePreview:
    """One training's preview: its folder, the training volumes (in the order of the exported
    cases) and the labels the segments get."""

    def __init__(self, logic, folder: Path, volumes: list, labels: list, node=None):
        self.logic, self.folder, self.volumes, self.labels = logic, Path(folder), volumes, labels
        self.node = node          # the segmentation node drawn into (an earlier run's, replaced in place)
        self.view = None          # the (case, slices) last reported
        self.suggest = None       # (case, slice) to label next

    def view_of(self, slice_node, volume_id) -> tuple[int, list[int]] | None:
        """``(case, slices)`` a slice view shows: the training volume it displays (``volume_id``;
        the only one when it shows another) and the slice in view with its two neighbours."""
        from MedTransferLib.slicer.bridge import slice_index_in_view

        if slice_node is None:
            return None
        volumes = self.volumes
        case = next((i for i, v in enumerate(volumes) if v.GetID() == volume_id), 0 if len(volumes) == 1 else None)
        if case is None:
            return None
        k = slice_index_in_view(volumes[case], slice_node)
        return case, [s for s in (k - 1, k, k + 1) if s >= 0]

    def report_view(self, seen) -> None:
        if seen is not None and seen != self.view:
            self.logic.writePreviewView(self.folder, *seen)
            self.view = seen

    def show(self, event) -> str | None:
        """Draw a preview event's label map; a problem is a log line, never the training's failure."""
        try:
            volume = self.volumes[int(event["case"])]
            if not alive(volume):
                return None
            self.node = self.logic.showPreview(event["path"], volume, self.labels, self.node)
            if event.get("suggest"):
                self.suggest = (int(event["case"]), int(event["suggest"][0]))
        except Exception as exc:   # a preview is a courtesy: the training goes on
            return f"preview not shown: {exc}"
        return None

    def suggestion(self):
        """``(volume, slice)`` to label next (the most uncertain unlabelled slice of the last
        preview, away from labelled ones), or None."""
        if self.suggest is None or not alive(self.volumes[self.suggest[0]]):
            return None
        return self.volumes[self.suggest[0]], self.suggest[1]

    def show_suggestion(self, slice_node) -> str:
        """Move a slice view to the suggested slice; returns what it did, in words."""
        from MedTransferLib.slicer.bridge import show_slice

        found = self.suggestion()
        if found is None:
            raise MedTransferError("no slice to suggest yet: Train or Update first (the preview suggests one)")
        if slice_node is None:
            raise MedTransferError("no slice view found: show the volume in the Red view")
        volume, k = found
        show_slice(volume, slice_node, k)
        return (f"slice {k} of '{volume.GetName()}': the model is least sure there; paint it (or Mark slice "
                f"empty), then Update")
