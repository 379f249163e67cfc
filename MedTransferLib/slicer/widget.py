"""The MedTransfer panel: binds :mod:`.panel` (state and decisions, no Qt) to the widgets of
``MedTransfer.ui``. Slots read the parameter node, call the panel, and draw what it returns.

Lifecycle (Slicer calls these through the module's widget class):

- ``setup`` builds the panel; it imports nothing that needs torch, so it works on a fresh
  install and shows what is missing with one *Install* button;
- ``enter`` / ``exit`` bind and unbind the parameter node — a running task goes on and its
  timer keeps polling, so leaving the module does not lose a training's result;
- closing the scene cancels the running task (its whole process tree) and resets the list;
- ``cleanup`` (module unloaded, application exit) stops the timer and the task's tree.
"""

from __future__ import annotations

import slicer
from slicer.util import VTKObservationMixin

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.slicer.panel import (
    DEFAULT_BACKBONES,
    DEFAULT_DEVICES,
    STRATEGY_PRESETS,
    Panel,
    is_set,
)
from MedTransferLib.slicer.widget_training_list import TrainingListSlots

TIMER_MS = 500
# panel action → its button
BUTTONS = {"train": "trainButton", "update": "updateButton", "suggest": "suggestSliceButton", "advise": "adviseButton", "apply": "applyButton", "cancel": "cancelButton",
           "save": "saveModelButton", "export": "exportModelButton", "install": "installButton"}


class PanelWidget(TrainingListSlots, VTKObservationMixin):
    def __init__(self, uiPath: str, logic, parentWidget=None):
        VTKObservationMixin.__init__(self)
        import qt

        self.logic = logic
        self.panel = Panel(logic)
        self.widget = slicer.util.loadUI(uiPath)
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.widget.setMRMLScene(slicer.mrmlScene)
        self._parameterNode = None
        self._guiTag = None
        self._updating = False
        self._entered = False
        self.timer = qt.QTimer()
        self.timer.setInterval(TIMER_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.ui.pairsTableWidget.setHorizontalHeaderLabels(["Volume", "Segmentation", "Labelled slices", "Class"])
        self.ui.strategyComboBox.addItems(STRATEGY_PRESETS)
        self.fillChoices(DEFAULT_BACKBONES, DEFAULT_DEVICES)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        for name, signal, slot in (
                ("addPairButton", "clicked(bool)", self.onAddPair),
                ("removePairButton", "clicked(bool)", self.onRemovePair),
                ("addAllPairsButton", "clicked(bool)", self.onAddAllPairs),
                ("markEmptySliceButton", "clicked(bool)", self.onMarkEmptySlice),
                ("suggestSliceButton", "clicked(bool)", self.onSuggestSlice),
                ("pairsTableWidget", "cellChanged(int,int)", self.onPairCellChanged),
                ("segmentsListWidget", "itemChanged(QListWidgetItem*)", self.onSegmentsChanged),
                ("backboneComboBox", "currentIndexChanged(int)", self.onBackboneChanged),
                ("strategyComboBox", "currentTextChanged(QString)", self.onStrategyChanged),
                ("deviceComboBox", "currentIndexChanged(int)", self.onDeviceChanged),
                ("outputFolderPathLineEdit", "currentPathChanged(QString)", self.onOutputFolderChanged),
                ("modelFolderPathLineEdit", "currentPathChanged(QString)", self.onModelFolderChanged),
                ("unpaintedCheckBox", "toggled(bool)", self.onUnpaintedToggled),
                ("applyVolumesSelector", "checkedNodesChanged()", self.updateGUI),
                ("adviseButton", "clicked(bool)", self.onAdvise),
                ("trainButton", "clicked(bool)", self.onTrain),
                ("updateButton", "clicked(bool)", self.onUpdate),
                ("cancelButton", "clicked(bool)", self.onCancel),
                ("applyButton", "clicked(bool)", self.onApply),
                ("loadModelButton", "clicked(bool)", self.onLoadModel),
                ("saveModelButton", "clicked(bool)", self.onSaveModel),
                ("exportModelButton", "clicked(bool)", self.onExportModel),
                ("installButton", "clicked(bool)", self.onInstall),
                ("installFromFolderButton", "clicked(bool)", self.onInstallFromFolder),
                ("doctorButton", "clicked(bool)", self.onDoctor)):
            getattr(self.ui, name).connect(signal, slot)
        self._tips = {name: getattr(self.ui, name).toolTip for name in BUTTONS.values()}
        self.refreshDependencies()

    # -- lifecycle -----------------------------------------------------------------------------------
    def enter(self) -> None:
        self._entered = True
        self.setParameterNode(self.logic.getParameterNode())
        self.refreshDependencies()
        self.panel.prepare_spare()

    def exit(self) -> None:
        self._entered = False
        self.setParameterNode(None)   # the timer goes on: a running task still finishes

    def cleanup(self) -> None:
        self.timer.stop()
        self.panel.cleanup()
        self.setParameterNode(None)
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.scene_closing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.refreshPairs()
        if self._entered:
            self.setParameterNode(self.logic.getParameterNode())

    def onNodeRemoved(self, caller, event) -> None:
        pairs = self.panel.pairs
        if len(pairs):
            before = len(pairs)
            pairs.prune(slicer.mrmlScene)
            if len(pairs) != before:   # only when a listed node went (counting is not free)
                self.refreshPairs()

    def setParameterNode(self, node) -> None:
        import vtk

        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._guiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = node
        if node is not None:
            if not is_set(node.outputFolder):
                from MedTransferLib.slicer.panel import default_runs_folder

                node.outputFolder = str(default_runs_folder())
            self._guiTag = node.connectGui(self.ui)
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def currentParameterNode(self):
        """Where a finishing task writes its result: the bound node, else the scene's."""
        if self._parameterNode is not None:
            return self._parameterNode
        return self.logic.getParameterNode() if slicer.mrmlScene is not None else None

    # -- drawing ---------------------------------------------------------------------------------------
    def fillChoices(self, backbones, devices) -> None:
        self._updating = True
        try:
            self.ui.backboneComboBox.clear()
            for b in backbones:
                self.ui.backboneComboBox.addItem(f"{b['name']} — {b['modes']}; {b['weights']}", b["name"])
            self.ui.deviceComboBox.clear()
            for d in devices:
                self.ui.deviceComboBox.addItem(d["label"], d["key"])
        finally:
            self._updating = False
        self.updateGUI()

    def refreshDependencies(self) -> None:
        self.ui.setupStatusLabel.text = self.logic.dependencyStatus()
        self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None or self._updating:
            return
        self._updating = True
        try:
            index = self.ui.backboneComboBox.findData(p.backbone)
            if index >= 0:
                self.ui.backboneComboBox.currentIndex = index
            if self.ui.strategyComboBox.currentText != p.strategy:
                self.ui.strategyComboBox.setEditText(p.strategy)
            index = self.ui.deviceComboBox.findData(p.device)
            if index >= 0:
                self.ui.deviceComboBox.currentIndex = index
            if self.ui.outputFolderPathLineEdit.currentPath != p.outputFolder:
                self.ui.outputFolderPathLineEdit.currentPath = p.outputFolder
            if self.ui.modelFolderPathLineEdit.currentPath != p.modelFolder:
                self.ui.modelFolderPathLineEdit.currentPath = p.modelFolder
            classification = p.task == "classification"
            self.ui.pairsTableWidget.setColumnHidden(3, not classification)
            self.ui.segmentsListWidget.enabled = not classification
        finally:
            self._updating = False
        controls = self.panel.controls(p, self.ui.applyVolumesSelector.checkedNodes(), self.logic.missingDependencies())
        for name, button in BUTTONS.items():
            enabled, why = controls[name]
            widget = getattr(self.ui, button)
            widget.enabled = enabled
            widget.toolTip = self._tips[button] + (f"\n\nNot now: {why}" if why else "")
        self.ui.adviceLabel.text = self.panel.advice

    # -- parameters the widget fills at run time ------------------------------------------------------
    def onBackboneChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updating and index >= 0:
            self._parameterNode.backbone = self.ui.backboneComboBox.itemData(index)

    def onStrategyChanged(self, text) -> None:
        if self._parameterNode is not None and not self._updating and text:
            self._parameterNode.strategy = text

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updating and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onOutputFolderChanged(self, path) -> None:
        if self._parameterNode is not None and not self._updating:
            self._parameterNode.outputFolder = path

    def onModelFolderChanged(self, path) -> None:
        if self._parameterNode is not None and not self._updating:
            self._parameterNode.modelFolder = path
            self.showManifest()

    # -- background tasks --------------------------------------------------------------------------------
    def _started(self, task) -> None:
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = self.panel.running_text(task)
        self.timer.start()
        self.updateGUI()

    def onTrain(self) -> None:
        """Train in a child process (never in Slicer's GUI thread); the timer polls its progress."""
        with slicer.util.tryWithErrorDisplay("Training could not start.", waitCursor=True):
            self._started(self.panel.start_train(self._parameterNode, view=self.viewed))
            self.ui.statusLabel.text = f"Training into {self.panel.last_run}"

    def onUpdate(self) -> None:
        """Continue the current model on the corrected or added slices; the job keeps within a minute."""
        with slicer.util.tryWithErrorDisplay("The update could not start.", waitCursor=True):
            self._started(self.panel.start_update(self._parameterNode, view=self.viewed))

    def onSuggestSlice(self) -> None:
        with slicer.util.tryWithErrorDisplay("No slice to suggest.", waitCursor=False):
            red = slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceNode")
            if self.panel.preview is None:
                raise MedTransferError("no slice to suggest yet: Train or Update first (the preview suggests one)")
            self.ui.segmentsStatusLabel.text = self.panel.preview.show_suggestion(red)

    def viewed(self):
        """The training case and slices the Red view shows (for the live preview)."""
        red = slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceNode")
        composite = slicer.mrmlScene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
        if self.panel.preview is None:
            return None
        return self.panel.preview.view_of(red, composite.GetBackgroundVolumeID() if composite is not None else None)

    def onAdvise(self) -> None:
        with slicer.util.tryWithErrorDisplay("The advisor could not start.", waitCursor=True):
            self._started(self.panel.start_advise(self._parameterNode))

    def onApply(self) -> None:
        with slicer.util.tryWithErrorDisplay("Prediction could not start.", waitCursor=True):
            self._started(self.panel.start_apply(self._parameterNode, self.ui.applyVolumesSelector.checkedNodes()))

    def onDoctor(self) -> None:
        with slicer.util.tryWithErrorDisplay("The setup check could not start.", waitCursor=True):
            p = self.currentParameterNode()
            self._started(self.panel.start_doctor(p.outputFolder if p is not None else ""))

    def onCancel(self) -> None:
        text = self.panel.cancel()
        if text:
            self.ui.statusLabel.text = text

    def onTimer(self) -> None:
        tick = self.panel.tick(self.currentParameterNode, self.viewed)
        for line in tick.lines:
            self.ui.logTextEdit.appendPlainText(line)
        if tick.progress is not None:
            self.ui.progressBar.value = tick.progress
        if tick.status is not None:
            self.ui.statusLabel.text = tick.status
        if not tick.ended:
            return
        self.timer.stop()
        task = self.panel.task
        if task.kind == "doctor" and task.state == "finished":
            setup = self.panel.setup
            if setup.get("backbones") or setup.get("devices"):
                self.fillChoices(setup.get("backbones") or DEFAULT_BACKBONES, setup.get("devices") or DEFAULT_DEVICES)
        if task.kind in ("train", "update") and task.state == "finished":
            self.showManifest()
        if tick.error:
            slicer.util.errorDisplay(tick.error)
        self.updateGUI()

    # -- setup ---------------------------------------------------------------------------------------------
    def onInstall(self) -> None:
        with slicer.util.tryWithErrorDisplay("Installation failed.", waitCursor=False):
            try:
                installed = self.logic.ensureDependencies(askUser=True, cpuOnly=self.ui.cpuOnlyCheckBox.checked)
            finally:
                self.refreshDependencies()
            self.ui.statusLabel.text = ("Dependencies installed." if installed
                                        else "Installation declined: nothing was installed.")

    def onInstallFromFolder(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, "Choose a folder made by 'medtransfer wheelhouse'")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Installation from the folder failed.", waitCursor=False):
            try:
                copied = self.logic.installFromFolder(folder, askUser=True)
            finally:
                self.refreshDependencies()
            self.ui.statusLabel.text = (f"Installed from {folder}" + (f"; {len(copied)} weight file(s) copied"
                                                                       if copied else ""))

    # -- models ----------------------------------------------------------------------------------------------
    def showManifest(self) -> None:
        p = self.currentParameterNode()
        if p is None or not is_set(p.modelFolder):
            self.ui.manifestTextEdit.setPlainText("")
            return
        try:
            self.ui.manifestTextEdit.setPlainText(self.logic.describeModel(p.modelFolder))
        except (MedTransferError, OSError) as exc:   # shown, not raised: the user is only browsing
            self.ui.manifestTextEdit.setPlainText(str(exc))

    def onLoadModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, "Choose a MedTransfer model folder")
        if folder and self._parameterNode is not None:
            self._parameterNode.modelFolder = folder
            self.showManifest()

    def onSaveModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, "Save a copy of the model into…")
        if folder:
            with slicer.util.tryWithErrorDisplay("The model could not be saved.", waitCursor=True):
                dest = self.logic.saveModel(self._parameterNode.modelFolder, folder)
                self.ui.statusLabel.text = f"Model saved to {dest}"

    def onExportModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, "Export TorchScript, ONNX and labels.json into…")
        if folder:
            with slicer.util.tryWithErrorDisplay("The model could not be exported.", waitCursor=True):
                self._started(self.panel.start_export(self._parameterNode.modelFolder, folder))
