"""Stopping work started through Slicer's PythonSlicer launcher (issue 16, finding 2).

The launcher starts the interpreter as its own child and forwards no signal
(slicer_harness/launcher.py behaves the same way). Before the fix, Cancel sent SIGTERM to the
launcher only: the interpreter trained on, wrote the model, and the job still said "cancelled;
no partial model was written". These tests run the real CLI through that launcher and look at
the real processes with psutil."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from slicer_harness.launcher import write_launcher

from MedTransferLib.core.launch import (
    drop_spare,
    popen_options,
    prepare_spare,
    waiting_spare,
)
from MedTransferLib.core.rundir import read_state
from MedTransferLib.core.runner import Job

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name == "nt", reason="the launcher stand-in is a POSIX script")]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "resnet18", "--weights", "none", "--strategy", "finetune", "--batch-size", "2",
        "--patch", "64", "--patience", "1000"]


def _long_training(datalist, out):
    return ["train", "--datalist", str(datalist), "--out", str(out), "--epochs", "500",
            "--steps-per-epoch", "50", *TINY]


def _wait_for_steps(job, steps=2, timeout=120):
    deadline = time.monotonic() + timeout
    while job.progress.step < steps:
        job.poll()
        assert job.state == "running", (job.state, job.error, job.log[-5:])
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


def _gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_cancel_through_the_launcher_stops_the_interpreter_and_leaves_no_model(blob_datalist, tmp_path):
    launcher = write_launcher(tmp_path)
    out = tmp_path / "run"
    job = Job(_long_training(blob_datalist, out), python=str(launcher)).start()
    _wait_for_steps(job)
    tree = [job.pid] + [c.pid for c in psutil.Process(job.pid).children(recursive=True)]
    assert len(tree) >= 2, "the launcher should have started the interpreter as its child"
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(timeout=10) == "cancelled"
    assert _gone(tree, timeout=5.0 - (time.monotonic() - t0)), "a process of the tree outlived Cancel by 5 s"
    assert not (out / "model").exists()
    assert read_state(out)["state"] == "cancelled"   # the interpreter itself stopped cleanly


def test_a_model_written_before_cancel_took_effect_is_reported_as_written(tmp_path):
    # a 'child' that reports its model written, then lingers: Cancel comes too late to matter
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\n" + textwrap.dedent('''
        import json, sys, time
        print(json.dumps({"event": "done", "package": "/runs/a/model"}), flush=True)
        time.sleep(60)
    '''), encoding="utf-8")
    fake.chmod(0o755)
    job = Job(["train"], python=str(fake)).start()
    while job.result is None:
        job.poll()
        time.sleep(0.02)
    job.cancel()
    assert job.wait(timeout=10) == "finished" and job.result["package"] == "/runs/a/model"


def test_cancel_without_a_written_model_is_cancelled(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport time\nprint('working', flush=True)\ntime.sleep(60)\n",
                    encoding="utf-8")
    fake.chmod(0o755)
    job = Job(["train"], python=str(fake)).start()
    while not job.log:
        job.poll()
        time.sleep(0.02)
    job.cancel(grace=1.0)
    assert job.wait(timeout=10) == "cancelled" and job.result is None


_SLICER = '''
import json, sys, time
sys.path.insert(0, {root!r})
from MedTransferLib.core.runner import Job
job = Job({args!r}, python={launcher!r}).start()
while job.progress.step < 1:
    job.poll(); time.sleep(0.05)
    assert job.state == "running", job.log
import psutil
print(json.dumps([job._control, job.pid] + [c.pid for c in psutil.Process(job.pid).children(recursive=True)]),
      flush=True)
{ending}
'''


@pytest.mark.parametrize("ending, how", [("sys.exit(0)", "exits"), ("time.sleep(600)", "is killed")])
def test_no_training_outlives_the_application(blob_datalist, tmp_path, ending, how):
    """Application exit (atexit) and an application that dies with SIGKILL (the child's watchdog
    sees its parent gone, its stdout's reader is gone) both end the training; the killed
    application's child stops as Cancel does and removes the control folder the application
    can no longer remove."""
    launcher = write_launcher(tmp_path)
    out = tmp_path / "run"
    code = _SLICER.format(root=str(ROOT), args=_long_training(blob_datalist, out), launcher=str(launcher),
                          ending=ending)
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    control, *tree = json.loads(app.stdout.readline())
    assert os.path.isdir(control)
    if how == "is killed":
        app.kill()
    app.wait(timeout=30)
    assert _gone(tree, timeout=10), f"training outlived an application that {how}"
    assert not (out / "model").exists() and not os.path.exists(control)
    if how == "is killed":
        assert read_state(out)["state"] == "cancelled"   # not "failed" on a broken pipe


_SPARE = '''
import json, sys, time
sys.path.insert(0, {root!r})
import psutil
from MedTransferLib.core.launch import prepare_spare
spare = prepare_spare({launcher!r})
while not psutil.Process(spare.proc.pid).children():   # the launcher has started the interpreter
    time.sleep(0.05)
print(json.dumps([spare.control, spare.proc.pid]
                 + [c.pid for c in psutil.Process(spare.proc.pid).children(recursive=True)]), flush=True)
{ending}
'''


@pytest.mark.parametrize("ending, how", [("sys.exit(0)", "exits"), ("time.sleep(600)", "is killed")])
def test_no_spare_outlives_the_application(tmp_path, ending, how):
    """A spare (core/launch.py) behind the launcher ends with the application: at its exit
    (atexit), or — killed — when its stdin closes (Slicer's launcher forwards stdin to the
    interpreter, as CTK's AppLauncher does since 2018; so does the stand-in)."""
    launcher = write_launcher(tmp_path)
    code = _SPARE.format(root=str(ROOT), launcher=str(launcher), ending=ending)
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    control, *tree = json.loads(app.stdout.readline())
    assert len(tree) >= 2 and os.path.isdir(control)
    if how == "is killed":
        app.kill()
    app.wait(timeout=30)
    # exits: its tree killed at once; killed: the spare reads the end of its stdin once its
    # imports are done (a few seconds)
    assert _gone(tree, timeout=1 if how == "exits" else 60), f"a spare outlived an application that {how}"
    assert not os.path.exists(control)   # killed: the spare removed it


def test_a_spare_behind_the_launcher_runs_the_job_and_cancel_stops_its_tree(blob_datalist, tmp_path):
    launcher = write_launcher(tmp_path)
    out = tmp_path / "run"
    spare = prepare_spare(str(launcher))
    try:
        job = Job(_long_training(blob_datalist, out), python=str(launcher)).start()
        assert job.warm and job.pid == spare.proc.pid and waiting_spare() is None
        _wait_for_steps(job)
        tree = [job.pid] + [c.pid for c in psutil.Process(job.pid).children(recursive=True)]
        assert len(tree) >= 2
        job.cancel()
        assert job.wait(timeout=10) == "cancelled"
        assert _gone(tree, timeout=5.0), "a process of the spare's tree outlived Cancel by 5 s"
        assert read_state(out)["state"] == "cancelled" and not (out / "model").exists()
    finally:
        drop_spare()


def test_windows_children_get_their_own_group_and_no_console_window():
    flags = popen_options("nt")["creationflags"]
    assert flags & 0x08000000 and flags & 0x00000200   # CREATE_NO_WINDOW, CREATE_NEW_PROCESS_GROUP
    assert popen_options("posix") == {"start_new_session": True}
