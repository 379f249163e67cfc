"""A background task: a CLI child process and what to do with its result.

Training, Apply, Advise, Export and Check setup all run as a :class:`~MedTransferLib.core.runner.Job`
(a child process: Slicer's GUI thread never runs torch). A :class:`Task` adds the step that
needs the scene — loading a predicted label map into a segmentation node, a table into a table
node — which runs once, in the thread that polls (Slicer's GUI thread, from the panel's timer),
when the child has finished. ``wait()`` does the same for the console and scripts.
"""

from __future__ import annotations

import shutil
from typing import Callable


class Task:
    """``kind``: train, apply, advise, export, doctor. ``finish(job)`` runs once after a
    successful child and returns the task's ``outputs``; if it raises, the task failed with that
    message. ``workdir`` (temporary exchange files) is removed at the end, whatever happened.

    Example:
        >>> task = logic.applyInBackground([volumeNode], "runs/a/model")   # doctest: +SKIP
        >>> task.wait(); segmentation, volumes, metrics = task.outputs[0]  # doctest: +SKIP
    """

    def __init__(self, kind: str, job, finish: Callable | None = None, workdir: str | None = None):
        self.kind = kind
        self.job = job
        self._finish = finish
        self.workdir = workdir
        self.outputs = None
        self.finish_error: str | None = None
        self.finished = False

    # -- the job's view ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return "failed" if self.finish_error else self.job.state

    @property
    def running(self) -> bool:
        return self.job.state == "running"

    @property
    def error(self) -> str | None:
        return self.finish_error or self.job.error

    @property
    def events(self):
        return self.job.events

    @property
    def progress(self):
        return self.job.progress

    @property
    def result(self) -> dict | None:
        return self.job.result

    @property
    def log(self):
        return self.job.log

    @property
    def package(self) -> str | None:
        """The model package a training task wrote."""
        return (self.job.result or {}).get("package")

    # -- control -------------------------------------------------------------------------------
    def poll(self) -> list[dict]:
        events = self.job.poll()
        self._complete()
        return events

    def wait(self, timeout: float | None = None) -> str:
        self.job.wait(timeout)
        self._complete()
        return self.state

    def cancel(self) -> None:
        self.job.cancel()

    def stop(self, timeout: float = 5.0) -> str:
        """Cancel and block until the child's whole process tree is gone (cleanup, exit)."""
        self.job.stop(timeout)
        self._complete()
        return self.state

    def _complete(self) -> None:
        if self.finished or self.job.state == "running":
            return
        self.finished = True
        try:
            if self.job.state == "finished" and self._finish is not None:
                try:
                    self.outputs = self._finish(self.job)
                except Exception as exc:   # shown to the user as the task's error
                    self.finish_error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        finally:
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
