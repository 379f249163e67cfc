"""MedTransfer — Slicer scripted module: the module's declaration, its parameters and the wiring.

The panel, its state, the installer and the Logic live in ``MedTransferLib.slicer`` (importable
and tested without Slicer); nothing imported here needs PyTorch, so the module loads and its
panel works on a fresh install, where it offers to install what is missing.

Console API::

    logic = slicer.util.getModuleLogic("MedTransfer")
    run = logic.train([(volumeNode, segmentationNode)], ["tumor"], "/tmp/run", epochs=5)
    [(segNode, volumesTable, metricsTable)] = logic.predict([volumeNode], run.package, segmentationNode)
"""

import os
import sys
from typing import Annotated

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

# MedTransferLib is installed beside this module (CMakeLists.txt); in a source checkout it is one
# folder up.
_here = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_here, os.path.dirname(_here)):
    if os.path.isdir(os.path.join(_candidate, "MedTransferLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)

from MedTransferLib.core.defaults import TRAINING as DEFAULTS  # noqa: E402
from MedTransferLib.slicer.logic import Logic  # noqa: E402


class MedTransfer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedTransfer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedTransfer developers"]
        self.parent.helpText = _(
            "Adapt a pretrained network (transfer learning, 2.5D or 3D) to your own labelled volumes and "
            "apply it to new ones. Label a few slices with the Segment Editor, press Add all, Train, then "
            "Apply. Everything heavy runs in a background process; Cancel stops it.")
        self.parent.acknowledgementText = _(
            "Uses MONAI, PyTorch, torchvision and SimpleITK. Sample data: Colin27 and the AAL atlas.")


@parameterNodeWrapper
class MedTransferParameterNode:
    """Typed GUI state. Results are nodes in the scene, never stored here. The folders are plain
    text (a pathlib.Path parameter shows an empty path as '.')."""

    pairVolume: vtkMRMLScalarVolumeNode
    pairSegmentation: vtkMRMLSegmentationNode
    unpaintedSlicesUnlabelled: bool = True
    segmentsToLearn: list[str]
    task: Annotated[str, Choice(["segmentation", "classification"])] = "segmentation"
    mode: Annotated[str, Choice(["2.5d", "3d"])] = DEFAULTS["mode"]
    backbone: str = DEFAULTS["backbone"]
    strategy: str = DEFAULTS["strategy"]
    epochs: Annotated[int, WithinRange(1, 1000)] = DEFAULTS["epochs"]
    learningRate: Annotated[float, WithinRange(1e-5, 1.0)] = DEFAULTS["lr"]
    device: str = DEFAULTS["device"]
    outputFolder: str = ""
    referenceSegmentation: vtkMRMLSegmentationNode
    guideByPaintedSlices: bool = True
    modelFolder: str = ""


class MedTransferWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.panel = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from MedTransferLib.slicer.widget import PanelWidget

        self.logic = MedTransferLogic()
        self.panel = PanelWidget(self.resourcePath("UI/MedTransfer.ui"), self.logic)
        self.layout.addWidget(self.panel.widget)

    def enter(self) -> None:
        self.panel.enter()

    def exit(self) -> None:
        self.panel.exit()

    def cleanup(self) -> None:
        self.panel.cleanup()


class MedTransferLogic(ScriptedLoadableModuleLogic, Logic):
    """The console API (MedTransferLib.slicer.logic.Logic) with the module's parameter node."""

    def __init__(self, jobFactory=None, python=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        Logic.__init__(self, jobFactory=jobFactory, python=python)

    def getParameterNode(self):
        return MedTransferParameterNode(super().getParameterNode())


class MedTransferTest(ScriptedLoadableModuleTest):
    """Slicer's ctest self-test (MedTransferLib/slicer/selftest.py): installs nothing; with
    dependencies missing it says so and runs only the checks that need none."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        from MedTransferLib.slicer.selftest import run

        run(self, MedTransferLogic())
