"""Running the CLI in a child process: the JSON-lines protocol, the job state machine, and
stopping the whole process tree.

The Slicer module runs everything that needs torch through this (Slicer's PythonSlicer as
``python``), never in the GUI thread; it is plain Python, no Qt: reader threads turn the child's
stdout lines into events, and the GUI polls them from a timer (``poll()``), so Slicer never
blocks.

States: ``idle → running → finished | failed | cancelled``.

Stopping. PythonSlicer is a launcher: it starts the real interpreter as its own child and
forwards no signal, so signalling the launcher alone leaves the work running. The child is
therefore started as the leader of its own process group (POSIX: a new session; Windows: a new
process group, with no console window, as Slicer's ``launchConsoleProcess`` does), and
``cancel()``:

1. writes the job's *stop file* — the child's watchdog (:mod:`.lifeline`) turns it into a clean
   stop (exit 130, only complete checkpoints left); this needs no signal, so it works through
   the launcher on every OS;
2. on POSIX also sends SIGTERM to the whole group (the interpreter turns it into the same clean
   stop);
3. after ``grace`` seconds kills what is left of the tree: the process group (SIGKILL), every
   descendant seen (psutil), and on Windows ``taskkill /T``.

The final state tells the truth: a job whose child reported the model written is ``finished``
even if Cancel came too late to stop it.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from MedTransferLib.core.launch import (
    child_environment,
    descendants,
    kill_tree,
    launch,
    take_spare,
)

STATES = ("idle", "running", "finished", "failed", "cancelled")


def event_text(event: dict) -> str | None:
    """A protocol event as one readable log line (None for per-step events, which only move the
    progress bar)."""
    kind = event.get("event")
    if kind == "start":
        keys = ("mode", "backbone", "weights", "strategy", "train_slices", "val_slices", "steps_total", "device")
        return "start: " + ", ".join(f"{k} {event[k]}" for k in keys if k in event)
    if kind == "epoch":
        values = ", ".join(f"{k.replace('_', ' ')} {f'{v:.3f}' if isinstance(v, float) else v}" for k, v in event.items()
                           if k not in ("event", "epoch", "epochs", "eta_s", "time_s")
                           and isinstance(v, (int, float)) and not isinstance(v, bool))
        return f"epoch {event.get('epoch')}: {values}"
    if kind == "preview":
        final = ": the finished model" if event.get("weights") == "final" else ""
        return f"preview: step {event.get('step')}, {100 * float(event.get('covered', 0)):.0f} % of the volume shown" + final
    if kind in ("note", "error", "done"):
        return f"{kind}: {event.get('message', '')}"
    return None


def parse_line(line: str) -> dict | None:
    """One stdout line → an event dict, or None for anything that is not a JSON event object."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("event"), str) else None


@dataclass
class Progress:
    step: int = 0
    steps_total: int = 0
    epoch: int = 0
    loss: float | None = None
    eta_s: float | None = None
    history: list = field(default_factory=list)   # one dict per epoch: epoch, train_loss, val_*
    validation: tuple | None = None               # latest (metric, value), e.g. ("val_dice", 0.81)

    @property
    def fraction(self) -> float:
        return self.step / self.steps_total if self.steps_total else 0.0


# commands that speak the JSON-lines protocol when given --progress json
JSON_COMMANDS = ("train", "apply", "advise", "export", "doctor")
_LIVE: "weakref.WeakSet[Job]" = weakref.WeakSet()


class Job:
    """A ``medtransfer`` command in a child process.

    Example:
        >>> job = Job(["train", "--datalist", "d.json", "--out", "runs/a"])   # doctest: +SKIP
        >>> job.start(); job.wait(); job.state                                  # doctest: +SKIP
        'finished'
    """

    def __init__(self, args: list[str], python: str | None = None, env: dict | None = None):
        self.args = list(args)
        self.python = python or sys.executable
        self.env = env
        self.state = "idle"
        self.events: list[dict] = []
        self.log: list[str] = []          # non-event lines (stdout) and stderr
        self.progress = Progress()
        self.error: str | None = None
        self.result: dict | None = None
        self.returncode: int | None = None
        self.cancel_requested = False
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._kill_at: float | None = None
        self._give_up_at: float | None = None
        self._seen: set[int] = set()      # descendants seen while running (orphans keep their pid)
        self._control: str | None = None  # folder of the stop file
        self.warm = False                 # started in a spare (core/launch.py)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def stop_file(self) -> str | None:
        return os.path.join(self._control, "stop") if self._control else None

    # -- lifecycle --------------------------------------------------------------------------
    def arguments(self) -> list[str]:
        """The arguments after ``-m MedTransferLib`` (JSON progress for the commands that speak it)."""
        if self.args and self.args[0] in JSON_COMMANDS and "--progress" not in self.args:
            return [*self.args, "--progress", "json"]
        return list(self.args)

    def command(self) -> list[str]:
        return [self.python, "-m", "MedTransferLib", *self.arguments()]

    def start(self) -> "Job":
        """Start the child — or hand the command to a waiting spare with the same Python and
        environment (core/launch.py), which has loaded torch already."""
        if self.state != "idle":
            raise RuntimeError(f"job already {self.state}")
        env, args = child_environment(self.env), self.arguments()
        spare = take_spare(self.python, env)
        if spare is not None:
            try:
                self._proc, self._control = spare.hand_over(args)
            except OSError:   # it ended between the check and the command: start a process instead
                spare.close()
                spare = None
        self.warm = spare is not None
        if spare is None:
            self._proc, self._control = launch(self.python, args, env)
        self.state = "running"
        _LIVE.add(self)
        for stream, kind in ((self._proc.stdout, "out"), (self._proc.stderr, "err")):
            t = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, stream, kind: str) -> None:
        for line in stream:
            self._queue.put((kind, line.rstrip("\n")))
        self._queue.put((kind, None))

    def poll(self) -> list[dict]:
        """Events that arrived since the last call (never blocks); updates state and progress."""
        if self.state != "running":
            return []
        if os.name == "nt" and self._proc.poll() is None:
            self._seen.update(descendants(self._proc.pid))
        now = time.monotonic()
        if self._kill_at is not None and now > self._kill_at:
            self._kill_tree()
            self._kill_at = None
        new = []
        while True:
            try:
                kind, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            event = parse_line(line) if kind == "out" else None
            if event is None:
                self.log.append(line)
                continue
            self._apply(event)
            new.append(event)
        if self._proc.poll() is not None:
            readers_done = not any(t.is_alive() for t in self._threads)
            # a descendant that outlived the killed tree still holding the pipes must not hang us
            gave_up = self._give_up_at is not None and now > self._give_up_at
            if readers_done or gave_up:
                if self._queue.empty() or gave_up:
                    self._finish(self._proc.returncode)
                else:
                    new += self.poll()
        return new

    def wait(self, timeout: float | None = None) -> str:
        """Block until the child ends (for scripts and tests); returns the final state."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.state == "running":
            self.poll()
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"job still running after {timeout} s")
            time.sleep(0.05)
        return self.state

    def cancel(self, grace: float = 3.0) -> None:
        """Ask the whole process tree to stop cleanly, without blocking; ``poll()`` kills what is
        left ``grace`` seconds later."""
        if self.state != "running" or self._proc is None or self.cancel_requested:
            return
        self.cancel_requested = True
        self._kill_at = time.monotonic() + grace
        self._give_up_at = self._kill_at + 5.0
        try:
            with open(self.stop_file, "w", encoding="utf-8") as f:
                f.write("stop\n")
        except OSError:
            pass
        if os.name != "nt":
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            self._seen.update(descendants(self._proc.pid))

    def stop(self, timeout: float = 5.0) -> str:
        """Cancel and block until the tree is gone (at most ``timeout`` s, then killed): for module
        cleanup and application exit, where nothing may be left running."""
        if self.state == "running":
            self.cancel(grace=max(0.0, timeout - 1.0))
            try:
                self.wait(timeout)
            except TimeoutError:
                self._kill_tree()
                try:
                    self.wait(2.0)
                except TimeoutError:
                    self._finish(self._proc.returncode if self._proc.poll() is not None else -9)
        return self.state

    def _kill_tree(self) -> None:
        """Kill everything the job started, whatever the launcher did."""
        if self._proc is not None:
            kill_tree(self._proc, self._seen)

    # -- protocol -----------------------------------------------------------------------------
    def _apply(self, event: dict) -> None:
        self.events.append(event)
        kind = event["event"]
        p = self.progress
        if kind == "start":
            p.steps_total = int(event.get("steps_total") or 0)
        elif kind == "step":
            p.step, p.epoch = int(event.get("step", p.step)), int(event.get("epoch", p.epoch))
            p.steps_total = int(event.get("steps_total", p.steps_total))
            p.loss, p.eta_s = event.get("loss"), event.get("eta_s")
        elif kind == "epoch":
            p.history.append({k: v for k, v in event.items() if k not in ("event", "time_s", "epochs", "eta_s")})
            scores = [(k, v) for k, v in event.items()
                      if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)]
            if scores:
                p.validation = scores[0]
        elif kind == "error":
            self.error = str(event.get("message"))
        elif kind == "done":
            self.result = event

    def _finish(self, rc: int) -> None:
        self.returncode = rc
        _LIVE.discard(self)
        if self._control:
            shutil.rmtree(self._control, ignore_errors=True)
        if rc == 0 or (self.result is not None and self.cancel_requested):
            self.state = "finished"   # the work was done and written: a late Cancel does not undo that
        elif rc == 130 or self.cancel_requested:
            self.state = "cancelled"
        else:
            self.state = "failed"
            if self.error is None:   # not a MedTransfer error: the last stderr line, no traceback
                lines = [ln for ln in self.log if ln.strip()]
                self.error = lines[-1] if lines else f"the process ended with code {rc}"


@atexit.register
def _stop_all_jobs() -> None:
    """Application exit: no child process tree outlives the application."""
    for job in list(_LIVE):
        try:
            job.stop(timeout=3.0)
        except Exception:
            pass
