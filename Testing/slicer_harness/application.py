"""The Slicer application around the module: ``slicer.app``, ``slicer.modules``, the user at the
dialogs, the PyTorch extension, ``slicer.packaging``, SampleData — and :class:`Harness`, which
loads ``MedTransfer/MedTransfer.py`` the way Slicer does and drives its panel.

Real here: Qt (PyQt5, through :mod:`.pythonqt`), the MRML scene and nodes (slicer-core),
``slicer.util`` (slicer-core's own file: ``loadUI``, ``childWidgetVariables``,
``tryWithErrorDisplay``, the confirm and error displays), the child processes (the real CLI,
started through the :mod:`.launcher` that behaves like PythonSlicer).

Stand-ins, each following Slicer's source: the scripted-module base classes and
parameterNodeWrapper (:mod:`.scripted`, :mod:`.parameters`), the CTK/qMRML widgets
(:mod:`.widgets`), ``slicer.app`` (testing mode, cursor, top-level widgets, temporary path),
the Plots module logic's ``ShowChartInLayout`` (vtkSlicerPlotsLogic.cxx: switch the real layout
node to a layout with a plot view, select the chart for the plot views), ``slicer.packaging``
(pip_check on installed metadata; pip_ensure/pip_install recorded, not run), the PyTorch
extension's ``PyTorchUtilsLogic.installTorch`` (recorded), SampleData (MRHead is the real
Colin27 T1 head MRI from the sample-data cache), and the user: every message box is recorded
and answered from a queue the test fills; an unexpected question fails the test.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import slicer
from PyQt5 import QtCore, QtWidgets

from . import parameters, pythonqt, scripted, widgets
from .uiloader import QUiLoader

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MedTransfer" / "MedTransfer.py"


class User:
    """Answers message boxes. ``answers`` is consumed in order; info and error boxes need none."""

    def __init__(self):
        self.answers: list = []
        self.seen: list[dict] = []
        self.folders: list[str] = []

    def message_box(self, text, parent=None, **kwargs):
        from PyQt5.QtWidgets import QMessageBox

        buttons = kwargs.get("standardButtons")
        self.seen.append({"text": text, **kwargs})
        question = buttons is not None and int(buttons) & ~int(QMessageBox.Ok) != 0
        if not question:
            return QMessageBox.Ok
        if not self.answers:
            raise AssertionError(f"unexpected question to the user: {text}")
        return self.answers.pop(0)

    def questions(self) -> list[dict]:
        from PyQt5.QtWidgets import QMessageBox

        return [s for s in self.seen if s.get("standardButtons") is not None
                and int(s["standardButtons"]) & ~int(QMessageBox.Ok) != 0]

    def errors(self) -> list[str]:
        from PyQt5.QtWidgets import QMessageBox

        return [s["text"] for s in self.seen if s.get("icon") == QMessageBox.Critical]

    def get_existing_directory(self, *args, **kwargs):
        return self.folders.pop(0) if self.folders else ""


class SlicerApplication:
    """``slicer.app``: what slicer.util and the module use of qSlicerApplication."""

    applicationName = "Slicer"

    def __init__(self, qapp, temporary_path, testing=False):
        self._qapp = qapp
        self._testing = testing
        self.temporaryPath = str(temporary_path)
        self.main_window = QtWidgets.QWidget()
        self.main_window.setObjectName("qSlicerMainWindow")

    def testingEnabled(self):
        return self._testing

    def topLevelWidgets(self):
        return pythonqt.wrap([self.main_window])

    def processEvents(self):
        self._qapp.processEvents()

    def setOverrideCursor(self, cursor):
        QtWidgets.QApplication.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        QtWidgets.QApplication.restoreOverrideCursor()


class PlotsLogic:
    """vtkSlicerPlotsLogic::ShowChartInLayout on the real layout and selection nodes."""

    WITH_PLOT = None

    def __init__(self, scene):
        self.scene = scene
        self.shown = []

    def ShowChartInLayout(self, chart):
        L = slicer.vtkMRMLLayoutNode
        layout = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layout is not None:
            current = layout.GetViewArrangement()
            with_plot = {L.SlicerLayoutFourUpPlotView, L.SlicerLayoutFourUpPlotTableView, L.SlicerLayoutOneUpPlotView,
                         L.SlicerLayoutConventionalPlotView, L.SlicerLayoutThreeOverThreePlotView}
            if current not in with_plot:
                layout.SetViewArrangement({L.SlicerLayoutFourUpTableView: L.SlicerLayoutFourUpPlotTableView,
                                           L.SlicerLayoutConventionalView: L.SlicerLayoutConventionalPlotView}
                                          .get(current, L.SlicerLayoutFourUpPlotView))
        selection = self.scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
        if selection is not None:
            selection.SetActivePlotChartID(chart.GetID() if chart else None)
        views = self.scene.GetNodesByClass("vtkMRMLPlotViewNode")
        for i in range(views.GetNumberOfItems()):
            views.GetItemAsObject(i).SetPlotChartNodeID(chart.GetID() if chart else None)
        self.shown.append(chart)


class Packaging:
    """``slicer.packaging`` (Slicer 5.11+): what MedTransfer calls, recorded."""

    def __init__(self, harness):
        self.harness = harness
        self.calls: list[tuple] = []

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        constraints_text = Path(constraints).read_text(encoding="utf-8") if constraints else None
        self.calls.append(("pip_ensure", list(requirements), constraints_text,
                           {"prompt_install": prompt_install, "requester": requester}))
        self.harness.installed(requirements)

    def pip_install(self, requirements, constraints=None, requester=None, **kw):
        constraints_text = Path(constraints).read_text(encoding="utf-8") if constraints else None
        self.calls.append(("pip_install", list(requirements), constraints_text, {"requester": requester}))
        self.harness.installed([r for r in requirements if not r.startswith("-") and "/" not in r])


class PyTorchUtilsLogic:
    calls: list = []
    harness = None

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        PyTorchUtilsLogic.calls.append({"askConfirmation": askConfirmation, "backend": forceComputationBackend,
                                        "torch": torchVersionRequirement, "torchvision": torchvisionVersionRequirement})
        PyTorchUtilsLogic.harness.installed(["torch", "torchvision"])
        return types.ModuleType("torch")


class Patcher:
    """monkeypatch-like set/restore for use outside pytest fixtures too."""

    def __init__(self):
        self._undo = []

    def setattr(self, obj, name, value):
        old = getattr(obj, name, _MISSING)
        self._undo.append((obj, name, old))
        setattr(obj, name, value)

    def setitem(self, mapping, key, value):
        old = mapping.get(key, _MISSING)
        self._undo.append((mapping, key, old, "item"))
        mapping[key] = value

    def undo(self):
        for entry in reversed(self._undo):
            if len(entry) == 4:
                mapping, key, old, _ = entry
                if old is _MISSING:
                    mapping.pop(key, None)
                else:
                    mapping[key] = old
            else:
                obj, name, old = entry
                if old is _MISSING:
                    try:
                        delattr(obj, name)
                    except AttributeError:
                        pass
                else:
                    setattr(obj, name, old)
        self._undo.clear()


_MISSING = object()


class Harness:
    """Slicer around the MedTransfer module: install it, ``load()`` the module, drive the panel.

    ``absent``: distributions to report as not installed (``environment.installed_version``)
    until the stand-in installers 'install' them. ``packaging``: Slicer 5.11+ (``slicer.packaging``
    present) or older. ``pytorch_extension``: whether the PyTorch extension is installed.
    """

    def __init__(self, qapp, temporary_path, absent=(), packaging=True, pytorch_extension=True, testing=False,
                 launcher=None):
        self.qapp = qapp
        self.patch = Patcher()
        self.user = User()
        self.absent = set(absent)
        self.scene = slicer.vtkMRMLScene()
        from MedTransferLib.slicer import bridge

        bridge.segmentations_logic(self.scene)
        for cls in ("vtkMRMLLayoutNode", "vtkMRMLSelectionNode"):   # as the application creates them
            self.scene.AddNewNodeByClass(cls)
        layout = self.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        L = slicer.vtkMRMLLayoutNode
        for arrangement in (L.SlicerLayoutFourUpView, L.SlicerLayoutConventionalView, L.SlicerLayoutFourUpPlotView,
                            L.SlicerLayoutConventionalPlotView):   # the layout manager registers these
            layout.AddLayoutDescription(arrangement, '<layout type="horizontal"></layout>')
        layout.SetViewArrangement(L.SlicerLayoutFourUpView)
        self.plots = PlotsLogic(self.scene)
        self.packaging = Packaging(self) if packaging else None
        PyTorchUtilsLogic.calls = []
        PyTorchUtilsLogic.harness = self
        self.app = SlicerApplication(qapp, temporary_path, testing)
        self.launcher = launcher
        self.module = None
        self.widget = None
        pythonqt.SLOT_ERRORS.clear()
        self.slot_errors = pythonqt.SLOT_ERRORS
        self._install(pytorch_extension)

    # -- the environment ---------------------------------------------------------------------------
    def installed(self, requirements) -> None:
        from MedTransferLib.core.environment import requirement_name

        for r in requirements:
            self.absent.discard(requirement_name(str(r)))

    def _install(self, pytorch_extension) -> None:
        from MedTransferLib.core import environment

        p = self.patch
        qt = pythonqt.qt_module({"QUiLoader": QUiLoader})
        p.setitem(sys.modules, "qt", qt)
        ctk = types.ModuleType("ctk")
        for name in ("ctkCollapsibleButton", "ctkPathLineEdit"):
            setattr(ctk, name, pythonqt.PythonQtClass(widgets.CLASSES[name]))
        p.setitem(sys.modules, "ctk", ctk)
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr, i18n.translate = scripted.tr, scripted.translate
        slm = types.ModuleType("slicer.ScriptedLoadableModule")
        for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                     "ScriptedLoadableModuleTest"):
            setattr(slm, name, getattr(scripted, name))
        pnw = types.ModuleType("slicer.parameterNodeWrapper")
        for name in ("parameterNodeWrapper", "WithinRange", "Choice", "Default"):
            setattr(pnw, name, getattr(parameters, name))
        p.setitem(sys.modules, "slicer.i18n", i18n)
        p.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
        p.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
        if self.packaging is not None:
            pk = types.ModuleType("slicer.packaging")
            pk.pip_ensure, pk.pip_install = self.packaging.pip_ensure, self.packaging.pip_install
            p.setitem(sys.modules, "slicer.packaging", pk)
        else:
            p.setitem(sys.modules, "slicer.packaging", None)   # import fails, as before Slicer 5.11
        if pytorch_extension:
            ptu = types.ModuleType("PyTorchUtils")
            ptu.PyTorchUtilsLogic = PyTorchUtilsLogic
            p.setitem(sys.modules, "PyTorchUtils", ptu)
        else:
            p.setitem(sys.modules, "PyTorchUtils", None)
        sample = types.ModuleType("SampleData")
        sample.downloadSample = self.sample
        p.setitem(sys.modules, "SampleData", sample)

        real_version = environment.installed_version
        p.setattr(environment, "installed_version",
                  lambda name: None if name in self.absent else real_version(name))
        p.setattr(slicer, "mrmlScene", self.scene)
        p.setattr(slicer, "app", self.app)
        modules = types.SimpleNamespace(plots=types.SimpleNamespace(logic=lambda: self.plots),
                                        medtransfer=types.SimpleNamespace(path=str(MODULE_FILE)))
        p.setattr(slicer, "modules", modules)
        for name, cls in widgets.CLASSES.items():
            if name.startswith("qMRML"):
                p.setattr(slicer, name, pythonqt.PythonQtClass(cls))
        p.setattr(slicer.util, "messageBox", self.user.message_box)
        p.setattr(QtWidgets.QFileDialog, "getExistingDirectory", staticmethod(self.user.get_existing_directory))
        if self.launcher is not None:   # PythonSlicer on PATH, as inside Slicer
            import os

            p.setitem(os.environ, "PATH", str(Path(self.launcher).parent) + os.pathsep + os.environ.get("PATH", ""))

    def sample(self, name):
        """SampleData.downloadSample: MRHead is the real Colin27 T1 head MRI (the sample cache)."""
        if name != "MRHead":
            raise ValueError(f"the harness has no sample '{name}'")
        import MedTransferLib as mt
        from MedTransferLib.slicer import bridge

        image = Path(mt.sample_data()).parent / "ch2.nii.gz"
        return bridge.case_to_volume_node(self.scene, mt.read_case(image), "MRHead")

    # -- the module -----------------------------------------------------------------------------------
    def load(self):
        """Import MedTransfer.py as Slicer does, create its module and widget, call setup()."""
        spec = importlib.util.spec_from_file_location("MedTransfer", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        self.patch.setitem(sys.modules, "MedTransfer", module)
        spec.loader.exec_module(module)
        self.module = module
        parent = types.SimpleNamespace(path=str(MODULE_FILE))
        module.MedTransfer(parent)
        self.panel_parent = pythonqt.wrap(widgets.qSlicerWidget())
        self.widget = module.MedTransferWidget(self.panel_parent)
        self.widget.setup()
        return self.widget

    @property
    def ui(self):
        return self.widget.panel.ui

    def enter(self):
        self.widget.enter()

    def exit(self):
        self.widget.exit()

    def close_scene(self):
        self.scene.Clear(0)

    def click(self, name):
        button = pythonqt.unwrap(getattr(self.ui, name))
        assert button.isEnabled(), f"{name} is disabled: {button.toolTip()}"
        button.click()

    def process(self, seconds=0.0):
        end = time.monotonic() + seconds
        while True:
            self.qapp.processEvents(QtCore.QEventLoop.AllEvents, 50)
            if time.monotonic() >= end:
                return
            time.sleep(0.01)

    def wait_for(self, condition, timeout=300.0, what="condition"):
        end = time.monotonic() + timeout
        while not condition():
            self.qapp.processEvents(QtCore.QEventLoop.AllEvents, 50)
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)

    def close(self):
        if self.widget is not None:
            try:
                self.widget.cleanup()
            except Exception:
                pass
        self.patch.undo()
