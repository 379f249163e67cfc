"""The module's Logic: the Python-console API and the panel's engine, with no Qt.

Every step that runs torch — training, Apply (segmentation and classification), Advise, Export,
Check setup — runs in a child process through :mod:`MedTransferLib.core.runner` (Slicer's
``PythonSlicer``), returned as a :class:`~.tasks.Task` to poll; the synchronous console calls
(``train``, ``predict``, ``classify``, ``advise``, ``exportModel``) are the same tasks, waited
for. So Slicer's own process never imports torch, and keeps working before it is installed.

Example (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("MedTransfer")
    run = logic.train([(volumeNode, segmentationNode)], ["tumor"], "/tmp/run", epochs=5)
    [(segNode, volumesTable, metricsTable)] = logic.predict([volumeNode], run.package, segmentationNode)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.package.store import ModelPackage
from MedTransferLib.slicer import apply_files, bridge
from MedTransferLib.slicer.installer import Installer
from MedTransferLib.slicer.tasks import Task


def _scene():
    import slicer

    return slicer.mrmlScene


class Logic:
    """``jobFactory(args, python=..., env=...)`` makes the child-process runner (default
    :class:`MedTransferLib.core.runner.Job`); passed in, as in SlicerNNUnet, so tests can swap it.
    ``python``: the interpreter for children (default: Slicer's PythonSlicer, found on PATH)."""

    def __init__(self, jobFactory=None, python: str | None = None, installer: Installer | None = None):
        self.jobFactory = jobFactory
        self.python = python
        self.installer = installer or Installer()

    # -- dependencies ------------------------------------------------------------------------------
    def missingDependencies(self) -> list:
        return self.installer.plan().torch + self.installer.plan().pip

    def dependencyStatus(self) -> str:
        return self.installer.status()

    def ensureDependencies(self, askUser: bool = True, cpuOnly: bool = False) -> bool:
        """Install what is missing after one question (declinable); never at import time and never
        in testing mode. Returns False if the user declined."""
        return self.installer.install(ask=askUser, cpu_only=cpuOnly)

    def installFromFolder(self, folder, askUser: bool = True) -> list[str]:
        return self.installer.install_from_folder(folder, ask=askUser)

    def _requireDependencies(self) -> None:
        missing = self.missingDependencies()
        if missing:
            raise MedTransferError("MedTransfer's Python packages are missing (" + ", ".join(n.name for n in missing)
                                   + "): press Install in the MedTransfer panel (or call "
                                   "logic.ensureDependencies()).")

    # -- the training list (plain Python over nodes; no torch) --------------------------------------
    @staticmethod
    def newTrainingList():
        return bridge.TrainingPairs()

    @staticmethod
    def segmentNames(segmentationNode):
        return bridge.segment_names(segmentationNode)

    @staticmethod
    def emptySlices(segmentationNode, axis: int = 2) -> list:
        """Slices marked as labelled with none of the structures on them (saved with the scene)."""
        return bridge.empty_slices(segmentationNode, axis)

    @staticmethod
    def setEmptySlices(segmentationNode, slices, axis: int = 2) -> None:
        """Mark these slices (indices along ``axis`` of the paired volume) as labelled and empty:
        with 'unpainted slices are unlabelled', training learns that nothing is there."""
        bridge.set_empty_slices(segmentationNode, slices, axis)

    @staticmethod
    def tableRows(tableNode):
        return bridge.table_node_rows(tableNode)

    # -- child processes ---------------------------------------------------------------------------
    def pythonExecutable(self) -> str:
        return self.python or shutil.which("PythonSlicer") or sys.executable

    def childSetup(self, python: str | None = None):
        """The interpreter and environment of a child process (MedTransferLib importable)."""
        lib_dir = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = lib_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return python or self.pythonExecutable(), env

    def _job(self, args: list[str], python: str | None = None, needsTorch: bool = True):
        """Start the CLI in a child process — a waiting spare's if one fits (panel.py)."""
        from MedTransferLib.core.runner import Job

        if needsTorch:
            self._requireDependencies()
        python, env = self.childSetup(python)
        return (self.jobFactory or Job)(args, python=python, env=env).start()

    @staticmethod
    def _workdir(kind: str) -> str:
        base = None
        try:
            import slicer

            base = getattr(getattr(slicer, "app", None), "temporaryPath", None)
        except ImportError:
            pass
        if base:
            os.makedirs(base, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"MedTransfer-{kind}-", dir=base or None)

    # -- training ------------------------------------------------------------------------------------
    @staticmethod
    def _config_args(config: dict) -> list[str]:
        args = []
        for key, value in config.items():
            if value is None:
                continue
            args += ["--from" if key == "init_from" else f"--{key.replace('_', '-')}", str(value)]
        return args

    def trainInBackground(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True,
                          python=None, **config) -> Task:
        """Start segmentation training in a child process; returns its :class:`Task` (poll it from
        a timer; ``.package`` when finished). The nodes are exported to ``outputFolder/data``."""
        self._requireDependencies()
        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        datalist = bridge.export_training_data(pairs, list(segmentNames), os.path.join(outputFolder, "data"), unpainted)
        args = ["train", "--datalist", str(datalist), "--out", str(outputFolder), *self._config_args(config)]
        return Task("train", self._job(args, python))

    def trainClassifierInBackground(self, volumeNodes, classes, outputFolder, python=None, **config) -> Task:
        """Start classification training (one class name per volume) in a child process."""
        self._requireDependencies()
        datalist = bridge.export_classification_data(volumeNodes, classes, os.path.join(outputFolder, "data"))
        args = ["train", "--datalist", str(datalist), "--out", str(outputFolder), *self._config_args(config)]
        return Task("train", self._job(args, python))

    def resumeInBackground(self, outputFolder, python=None) -> Task:
        """Continue an interrupted (cancelled, crashed) training from its last complete epoch."""
        return Task("train", self._job(["train", "--resume", str(outputFolder)], python))

    def updateInBackground(self, pairs, segmentNames, outputFolder, modelFolder, seconds=None,
                           unpaintedSlicesUnlabelled=True, python=None, **config) -> Task:
        """Continue ``modelFolder`` (its whole network) on the training list as it is now — after
        correcting or adding slices — for ``seconds`` (default ``UPDATE_SECONDS``) into a new run
        folder: ``medtransfer train --from``. The same structures as the model's are needed."""
        from MedTransferLib.core.defaults import UPDATE_SECONDS

        config = dict(config, init_from=str(modelFolder), max_seconds=seconds or UPDATE_SECONDS)
        config.setdefault("strategy", "auto")   # continuing: every layer adapts (the advisor says so)
        return self.trainInBackground(pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled, python,
                                      **config)

    @staticmethod
    def labelsOf(segmentationNode, segmentNames):
        """The training labels (values 1..N, names, colours) of these segments, as exported."""
        return bridge.labels_from_segments(segmentationNode, list(segmentNames))

    @staticmethod
    def writePreviewView(folder, case: int, slices) -> None:
        """Tell a training with a live preview which slices of which case the user looks at
        (indices along the slice axis); it predicts them first at each preview."""
        from MedTransferLib.core.defaults import VIEW_FILE
        from MedTransferLib.core.files import write_json

        Path(folder).mkdir(parents=True, exist_ok=True)
        write_json(Path(folder) / VIEW_FILE, {"case": int(case), "slices": [int(k) for k in slices]})

    @staticmethod
    def showPreview(path, volumeNode, labels, node=None, name="MedTransfer preview"):
        """Load a preview label map (``--preview``) as the segmentation ``node`` — its segments
        replaced in place — or a new node beside ``volumeNode``; returns the node."""
        from MedTransferLib.data.io import read_image

        label, geometry = read_image(path, "preview")
        fresh = not apply_files.alive(node)
        node = bridge.label_to_segmentation_node(volumeNode.GetScene(), label, geometry, labels, name,
                                                 reference_volume=volumeNode, node=None if fresh else node)
        if fresh:
            bridge.place_with_volume(volumeNode, [node])
        return node

    def train(self, pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled=True, **config):
        """Train and wait (console and scripts): returns the finished :class:`Task` (``.package``)."""
        task = self.trainInBackground(pairs, segmentNames, outputFolder, unpaintedSlicesUnlabelled, **config)
        if task.wait() != "finished":
            raise MedTransferError(f"training {task.state}: {task.error or ''}".strip())
        return task

    # -- apply -----------------------------------------------------------------------------------------
    def applyInBackground(self, volumeNodes, modelFolder, referenceSegmentation=None, device="auto",
                          prior=None, python=None, paintedPairs=None) -> Task:
        """Segment (or classify) volume nodes in a child process. When it finishes, the task's
        ``outputs`` are, for a segmentation model, one ``(segmentation, volumes table, metrics
        table or None)`` per volume — segments named and coloured as in training, placed with the
        volume in the subject hierarchy — and for a classification model one table node. The
        volumes are only read. ``paintedPairs``: (volume, segmentation) pairs; a volume among
        them keeps its painted slices, and they guide the network between them (2.5D)."""
        self._requireDependencies()
        nodes = list(volumeNodes)
        if not nodes:
            raise MedTransferError("choose at least one volume to apply the model to")
        package = ModelPackage.load(modelFolder)   # verified here too: a bad model fails at once
        work = self._workdir("apply")
        try:
            request = apply_files.write_request(nodes, package, referenceSegmentation, device, prior, work,
                                                paintedPairs)
            job = self._job(["apply", "--request", request], python)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if package.task == "classification":
            return Task("apply", job, lambda j: apply_files.load_classes(j.result, nodes, prior), work)
        return Task("apply", job, lambda j: apply_files.load_segmentations(j.result, nodes, package, referenceSegmentation),
                    work)

    def predict(self, volumeNodes, modelFolder, referenceSegmentation=None, device="auto"):
        """Segment one volume node or a list of them and wait; returns a tuple
        ``(segmentation, volumes table, metrics table or None)`` for one node, a list of them for a
        list."""
        single = not isinstance(volumeNodes, (list, tuple))
        task = self.applyInBackground([volumeNodes] if single else list(volumeNodes), modelFolder,
                                      referenceSegmentation, device)
        if task.wait() != "finished":
            raise MedTransferError(f"prediction {task.state}: {task.error or ''}".strip())
        if not isinstance(task.outputs, list):
            raise MedTransferError(f"'{modelFolder}' is a classification model: use classify()")
        return task.outputs[0] if single else task.outputs

    def classify(self, volumeNodes, modelFolder, device="auto", prior=None):
        """Classify volumes and wait; returns a table node (a row per volume, calibrated class
        probabilities). ``prior`` ("em", "bbse" or "known:a=0.1,b=0.9") corrects for these
        volumes' class prevalence."""
        task = self.applyInBackground(list(volumeNodes), modelFolder, device=device, prior=prior)
        if task.wait() != "finished":
            raise MedTransferError(f"classification {task.state}: {task.error or ''}".strip())
        return task.outputs

    # -- advise, export, check setup --------------------------------------------------------------------
    def adviseInBackground(self, pairs, segmentNames, unpaintedSlicesUnlabelled=True, python=None, **kw) -> Task:
        """The strategy advisor in a child process; ``outputs`` is the advice (``.strategy``,
        ``.lr``, ``.reason``, ``.data``, ``.domain``). Nothing is trained."""
        self._requireDependencies()
        unpainted = "ignore" if unpaintedSlicesUnlabelled else "background"
        work = self._workdir("advise")
        try:
            datalist = bridge.export_training_data(pairs, list(segmentNames), work, unpainted)
            job = self._job(["advise", "--datalist", str(datalist), *self._config_args(kw)], python)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return Task("advise", job, lambda j: SimpleNamespace(**j.result["advice"]), work)

    def advise(self, pairs, segmentNames, unpaintedSlicesUnlabelled=True, **kw):
        """Recommend a strategy (console): the advice (``.strategy``, ``.reason``)."""
        task = self.adviseInBackground(pairs, segmentNames, unpaintedSlicesUnlabelled, **kw)
        if task.wait() != "finished":
            raise MedTransferError(f"advise {task.state}: {task.error or ''}".strip())
        return task.outputs

    def exportInBackground(self, modelFolder, outputFolder, formats=("torchscript", "onnx"), python=None) -> Task:
        """TorchScript, ONNX (if the onnx package is installed) and labels.json, in a child process."""
        ModelPackage.load(modelFolder)
        args = ["export", "--model", str(modelFolder), "--out", str(outputFolder), "--format", *formats]
        return Task("export", self._job(args, python),
                    lambda j: {k: Path(v) for k, v in j.result.items() if k != "event"})

    def exportModel(self, modelFolder, outputFolder, formats=("torchscript", "onnx"), askUser=True):
        """Export and wait; ONNX only if the ``onnx`` package is installed (``askUser``: offer to
        install it). Returns ``{format: path}``."""
        from MedTransferLib.core.environment import installed_version

        formats = list(formats)
        if "onnx" in formats and installed_version("onnx") is None:
            import slicer

            if askUser and slicer.util.confirmYesNoDisplay(
                    "ONNX export needs the 'onnx' package (about 20 MB). Install it now? (No: export TorchScript only.)"):
                self.installer._pip(["onnx"])
            else:
                formats.remove("onnx")
        task = self.exportInBackground(modelFolder, outputFolder, formats or ["torchscript"])
        if task.wait() != "finished":
            raise MedTransferError(f"export {task.state}: {task.error or ''}".strip())
        return task.outputs

    def doctorInBackground(self, outputFolder=".", python=None) -> Task:
        """``medtransfer doctor`` in a child process: ``outputs`` is its report (checks, devices,
        backbones). Runs with dependencies missing too (it says what is missing)."""
        job = self._job(["doctor", "--out-dir", str(outputFolder)], python, needsTorch=False)
        return Task("doctor", job, lambda j: {k: v for k, v in j.result.items() if k != "event"})

    # -- results in the scene ------------------------------------------------------------------------------
    def learningCurve(self, history, table=None, chart=None):
        """Create or update the learning-curve table and plot chart nodes; returns (table, chart).
        Nodes no longer in the scene (closed meanwhile) are made anew."""
        table = table if apply_files.alive(table) else None
        chart = chart if apply_files.alive(chart) else None
        return bridge.learning_curve_nodes(_scene(), history, table, chart)

    @staticmethod
    def showChartInLayout(chart) -> bool:
        """Switch to a layout with a plot view showing ``chart`` (Slicer's Plots module logic)."""
        import slicer

        plots = getattr(getattr(slicer, "modules", None), "plots", None)
        if plots is None or chart is None:
            return False
        plots.logic().ShowChartInLayout(chart)
        return True

    def audit(self, volumeNode, segmentationNodes, segmentNames):
        """Label audit (numpy only, in this process): agreement table of two or more segmentations."""
        return bridge.audit_to_table(volumeNode, list(segmentationNodes), list(segmentNames))

    # -- model packages (verified, torch-free) ------------------------------------------------------------
    @staticmethod
    def modelTask(modelFolder) -> str:
        return ModelPackage.load(modelFolder).task

    @staticmethod
    def describeModel(modelFolder) -> str:
        """The manifest in a few lines: structures/classes, backbone, strategy (and why), data, score."""
        return ModelPackage.load(modelFolder).describe()

    @staticmethod
    def saveModel(modelFolder, destinationFolder):
        """Copy a model package into ``destinationFolder/<its name>`` (verified, atomic); returns the path."""
        pkg = ModelPackage.load(modelFolder)
        name = pkg.path.parent.name if pkg.path.name == "model" else pkg.path.name
        return str(pkg.copy_to(os.path.join(destinationFolder, name)).path)
