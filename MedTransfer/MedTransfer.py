"""MedTransfer — Slicer scripted module: a thin GUI and Logic over the MedTransferLib engine.

The Logic holds no Qt state and is the Python-console API::

    logic = slicer.util.getModuleLogic("MedTransfer")
    run = logic.train([(volumeNode, segmentationNode)], ["tumor"], "/tmp/run", epochs=5)
    [(segNode, volumesTable, metricsTable)] = logic.predict([volumeNode], run.package, segmentationNode)

Every MRML operation goes through MedTransferLib.slicer_bridge (tested against the real MRML
classes of slicer-core); the widget only draws and forwards. What the widget keeps in memory
rather than in the parameter node: the training list (volume, segmentation, class rows) —
its nodes can be re-listed with "Add all".
"""

import logging
import os
import pathlib
import sys
from typing import Annotated

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# MedTransferLib is installed beside this module (see CMakeLists.txt); in a source checkout it
# sits one folder up.
_here = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_here, os.path.dirname(_here)):
    if os.path.isdir(os.path.join(_candidate, "MedTransferLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)


class MedTransfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedTransfer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedTransfer developers"]
        self.parent.helpText = _(
            "Fine-tune a pretrained network (transfer learning, 2.5D or 3D) on your own labelled volumes "
            "and apply it to new ones. Label a few slices with the Segment Editor, list the volume and "
            "segmentation under Training data (or press Add all), press Train, then Apply. "
            "See the README for the console API and the command line.")
        self.parent.acknowledgementText = _(
            "Uses MONAI, PyTorch, torchvision and SimpleITK. Sample data: Colin27 and the AAL atlas.")


STRATEGY_PRESETS = ["auto", "finetune", "frozen", "partial:2", "gradual", "discriminative",
                    "gradual+discriminative", "bn-only", "adabn"]

# Parameters the widget synchronises by hand, because their widget is filled at run time (the
# backbone registry, the devices present, the strategies the advisor can name, the segments of
# the listed segmentations) and parameterNodeWrapper only binds a QComboBox to a fixed Choice.
MANUALLY_SYNCED = ("backbone", "strategy", "device", "segmentsToLearn")


@parameterNodeWrapper
class MedTransferParameterNode:
    """Typed GUI state. Results are nodes in the scene, never stored here."""

    pairVolume: vtkMRMLScalarVolumeNode
    pairSegmentation: vtkMRMLSegmentationNode
    unpaintedSlicesUnlabelled: bool = True
    segmentsToLearn: list[str]
    task: Annotated[str, Choice(["segmentation", "classification"])] = "segmentation"
    mode: Annotated[str, Choice(["2.5d", "3d"])] = "2.5d"
    backbone: str = "efficientnet-lite0"
    strategy: str = "auto"
    epochs: Annotated[int, WithinRange(1, 1000)] = 16
    learningRate: float = 2e-3
    device: str = "auto"
    outputFolder: pathlib.Path
    referenceSegmentation: vtkMRMLSegmentationNode
    modelFolder: pathlib.Path


class MedTransferWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._curve = (None, None)
        self._pairs = None
        self._updating = False

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedTransfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedTransferLogic()
        self._pairs = self.logic.newTrainingList()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)

        self.ui.pairsTableWidget.setHorizontalHeaderLabels([_("Volume"), _("Segmentation"), _("Labelled slices"), _("Class")])
        self.ui.strategyComboBox.addItems(STRATEGY_PRESETS)
        self._fillEngineChoices()

        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.addAllPairsButton.connect("clicked(bool)", self.onAddAllPairs)
        self.ui.pairsTableWidget.connect("cellChanged(int,int)", self.onPairCellChanged)
        self.ui.segmentsListWidget.connect("itemChanged(QListWidgetItem*)", self.onSegmentsChanged)
        self.ui.backboneComboBox.connect("currentIndexChanged(int)", self.onBackboneChanged)
        self.ui.strategyComboBox.connect("currentTextChanged(QString)", self.onStrategyChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.adviseButton.connect("clicked(bool)", self.onAdviseButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.saveModelButton.connect("clicked(bool)", self.onSaveModel)
        self.ui.exportModelButton.connect("clicked(bool)", self.onExportModel)
        self.ui.unpaintedCheckBox.connect("toggled(bool)", self.onUnpaintedToggled)
        self.ui.applyVolumesSelector.connect("checkedNodesChanged()", self._updateGUI)
        self.initializeParameterNode()

    def _fillEngineChoices(self) -> None:
        """Backbones (with where their weights come from) and devices (GPU name and memory).
        Needs torch: before the dependencies are installed only the defaults are listed."""
        self.ui.backboneComboBox.clear()
        self.ui.deviceComboBox.clear()
        try:
            backbones, devices = self.logic.backboneChoices(), self.logic.deviceChoices()
        except ImportError:
            backbones = [{"name": "efficientnet-lite0", "modes": "2.5d, 3d (inflated)", "weights": "imagenet"}]
            devices = [{"key": "auto", "label": _("auto (install dependencies to see devices)")}]
        for b in backbones:
            self.ui.backboneComboBox.addItem(f"{b['name']} — {b['modes']}; {b['weights']}", b["name"])
        for d in devices:
            self.ui.deviceComboBox.addItem(d["label"], d["key"])

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None and self._job.state == "running":
            self._job.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._pairs = self.logic.newTrainingList()
        self._refreshPairs()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onNodeRemoved(self, caller, event) -> None:
        if self._pairs is not None and len(self._pairs):
            before = len(self._pairs)
            self._pairs.prune(slicer.mrmlScene)
            if len(self._pairs) != before:   # only when a listed node went (counting is not free)
                self._refreshPairs()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    # -- parameter node ↔ the hand-synchronised widgets --------------------------------------
    @staticmethod
    def _isSet(path) -> bool:
        return path is not None and str(path) not in ("", ".")

    def _updateGUI(self, caller=None, event=None) -> None:
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
            classification = p.task == "classification"
            self.ui.pairsTableWidget.setColumnHidden(3, not classification)
            self.ui.segmentsListWidget.enabled = not classification
        finally:
            self._updating = False
        running = self._job is not None and self._job.state == "running"
        self.ui.trainButton.enabled = bool(len(self._pairs) and self._isSet(p.outputFolder) and not running
                                           and (classification or p.segmentsToLearn))
        self.ui.adviseButton.enabled = bool(len(self._pairs) and p.segmentsToLearn and not classification)
        self.ui.applyButton.enabled = bool(self.ui.applyVolumesSelector.checkedNodes() and self._isSet(p.modelFolder))
        self.ui.saveModelButton.enabled = self._isSet(p.modelFolder)
        self.ui.exportModelButton.enabled = self._isSet(p.modelFolder)

    def onBackboneChanged(self, index) -> None:
        if self._parameterNode and not self._updating and index >= 0:
            self._parameterNode.backbone = self.ui.backboneComboBox.itemData(index)

    def onStrategyChanged(self, text) -> None:
        if self._parameterNode and not self._updating and text:
            self._parameterNode.strategy = text

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode and not self._updating and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    # -- training data ------------------------------------------------------------------------
    def onAddPair(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not add the volume."), waitCursor=True):
            self._pairs.add(p.pairVolume, p.pairSegmentation)
            self._refreshPairs()

    def onRemovePair(self) -> None:
        row = self.ui.pairsTableWidget.currentRow()
        if 0 <= row < len(self._pairs):
            self._pairs.remove(row)
            self._refreshPairs()

    def onAddAllPairs(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not list the segmentations."), waitCursor=True):
            problems = self._pairs.add_all(slicer.mrmlScene)
            self._refreshPairs()
            if problems:
                self.ui.segmentsStatusLabel.text = "\n".join(problems)

    def onUnpaintedToggled(self, checked) -> None:
        # labelled-slice counts depend on it; use the signal's value (this slot may run before
        # the parameter node's own binding has stored it)
        self._refreshTable(unpainted="ignore" if checked else "background")

    def onPairCellChanged(self, row, column) -> None:
        if column == 3 and not self._updating and 0 <= row < len(self._pairs):
            self._pairs.set_class(row, self.ui.pairsTableWidget.item(row, column).text())
            self._updateGUI()

    def onSegmentsChanged(self, item=None) -> None:
        if self._updating or self._parameterNode is None:
            return
        names = []
        for i in range(self.ui.segmentsListWidget.count):
            it = self.ui.segmentsListWidget.item(i)
            if it.checkState() == 2:   # Qt.Checked
                names.append(it.text())
        self._parameterNode.segmentsToLearn = names
        self._refreshTable()   # not the list itself: this runs inside the list's own signal

    def _refreshPairs(self) -> None:
        """Redraw the training list, the segments every case has (mismatches named) and the
        labelled-slice counts."""
        import qt

        p = self._parameterNode
        common, missing = self._pairs.segments()
        wanted = [n for n in (p.segmentsToLearn if p else []) if n in common]
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
        self._refreshTable(wanted)
        self.ui.segmentsStatusLabel.text = "\n".join(
            _("{seg} lacks {names}; rename segments so every case uses the same names").format(
                seg=seg, names=", ".join(names)) for seg, names in missing.items())
        if p is not None and p.segmentsToLearn != wanted:
            p.segmentsToLearn = wanted   # triggers _updateGUI
        else:
            self._updateGUI()

    def _refreshTable(self, wanted=None, unpainted=None) -> None:
        """Redraw the training list's rows: names, labelled slices / slices, class."""
        import qt

        p = self._parameterNode
        if wanted is None:
            wanted = list(p.segmentsToLearn) if p is not None else []
        if unpainted is None:
            unpainted = "ignore" if (p is None or p.unpaintedSlicesUnlabelled) else "background"
        rows = self._pairs.table(wanted, unpainted)
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

    # -- model --------------------------------------------------------------------------------
    def onAdviseButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The advisor could not run."), waitCursor=True):
            advice = self.logic.advise(self._pairs.pairs(), p.segmentsToLearn, p.unpaintedSlicesUnlabelled,
                                       backbone=p.backbone, mode=p.mode, epochs=p.epochs, lr=p.learningRate)
            p.strategy = advice.strategy
            self.ui.adviceLabel.text = _("{strategy}: {reason}").format(strategy=advice.strategy, reason=advice.reason)

    # -- train --------------------------------------------------------------------------------
    def onTrainButton(self) -> None:
        """Train in a child process (never in Slicer's GUI thread); a timer polls its progress."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            config = dict(mode=p.mode, backbone=p.backbone, strategy=p.strategy, epochs=p.epochs,
                          lr=p.learningRate, device=p.device)
            if p.task == "classification":
                rows = self._pairs.rows
                self._job = self.logic.trainClassifierInBackground(
                    [r["volume"] for r in rows], [r["class"] for r in rows], str(p.outputFolder), **config)
            else:
                self._job = self.logic.trainInBackground(
                    self._pairs.pairs(), p.segmentsToLearn, str(p.outputFolder),
                    unpaintedSlicesUnlabelled=p.unpaintedSlicesUnlabelled, **config)
            self._curve = (None, None)
            self.ui.logTextEdit.clear()
            self.ui.cancelButton.enabled = True
            self.ui.trainProgressBar.value = 0
            self._updateGUI()
            import qt  # the widget's timer; the Logic never touches Qt

            self._timer = qt.QTimer()
            self._timer.setInterval(500)
            self._timer.connect("timeout()", self._onTrainTimer)
            self._timer.start()

    def _onTrainTimer(self) -> None:
        from MedTransferLib.runner import event_text

        job = self._job
        for event in job.poll():
            line = event_text(event)
            if line:
                self.ui.logTextEdit.appendPlainText(line)
        prog = job.progress
        self.ui.trainProgressBar.value = int(100 * prog.fraction)
        if prog.step:
            status = _("Epoch {e}, step {s}/{t}, loss {l:.3f}, about {eta:.0f} s left").format(
                e=prog.epoch, s=prog.step, t=prog.steps_total, l=prog.loss or 0.0, eta=prog.eta_s or 0.0)
            if prog.validation:
                status += _("; validation {name} {value:.3f}").format(
                    name=prog.validation[0].replace("val_", "").replace("_", " "), value=prog.validation[1])
            self.ui.statusLabel.text = status
        if prog.history:
            self._curve = self.logic.learningCurve(prog.history, *self._curve)
        if job.state == "running":
            return
        self._timer.stop()
        for line in job.log[-20:]:
            self.ui.logTextEdit.appendPlainText(line)
        self.ui.cancelButton.enabled = False
        if job.state == "finished":
            self._parameterNode.modelFolder = pathlib.Path(job.result["package"])
            self.ui.statusLabel.text = _("Model written to {path}").format(path=job.result["package"])
            self._showManifest()
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Training cancelled; no partial model was written.")
        else:
            self.ui.statusLabel.text = _("Training failed.")
            slicer.util.errorDisplay(_("Training failed: {message}").format(message=job.error))
        self._updateGUI()

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling…")

    # -- apply --------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        p = self._parameterNode
        volumes = list(self.ui.applyVolumesSelector.checkedNodes())
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            if self.logic.modelTask(str(p.modelFolder)) == "classification":
                table = self.logic.classify(volumes, str(p.modelFolder), device=p.device)
                self.ui.statusLabel.text = _("Created {table}").format(table=table.GetName())
                return
            results = self.logic.predict(volumes, str(p.modelFolder), p.referenceSegmentation, device=p.device)
            notes = []
            for seg, table, _metrics in results:
                rows = self.logic.tableRows(table)
                if rows and rows[0].get("ood") not in (None, "in range", "unknown"):
                    notes.append(_("{name}: {verdict} (out-of-distribution score {score:.2f}) — check it").format(
                        name=seg.GetName(), verdict=rows[0]["ood"], score=rows[0]["ood_score"]))
                if table.GetAttribute("MedTransfer.Warnings"):
                    notes.append(table.GetAttribute("MedTransfer.Warnings"))
            self.ui.statusLabel.text = "\n".join([_("Created {names}").format(
                names=", ".join(seg.GetName() for seg, _table, _metrics in results))] + notes)

    # -- models -------------------------------------------------------------------------------
    def _showManifest(self) -> None:
        p = self._parameterNode
        try:
            self.ui.manifestTextEdit.setPlainText(self.logic.describeModel(str(p.modelFolder)))
        except Exception as exc:   # shown, not raised: the user is only browsing
            self.ui.manifestTextEdit.setPlainText(str(exc))

    def onLoadModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, _("Choose a MedTransfer model folder"))
        if folder:
            self._parameterNode.modelFolder = pathlib.Path(folder)
            self._showManifest()

    def onSaveModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, _("Save a copy of the model into…"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("The model could not be saved."), waitCursor=True):
                dest = self.logic.saveModel(str(self._parameterNode.modelFolder), folder)
                self.ui.statusLabel.text = _("Model saved to {path}").format(path=dest)

    def onExportModel(self) -> None:
        import qt

        folder = qt.QFileDialog.getExistingDirectory(None, _("Export TorchScript, ONNX and labels.json into…"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("The model could not be exported."), waitCursor=True):
                paths = self.logic.exportModel(str(self._parameterNode.modelFolder), folder)
                self.ui.statusLabel.text = _("Exported {files}").format(files=", ".join(str(v) for v in paths.values()))


class MedTransferLogic(ScriptedLoadableModuleLogic):
    """Console API; every MRML operation goes through MedTransferLib.slicer_bridge, which is
    tested against real MRML classes. Holds no Qt state."""

    # installed with the extension beside this file; mirrors pyproject.toml (a test checks)
    REQUIREMENTS_FILE = os.path.join(_here, "Resources", "requirements.txt")
    # provided by Slicer itself or its PyTorch extension: never pip-installed over
    PROVIDED_BY_SLICER = ["torch", "torchvision", "SimpleITK", "numpy"]

    def __init__(self, jobFactory=None) -> None:
        """``jobFactory(args, python=..., env=...)`` makes the child-process runner (default
        ``MedTransferLib.runner.Job``); passed in, as in SlicerNNUnet, so the Logic runs and is
        tested without Qt."""
        ScriptedLoadableModuleLogic.__init__(self)
        self.jobFactory = jobFactory

    def ensureDependencies(self, askUser=True) -> bool:
        """Install what the engine needs on first use (never at import time).

        PyTorch comes from the PyTorch extension (PyTorchUtils asks before installing several GB
        and offers a CPU-only build); the rest from PyPI as listed in Resources/requirements.txt,
        through ``slicer.pydeps.pip_ensure`` (Slicer ≥ 5.11) or ``slicer.util.pip_install``.
        Returns False if the user declined.
        """
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            import PyTorchUtils

            backend = None   # PyTorchUtils picks the CUDA build that fits the GPU it finds
            if askUser:
                answer = slicer.util.confirmYesNoDisplay(
                    _("MedTransfer needs PyTorch (a download of up to several GB). Install the GPU build "
                      "that fits this computer (Yes), or the smaller CPU-only build (No)?"))
                backend = None if answer else "cpu"
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=askUser, forceComputationBackend=backend) is None:
                return False
        try:
            import slicer.pydeps as pydeps
        except ImportError:
            pydeps = None
        if pydeps is not None:
            requirements = pydeps.load_requirements(self.REQUIREMENTS_FILE)
            if pydeps.pip_check(requirements):
                return True
            missing = [str(r) for r in requirements if not pydeps.pip_check(r)]
        else:
            missing = self._missingRequirements()
            if not missing:
                return True
        if askUser and not slicer.util.confirmOkCancelDisplay(
                _("MedTransfer needs these Python packages: {packages}. Install them now?").format(
                    packages=", ".join(missing))):
            return False
        if pydeps is not None:
            pydeps.pip_ensure(requirements, skip_packages=self.PROVIDED_BY_SLICER, requester="MedTransfer")
        else:
            slicer.util.pip_install(" ".join(missing))
        return True

    def _missingRequirements(self) -> list:
        """Requirements whose distribution is absent (older Slicer without slicer.pydeps)."""
        import importlib.metadata
        import re

        missing = []
        with open(self.REQUIREMENTS_FILE, encoding="utf-8") as f:
            for line in f:
                line = line.split("#")[0].strip()
                if not line:
                    continue
                name = re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0]
                try:
                    importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    missing.append(line)
        return missing

    def _engine(self):
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        from MedTransferLib import slicer_bridge

        return slicer_bridge

    def getParameterNode(self):
        return MedTransferParameterNode(super().getParameterNode())

    @staticmethod
    def newTrainingList():
        """The Training data list (plain Python over nodes: add, add_all, remove, pairs)."""
        from MedTransferLib.slicer_bridge import TrainingPairs

        return TrainingPairs()

    @staticmethod
    def segmentNames(segmentationNode):
        from MedTransferLib import slicer_bridge

        return slicer_bridge.segment_names(segmentationNode)

    @staticmethod
    def tableRows(tableNode):
        from MedTransferLib import slicer_bridge

        return slicer_bridge.table_node_rows(tableNode)

    @staticmethod
    def backboneChoices():
        from MedTransferLib.backbones import catalogue

        return catalogue(parameters=False)

    @staticmethod
    def deviceChoices():
        from MedTransferLib.device import available_devices

        return available_devices()

    def train(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True, **config):
        """Train on [(volumeNode, segmentationNode), ...]; returns a TrainResult (``.package``).

        Runs in the calling thread: use it from the console or scripts. (The background,
        cancellable run with a learning curve is ``trainInBackground``.)
        """
        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        return self._engine().train_from_nodes(pairs, list(segmentNames), outputFolder, unpainted, **config)

    def predict(self, volumeNodes, modelFolder, referenceSegmentation=None, device="auto"):
        """Segment one volume node or a list of them. For each: a new segmentation node (training
        segment names, colours, terminology), a table of per-segment volumes (mL) and, with a
        reference segmentation, a Dice/HD95 table — placed with the volume in the subject
        hierarchy. Returns a tuple for one node, a list of tuples for a list."""
        bridge = self._engine()
        single = not isinstance(volumeNodes, (list, tuple))
        nodes = [volumeNodes] if single else list(volumeNodes)
        if not nodes:
            raise ValueError(_("Choose at least one volume to apply the model to."))
        from MedTransferLib.package import ModelPackage

        package = ModelPackage.load(modelFolder)   # verified once for all volumes
        results = [bridge.predict_to_nodes(n, package, referenceSegmentation, device) for n in nodes]
        return results[0] if single else results

    def classify(self, volumeNodes, modelFolder, device="auto", prior=None):
        """Classify volumes with a classification model; returns a table node (a row per volume,
        calibrated class probabilities in columns) placed with the first volume. ``prior`` ("em",
        "bbse" or "known:a=0.1,b=0.9") corrects for these volumes' class prevalence."""
        return self._engine().classify_to_table(list(volumeNodes), modelFolder, device, prior=prior)

    def audit(self, volumeNode, segmentationNodes, segmentNames):
        """Label audit: agreement table of two or more segmentations of ``volumeNode``."""
        return self._engine().audit_to_table(volumeNode, list(segmentationNodes), list(segmentNames))

    def _startJob(self, datalist, outputFolder, python, config):
        args = ["train", "--datalist", str(datalist), "--out", str(outputFolder)]
        for key, value in config.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return self._runCli(args, python)

    def _runCli(self, args, python=None):
        """The CLI in a child process (Slicer's PythonSlicer), with MedTransferLib importable."""
        import shutil

        import MedTransferLib
        from MedTransferLib.runner import Job

        libDir = os.path.dirname(os.path.dirname(MedTransferLib.__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = libDir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        python = python or shutil.which("PythonSlicer") or sys.executable
        return (self.jobFactory or Job)(args, python=python, env=env).start()

    def trainInBackground(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True,
                          python=None, **config):
        """Start segmentation training in a child process and return its runner.Job (poll it
        from a timer).

        The nodes are exported to ``outputFolder/data`` (image, label map, dataset.json); the
        child is Slicer's PythonSlicer running the same CLI as terminals. ``python`` replaces the
        interpreter (the runner is passed in, as in SlicerNNUnet, so it works without Qt).
        """
        bridge = self._engine()
        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        datalist = bridge.export_training_data(pairs, list(segmentNames), os.path.join(outputFolder, "data"), unpainted)
        return self._startJob(datalist, outputFolder, python, config)

    def resumeInBackground(self, outputFolder, python=None):
        """Continue an interrupted (cancelled, crashed) training in ``outputFolder`` from its last
        complete epoch, in a child process; returns the runner.Job."""
        self._engine()
        return self._runCli(["train", "--resume", str(outputFolder)], python)

    def trainClassifierInBackground(self, volumeNodes, classes, outputFolder, python=None, **config):
        """Start classification training (one class name per volume) in a child process."""
        datalist = self._engine().export_classification_data(volumeNodes, classes, os.path.join(outputFolder, "data"))
        return self._startJob(datalist, outputFolder, python, config)

    def learningCurve(self, history, table=None, chart=None):
        """Create or update the learning-curve table and plot chart nodes; returns (table, chart)."""
        from MedTransferLib import slicer_bridge

        return slicer_bridge.learning_curve_nodes(slicer.mrmlScene, history, table, chart)

    def advise(self, pairs, segmentNames, unpaintedSlicesUnlabelled=True, **kw):
        """Measure data size and domain distance of [(volumeNode, segmentationNode), ...] and
        recommend a strategy (nothing is trained); returns an Advice (``.strategy``, ``.reason``)."""
        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        return self._engine().advise_from_nodes(pairs, list(segmentNames), unpainted, **kw)

    # -- model packages ---------------------------------------------------------------------------
    def modelTask(self, modelFolder) -> str:
        self._engine()
        from MedTransferLib.package import ModelPackage

        return ModelPackage.load(modelFolder).task

    def describeModel(self, modelFolder) -> str:
        """The manifest in a few lines: structures/classes, backbone, strategy (and why), data, score."""
        self._engine()
        from MedTransferLib.package import ModelPackage

        return ModelPackage.load(modelFolder).describe()

    def saveModel(self, modelFolder, destinationFolder):
        """Copy a model package into ``destinationFolder/<its name>`` (verified, atomic); returns the path."""
        self._engine()
        from MedTransferLib.package import ModelPackage

        pkg = ModelPackage.load(modelFolder)
        name = pkg.path.parent.name if pkg.path.name == "model" else pkg.path.name
        return str(pkg.copy_to(os.path.join(destinationFolder, name)).path)

    def exportModel(self, modelFolder, outputFolder, formats=("torchscript", "onnx"), askUser=True):
        """TorchScript, ONNX (installing the onnx package after asking) and labels.json."""
        import importlib.util

        self._engine()
        formats = list(formats)
        if "onnx" in formats and importlib.util.find_spec("onnx") is None:
            if askUser and slicer.util.confirmYesNoDisplay(
                    _("ONNX export needs the 'onnx' package (about 20 MB). Install it now? "
                      "(No: export TorchScript only.)")):
                slicer.util.pip_install("onnx")
            else:
                formats.remove("onnx")
        from MedTransferLib.export import export_package

        return export_package(modelFolder, outputFolder, formats or ["torchscript"])


class MedTransferTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer (not runnable without the application): label a structure on
    MRHead by thresholding a few slices, pair it with "Add all", train a tiny model for a few
    steps in the background child process, apply it, and check the nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_trains_in_background_and_applies_on_mrhead()

    def test_trains_in_background_and_applies_on_mrhead(self):
        import tempfile

        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        arr = slicer.util.arrayFromVolume(volume).copy()
        mask = np.zeros(arr.shape, np.uint8)
        bright = arr > np.percentile(arr, 90)
        for k in range(0, arr.shape[0], 10):
            mask[k][bright[k]] = 1
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bright")
        slicer.util.updateVolumeFromArray(labelmap, mask)
        labelmap.CopyOrientation(volume)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, seg)
        seg.GetSegmentation().GetNthSegment(0).SetName("bright")

        logic = MedTransferLogic()
        pairs = logic.newTrainingList()
        self.assertEqual(pairs.add_all(slicer.mrmlScene), [])
        self.assertEqual(pairs.pairs(), [(volume, seg)])
        self.assertEqual(pairs.segments(), (["bright"], {}))
        out = tempfile.mkdtemp()
        job = logic.trainInBackground(pairs.pairs(), ["bright"], out, epochs=1, steps_per_epoch=2,
                                      weights="none", strategy="finetune", batch_size=2)
        self.assertEqual(job.wait(timeout=600), "finished", job.error)
        table, chart = logic.learningCurve(job.progress.history)
        self.assertEqual(table.GetTable().GetNumberOfRows(), 1)
        [(segNode, volumes, metrics)] = logic.predict([volume], job.result["package"], seg)
        self.assertEqual(segNode.GetSegmentation().GetNthSegment(0).GetName(), "bright")
        self.assertEqual(volumes.GetTable().GetNumberOfRows(), 1)
        self.assertIsNotNone(metrics)
        self.assertIn("bright", logic.describeModel(job.result["package"]))
        self.assertEqual(slicer.util.arrayFromVolume(volume).tobytes(), arr.tobytes())  # input untouched
        logging.info("MedTransfer self-test passed")
