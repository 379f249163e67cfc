"""Running the CLI in a child process: the JSON-lines protocol and the job state machine.

The Slicer module trains through this (Slicer's PythonSlicer as ``python``), never in the GUI
thread; it is plain Python, no Qt: a reader thread turns the child's stdout lines into events,
and the GUI polls them from a timer (``poll()``), so Slicer never blocks.

States: ``idle → running → finished | failed | cancelled``. ``cancel()`` sends SIGTERM — the CLI
turns it into a clean stop (exit 130) that leaves only complete, atomically written checkpoints —
and kills the child if it has not stopped within ``grace`` seconds.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

STATES = ("idle", "running", "finished", "failed", "cancelled")


def event_text(event: dict) -> str | None:
    """A protocol event as one readable log line (None for per-step events, which only move the
    progress bar)."""
    kind = event.get("event")

    def num(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    if kind == "start":
        keys = ("mode", "backbone", "weights", "strategy", "train_slices", "val_slices", "steps_total", "device")
        return "start: " + ", ".join(f"{k} {event[k]}" for k in keys if k in event)
    if kind == "epoch":
        values = ", ".join(f"{k.replace('_', ' ')} {num(v)}" for k, v in event.items()
                           if k not in ("event", "epoch", "epochs", "eta_s", "time_s")
                           and isinstance(v, (int, float)) and not isinstance(v, bool))
        return f"epoch {event.get('epoch')}: {values}"
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
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._cancelling = False
        self._kill_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Job":
        if self.state != "idle":
            raise RuntimeError(f"job already {self.state}")
        cmd = [self.python, "-m", "MedTransferLib", *self.args]
        if self.args and self.args[0] == "train" and "--progress" not in self.args:
            cmd += ["--progress", "json"]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      encoding="utf-8", errors="replace", bufsize=1, env=env)
        self.state = "running"
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
        if (self._cancelling and self._kill_at is not None and self._proc.poll() is None
                and time.monotonic() > self._kill_at):
            self._proc.kill()
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
        if self.state == "running" and self._proc.poll() is not None and not any(t.is_alive() for t in self._threads):
            if self._queue.empty():
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

    def cancel(self, grace: float = 10.0) -> None:
        """Ask the child to stop (SIGTERM → clean exit 130) without blocking; ``poll()`` kills it
        if it is still running ``grace`` seconds later."""
        if self.state != "running" or self._proc is None or self._cancelling:
            return
        self._cancelling = True
        self._kill_at = time.monotonic() + grace
        self._proc.send_signal(signal.SIGTERM)

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
        if rc == 0:
            self.state = "finished"
        elif rc == 130 or self._cancelling:
            self.state = "cancelled"
        else:
            self.state = "failed"
            if self.error is None:   # not a MedTransfer error: the last stderr line, no traceback
                lines = [ln for ln in self.log if ln.strip()]
                self.error = lines[-1] if lines else f"the process ended with code {rc}"
