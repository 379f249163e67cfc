"""The run directory of a training: checked before any work, locked while in use, and labelled
with its state, so a failure is explained and never half-hidden.

- **Before training**: the folder is created and must be writable with room for a model
  (``MIN_FREE_MB``); otherwise the run stops at once with the folder and the fix.
- **Lock**: ``.medtransfer.lock`` (created exclusively, holding host and pid). A second run on the
  same folder refuses while the first is alive; a lock left by a process that no longer exists
  (kill -9, power loss) is taken over.
- **State**: ``run.json`` (written atomically) says ``running``, then ``finished``, ``failed``
  (with the message) or ``cancelled`` (Ctrl-C, SIGTERM, Slicer's Cancel). The model package
  itself is written atomically by :func:`package.save_package`, so whatever ``model/`` holds is a
  complete checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import socket
from pathlib import Path

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import write_json
from MedTransferLib.core.lifeline import (
    pid_alive,  # (os.kill(pid, 0) would end the process on Windows)
)

LOCK = ".medtransfer.lock"
STATE = "run.json"
MIN_FREE_MB = 200


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove it can take a model: writable, and ≥ MIN_FREE_MB free."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0")
        probe.unlink()
    except OSError as exc:
        raise MedTransferError(f"run folder '{out}' cannot be written ({exc.strerror or exc}); choose a "
                               f"folder you can write to with --out") from None
    free_mb = shutil.disk_usage(out).free / 2**20
    if free_mb < MIN_FREE_MB:
        raise MedTransferError(f"run folder '{out}' has only {free_mb:.0f} MB free; a model and its "
                               f"checkpoints need at least {MIN_FREE_MB} MB — free space or choose another --out")


def _holder(lock: Path) -> tuple[str, int]:
    """(host, pid) written in a lock file; ("", -1) if it cannot be read."""
    try:
        host, pid = lock.read_text(encoding="utf-8").split()
        return host, int(pid)
    except (OSError, ValueError):
        return "", -1


def _stale(host: str, pid: int) -> bool:
    """A lock written on this machine by a process that no longer exists (kill -9, power loss)."""
    return host == socket.gethostname() and pid > 0 and not pid_alive(pid)


def _in_use(out, lock: Path, host: str, pid: int) -> MedTransferError:
    where = f"process {pid} on {host}" if pid > 0 else "another run"
    return MedTransferError(f"run folder '{out}' is in use by {where}; wait for it to finish or "
                            f"choose another --out (if no run is active, delete {lock})")


def _acquire(out: Path) -> Path:
    lock = out / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            host, pid = _holder(lock)
            if _stale(host, pid):
                lock.unlink(missing_ok=True)
                continue
            raise _in_use(out, lock, host, pid) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        return lock
    raise MedTransferError(f"could not lock run folder '{out}'; choose another --out")


def ensure_free(out) -> None:
    """Refuse now if a live run holds ``out`` (before anything is written into it); an unreadable
    lock is left for the run itself to judge."""
    lock = Path(out) / LOCK
    if not lock.exists():
        return
    host, pid = _holder(lock)
    if pid > 0 and not _stale(host, pid):
        raise _in_use(out, lock, host, pid)


def read_state(out) -> dict | None:
    import json

    path = Path(out) / STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_directory(out, command: str = "train"):
    """Check, lock and label ``out`` for the duration of a run (see the module docstring)."""
    out = Path(out)
    check_writable(out)
    lock = _acquire(out)
    state = {"state": "running", "command": command, "pid": os.getpid(), "started": _now()}
    try:
        write_json(out / STATE, state)
        try:
            yield out
        except KeyboardInterrupt:
            write_json(out / STATE, {**state, "state": "cancelled", "ended": _now()})
            raise
        except MedTransferError as exc:
            write_json(out / STATE, {**state, "state": "failed", "ended": _now(), "message": str(exc)})
            raise
        except BaseException as exc:
            write_json(out / STATE, {**state, "state": "failed", "ended": _now(),
                                     "message": f"{type(exc).__name__}: {str(exc)[:300]}"})
            raise
        write_json(out / STATE, {**state, "state": "finished", "ended": _now()})
    finally:
        lock.unlink(missing_ok=True)
