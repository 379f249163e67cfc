"""A stand-in for Slicer's ``PythonSlicer`` launcher.

The real one (CTK's AppLauncher) sets up the environment, starts the real interpreter
(``python-real``) as its own child process in the same process group, waits for it, and exits
with its code. It installs no signal handlers and forwards no signal: SIGTERM ends the launcher
and leaves the interpreter running, still holding the stdout pipe. This script does exactly
that — nothing more — so the runner is tested against the launcher's real hazard.

:func:`write_launcher` writes it as an executable named ``PythonSlicer`` whose interpreter is
this test session's Python (``sys.executable``).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

_BODY = '''
import subprocess
import sys

# same process group, stdio inherited, no signal handling: like CTK's AppLauncher
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]]))
'''


def write_launcher(folder) -> Path:
    """Write ``folder/PythonSlicer`` (on Windows a ``.bat`` would be needed; these tests are POSIX)."""
    path = Path(folder) / "PythonSlicer"
    path.write_text(f"#!{sys.executable}\n" + _BODY.format(python=sys.executable), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def launcher_on_path(folder, monkeypatch) -> Path:
    """Write the launcher and put its folder first on PATH, where Slicer puts the real one."""
    path = write_launcher(folder)
    monkeypatch.setenv("PATH", str(path.parent) + os.pathsep + os.environ.get("PATH", ""))
    return path
