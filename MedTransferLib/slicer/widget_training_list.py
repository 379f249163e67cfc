"""The training list's part of the panel widget: add / remove / add all (volume, segmentation)
pairs, choose the segments to learn, and redraw the list with each case's labelled slices.
Mixed into :class:`.widget.PanelWidget`, whose ``ui``, ``panel`` and parameter node it uses."""

from __future__ import annotations

import slicer


class TrainingListSlots:
    def onAddPair(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not add the volume.", waitCursor=True):
            self.panel.pairs.add(p.pairVolume, p.pairSegmentation)
            self.refreshPairs()

    def onRemovePair(self) -> None:
        row = self.ui.pairsTableWidget.currentRow()
        if 0 <= row < len(self.panel.pairs):
            self.panel.pairs.remove(row)
            self.refreshPairs()

    def onAddAllPairs(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not list the segmentations.", waitCursor=True):
            problems = self.panel.pairs.add_all(slicer.mrmlScene)
            self.refreshPairs()
            if problems:
                self.ui.segmentsStatusLabel.text = "\n".join(problems)

    def onMarkEmptySlice(self) -> None:
        """The slice shown in the Red view is labelled, with none of the structures on it (or no
        longer so): stored on the row's segmentation node, used when unpainted slices are unlabelled."""
        with slicer.util.tryWithErrorDisplay("Could not mark the slice.", waitCursor=False):
            red = slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceNode")
            message = self.panel.pairs.toggle_empty_in_view(self.ui.pairsTableWidget.currentRow(), red)
            self.refreshTable()
            self.ui.segmentsStatusLabel.text = message

    def onUnpaintedToggled(self, checked) -> None:
        # labelled-slice counts depend on it; use the signal's value (this slot may run before
        # the parameter node's own binding has stored it)
        self.refreshTable(unpainted="ignore" if checked else "background")

    def onPairCellChanged(self, row, column) -> None:
        if column == 3 and not self._updating and 0 <= row < len(self.panel.pairs):
            self.panel.pairs.set_class(row, self.ui.pairsTableWidget.item(row, column).text())
            self.updateGUI()

    def onSegmentsChanged(self, item=None) -> None:
        if self._updating or self._parameterNode is None:
            return
        names = []
        for i in range(self.ui.segmentsListWidget.count):
            it = self.ui.segmentsListWidget.item(i)
            if it.checkState() == 2:   # Qt.Checked
                names.append(it.text())
        self._parameterNode.segmentsToLearn = names
        self.refreshTable()   # not the list itself: this runs inside the list's own signal

    def refreshPairs(self) -> None:
        """Redraw the training list, the segments every case has (mismatches named) and the
        labelled-slice counts."""
        import qt

        p = self._parameterNode
        common, missing = self.panel.pairs.segments()
        wanted = [n for n in (p.segmentsToLearn if p is not None else []) if n in common]
        if p is not None and not wanted and common:
            wanted = list(common)
        self._updating = True
        try:
            self.ui.segmentsListWidget.clear()
            for name in common:
                item = qt.QListWidgetItem(name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if name in wanted else qt.Qt.Unchecked)
                self.ui.segmentsListWidget.addItem(item)
        finally:
            self._updating = False
        self.refreshTable(wanted)
        self.ui.segmentsStatusLabel.text = "\n".join(
            f"{seg} lacks {', '.join(names)}; rename segments so every case uses the same names"
            for seg, names in missing.items())
        if p is not None and list(p.segmentsToLearn) != wanted:
            p.segmentsToLearn = wanted   # triggers updateGUI
        else:
            self.updateGUI()

    def refreshTable(self, wanted=None, unpainted=None) -> None:
        """Redraw the training list's rows: names, labelled slices / slices, class."""
        import qt

        p = self._parameterNode
        if wanted is None:
            wanted = list(p.segmentsToLearn) if p is not None else []
        if unpainted is None:
            unpainted = "ignore" if (p is None or p.unpaintedSlicesUnlabelled) else "background"
        rows = self.panel.pairs.table(wanted, unpainted)
        self._updating = True
        try:
            table = self.ui.pairsTableWidget
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, key in enumerate(("volume", "segmentation", "labelled", "class")):
                    item = qt.QTableWidgetItem(str(row[key]))
                    if key != "class":
                        item.setFlags(item.flags() & ~qt.Qt.ItemIsEditable)
                    table.setItem(r, c, item)
        finally:
            self._updating = False
