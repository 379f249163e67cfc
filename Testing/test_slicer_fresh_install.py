"""Issue 16, finding 1: on a fresh install (PyTorch extension present, torch not yet installed)
the module's setup imported torch and stopped with ModuleNotFoundError before offering anything.

The scenario (slicer_harness/fresh_install_scenario.py) runs in its own Python process in which
importing torch, torchvision or monai raises, from the first line on; it goes from setup through
Install to a trained model applied to a volume, and checks that Slicer's process never tried to
import them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")
pytest.importorskip("PyQt5")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name == "nt", reason="the PythonSlicer stand-in is a POSIX script")]

TESTING = Path(__file__).resolve().parent


def test_fresh_install_scenario_in_a_process_without_torch(tmp_path):
    env = dict(os.environ, MEDTRANSFER_BLOCK="torch,torchvision,monai", QT_QPA_PLATFORM="offscreen",
               PYTHONPATH=os.pathsep.join([str(TESTING), str(TESTING.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "slicer_harness.blocker", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "basetemp"),
                           str(TESTING / "slicer_harness" / "fresh_install_scenario.py")],
                          cwd=TESTING.parent, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
