"""The child side of the runner: stop when asked, or when the process that started us is gone.

Slicer starts the CLI through ``PythonSlicer``, a launcher that starts the real interpreter as
its own child and forwards no signal. A signal sent to the launcher therefore never reaches
the training, so the runner (:mod:`.runner`) asks in a way that needs no signal: it names a
*stop file* in ``MEDTRANSFER_STOP_FILE`` and its own process id in ``MEDTRANSFER_PARENT_PID``.
A watchdog thread here polls both and, when the file appears or the parent (Slicer) has died,
raises ``KeyboardInterrupt`` in the main thread — the same clean stop as Ctrl-C or SIGTERM
(exit code 130, only complete checkpoints left). This is what works on Windows too, where
there are no POSIX signals to send through a launcher.
"""

from __future__ import annotations

import _thread
import errno
import os
import threading
from pathlib import Path

STOP_FILE_ENV = "MEDTRANSFER_STOP_FILE"
PARENT_PID_ENV = "MEDTRANSFER_PARENT_PID"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (psutil when installed; else the OS's own call)."""
    if pid <= 0:
        return False
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:
        pass
    if os.name == "nt":   # no psutil: ask Windows directly
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)   # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x00000102   # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


class Watchdog:
    """Polls the stop file and the parent; calls ``on_stop(reason)`` once (default: interrupt the
    main thread). Started by :func:`start_from_environment`; a daemon thread, it never keeps the
    process alive."""

    def __init__(self, stop_file: str | None, parent_pid: int | None, interval: float = 0.5, on_stop=None):
        self.stop_file = Path(stop_file) if stop_file else None
        self.parent_pid = parent_pid
        self.interval = interval
        self.on_stop = on_stop or (lambda reason: _thread.interrupt_main())
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medtransfer-watchdog", daemon=True)

    def check(self) -> str | None:
        """Why this process should stop now, or None."""
        if self.stop_file is not None and self.stop_file.exists():
            return "stop requested"
        if self.orphaned():
            return f"the process that started this one ({self.parent_pid}) has ended"
        return None

    def orphaned(self) -> bool:
        """Whether the process that started this one has ended."""
        return bool(self.parent_pid) and not pid_alive(self.parent_pid)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            reason = self.check()
            if reason:
                self.reason = reason
                self.on_stop(reason)
                return

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()


def reader_gone(exc: OSError, windows: bool | None = None) -> bool:
    """Whether a failed write means the stream's reader has gone: a broken pipe, or on Windows
    EINVAL, which a write to a broken pipe can raise there instead (CPython issue #79935)."""
    windows = os.name == "nt" if windows is None else windows
    return isinstance(exc, BrokenPipeError) or (windows and exc.errno == errno.EINVAL)


def write_or_silence(stream, text: str) -> bool:
    """Write ``text`` to ``stream`` (stdout or stderr) and flush. If its reader has gone (Slicer
    ended, or a pipe such as ``| head`` closed), point the stream at the null device instead —
    so that later writes and the exit's flush succeed — and return False."""
    try:
        stream.write(text)
        stream.flush()
        return True
    except OSError as exc:
        if not reader_gone(exc):
            raise
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        except (OSError, ValueError):   # no file descriptor (a test's stream): nothing to silence
            pass
        finally:
            os.close(null)
        return False


def remove_control_folder() -> None:
    """Remove the (empty) folder of the runner's stop file: the process that made it, and would
    remove it, is gone. A folder that holds anything is left alone."""
    stop_file = os.environ.get(STOP_FILE_ENV)
    if stop_file:
        try:
            os.rmdir(os.path.dirname(stop_file))
        except OSError:
            pass


def start_from_environment(env=None) -> Watchdog | None:
    """Start a watchdog if the runner asked for one (its environment variables are set)."""
    env = os.environ if env is None else env
    stop_file = env.get(STOP_FILE_ENV) or None
    try:
        parent = int(env.get(PARENT_PID_ENV) or 0) or None
    except ValueError:
        parent = None
    if stop_file is None and parent is None:
        return None
    return Watchdog(stop_file, parent).start()
