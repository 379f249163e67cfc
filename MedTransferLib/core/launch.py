"""Starting a child ``python -m MedTransferLib``: in a process group of its own, with its stop file
and its parent's pid (core/lifeline.py) — at once, or ahead of time as a *spare*.

A spare is a child started before there is work for it: the interpreter up, torch, MONAI,
SimpleITK and the engine imported (``python -m MedTransferLib --spare``, app/cli.py), waiting for
one command on its stdin. The next job with the same Python and environment takes it over
(core/runner.py ``Job.start``) and skips those seconds — 4–7 s of every Train, Update and Apply on
a 2-core CPU, a tenth of a one-minute Update and about half of an Apply of one volume. There is at
most one spare; it is used once (each job still gets a fresh process: nothing carries over from
one job to the next) and costs the memory of an idle interpreter with torch loaded while it
waits. When its parent goes, its stdin closes and it exits; :func:`drop_spare` ends it at once.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile

from MedTransferLib.core.lifeline import PARENT_PID_ENV, STOP_FILE_ENV

SPARE_FLAG = "--spare"
SPARE_ENV = "MEDTRANSFER_SPARE"   # "0": the Slicer panel starts no spare (core/launch.py)


def popen_options(os_name: str | None = None) -> dict:
    """How the child is started so that its whole tree can be stopped: a new session (POSIX) or
    a new process group with no console window (Windows)."""
    if (os_name or os.name) == "nt":
        create_new_process_group, create_no_window = 0x00000200, 0x08000000
        return {"creationflags": create_new_process_group | create_no_window}
    return {"start_new_session": True}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (empty without psutil or once ``pid`` is gone)."""
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:   # no psutil, process gone, access denied
        return []


def _kill_pids(pids) -> None:
    try:
        import psutil
    except ImportError:
        psutil = None
    for pid in pids:
        try:
            if psutil is not None:
                psutil.Process(pid).kill()
            elif os.name != "nt":
                os.kill(pid, signal.SIGKILL)
        except Exception:   # already gone
            pass


def kill_tree(proc: subprocess.Popen, seen=()) -> None:
    """Kill a child started by :func:`launch` and everything below it, whatever a launcher in
    between did: its process group (POSIX) or ``taskkill /T`` (Windows), every descendant alive
    now or ``seen`` earlier (psutil), and the child itself."""
    pids = set(seen) | set(descendants(proc.pid))
    if os.name != "nt":
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the group outlives its leader
        except (ProcessLookupError, PermissionError):
            pass
    elif proc.poll() is None:
        subprocess.call(["taskkill", "/F", "/T", "/PID", str(proc.pid)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_options())
    _kill_pids(pids)
    if proc.poll() is None:
        proc.kill()


def child_environment(env: dict | None) -> dict:
    """The environment a job's child runs with (before its own stop file and parent are added)."""
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launch(python: str, args: list[str], env: dict, stdin=subprocess.DEVNULL):
    """Start ``python -m MedTransferLib ARGS`` with ``env`` (:func:`child_environment`); returns
    the process and its control folder (where its stop file goes)."""
    control = tempfile.mkdtemp(prefix="medtransfer-job-")
    env = dict(env, **{STOP_FILE_ENV: os.path.join(control, "stop"), PARENT_PID_ENV: str(os.getpid())})
    proc = subprocess.Popen([python, "-m", "MedTransferLib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=stdin, text=True, encoding="utf-8",
                            errors="replace", bufsize=1, env=env, **popen_options())
    return proc, control


class Spare:
    """One child started ahead of time (see the module's docstring)."""

    def __init__(self, python: str, env: dict):
        self.python, self.env = python, env
        self.proc, self.control = launch(python, [SPARE_FLAG], env, stdin=subprocess.PIPE)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fits(self, python: str, env: dict) -> bool:
        return self.alive() and (python, env) == (self.python, self.env)

    def hand_over(self, args: list[str]):
        """Send the command (the arguments after ``-m MedTransferLib``); returns the process and
        its control folder, now the job's."""
        self.proc.stdin.write(json.dumps(list(args)) + "\n")
        self.proc.stdin.close()
        return self.proc, self.control

    def close(self) -> None:
        """End it at once, its whole tree (it holds no work; left alone, a closed stdin ends it
        once its imports are done)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        kill_tree(self.proc)
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        shutil.rmtree(self.control, ignore_errors=True)


_spare: Spare | None = None


def prepare_spare(python: str, env: dict | None = None) -> Spare:
    """Make sure a spare for ``python`` and ``env`` (as a job would pass them) is waiting; any
    other spare is ended first."""
    global _spare
    env = child_environment(env)
    if _spare is not None and _spare.fits(python, env):
        return _spare
    drop_spare()
    _spare = Spare(python, env)
    return _spare


def take_spare(python: str, env: dict | None = None) -> Spare | None:
    """The waiting spare if it fits this job (same Python and environment, still alive), handed
    over to it — none is left waiting; else None (the job starts its own process)."""
    global _spare
    spare, env = _spare, child_environment(env)
    if spare is not None and not spare.alive():   # it failed to start (e.g. no torch yet)
        drop_spare()
        return None
    if spare is None or not spare.fits(python, env):
        return None
    _spare = None
    return spare


def waiting_spare() -> Spare | None:
    """The spare waiting now, if any."""
    return _spare


@atexit.register
def drop_spare() -> None:
    """End the waiting spare, if any (module cleanup, application exit)."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None:
        spare.close()
