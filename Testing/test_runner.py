"""Issue 5 (engine side): the child-process runner the Slicer module trains through — the
JSON-lines protocol and the job state machine, with real child processes running the real CLI."""

import time

import pytest

from MedTransferLib.core.runner import Job, event_text, parse_line

TINY = ["--backbone", "resnet18", "--weights", "none", "--strategy", "finetune", "--batch-size", "2",
        "--patch", "64"]


def test_protocol_lines():
    assert parse_line('{"event": "step", "step": 3}') == {"event": "step", "step": 3}
    assert parse_line("Loading weights...") is None
    assert parse_line('{"no_event": 1}') is None and parse_line("{broken") is None


@pytest.mark.slow   # child processes
def test_a_run_goes_from_running_to_finished_with_progress(blob_datalist, tmp_path):
    job = Job(["train", "--datalist", str(blob_datalist), "--out", str(tmp_path / "run"), "--epochs", "2",
               "--steps-per-epoch", "2", *TINY])
    assert job.state == "idle"
    job.start()
    assert job.state == "running"
    assert job.wait(timeout=300) == "finished"
    p = job.progress
    assert p.step == p.steps_total == 4 and p.fraction == 1.0 and p.loss is not None
    assert [h["epoch"] for h in p.history] == [1, 2] and "train_loss" in p.history[0]
    assert job.result["package"].endswith("model") and job.returncode == 0
    assert [e["event"] for e in job.events][0] == "start"
    metric, value = p.validation   # the status line's validation score: the last epoch's
    assert metric == "val_dice" and value == p.history[-1]["val_dice"]
    lines = [event_text(e) for e in job.events]
    assert lines[0].startswith("start: mode 2.5d, backbone resnet18")
    epoch_lines = [ln for ln in lines if ln and ln.startswith("epoch 2:")]
    assert len(epoch_lines) == 1 and "val dice" in epoch_lines[0]
    assert all(ln is None for e, ln in zip(job.events, lines) if e["event"] == "step")


def test_the_last_preview_says_it_shows_the_finished_model():
    seen = {"event": "preview", "step": 40, "covered": 0.0884, "weights": "best validated"}
    assert event_text(seen) == "preview: step 40, 9 % of the volume shown"
    assert event_text(dict(seen, weights="final", covered=0.32)) == \
        "preview: step 40, 32 % of the volume shown: the finished model"


def test_a_user_error_fails_with_a_readable_message(tmp_path):
    job = Job(["train", "--datalist", str(tmp_path / "missing.json"), "--out", str(tmp_path / "run")]).start()
    assert job.wait(timeout=120) == "failed"
    assert "does not exist" in job.error and "Traceback" not in job.error
    assert job.returncode == 2


@pytest.mark.slow   # child processes
def test_cancel_stops_the_child_within_seconds_and_leaves_no_partial_model(blob_datalist, tmp_path):
    out = tmp_path / "run"
    job = Job(["train", "--datalist", str(blob_datalist), "--out", str(out), "--epochs", "200",
               "--steps-per-epoch", "50", *TINY]).start()
    deadline = time.monotonic() + 120
    while job.progress.step < 2:
        job.poll()
        assert job.state == "running" and time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    job.cancel()
    assert job.wait(timeout=30) == "cancelled"
    assert time.monotonic() - t0 < 10
    assert job.returncode == 130 and any(e["event"] == "cancelled" for e in job.events)
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert all(not name.startswith(".") for name in leftovers)   # no half-written temp folders


def test_a_job_starts_once():
    job = Job(["sampledata"])   # quick: no torch
    job.start()
    with pytest.raises(RuntimeError, match="already running"):
        job.start()
    assert job.wait(timeout=120) == "finished"


@pytest.mark.slow   # child processes
def test_a_job_takes_over_the_waiting_spare_and_its_clock_starts_with_the_command(blob_datalist, tmp_path):
    import sys

    from MedTransferLib.core.launch import drop_spare, prepare_spare, waiting_spare
    from MedTransferLib.package.store import ModelPackage

    args = ["train", "--datalist", str(blob_datalist), "--epochs", "1", "--steps-per-epoch", "1", *TINY]
    try:
        spare = prepare_spare(sys.executable)
        assert prepare_spare(sys.executable) is spare and waiting_spare() is spare   # one, kept
        time.sleep(8)   # the spare waits: none of this is the job's time
        t0 = time.monotonic()
        job = Job([*args, "--out", str(tmp_path / "warm")]).start()
        assert job.warm and job.pid == spare.proc.pid and waiting_spare() is None   # taken: used once
        assert job.wait(timeout=300) == "finished", job.error
        done = next(e for e in job.events if e["event"] == "done")
        # the job's clock (its events' time_s, what --max-seconds counts) starts with the command
        assert done["time_s"] <= time.monotonic() - t0 + 0.5
        assert ModelPackage.load(job.result["package"]).manifest.complete
        cold = Job([*args, "--out", str(tmp_path / "cold")]).start()   # none waiting: a process of its own
        assert not cold.warm and cold.wait(timeout=300) == "finished"
    finally:
        drop_spare()


@pytest.mark.slow   # child processes
def test_a_spare_for_another_environment_or_one_that_died_is_not_used():
    import os
    import sys

    from MedTransferLib.core.launch import drop_spare, prepare_spare, waiting_spare

    env = dict(os.environ, MEDTRANSFER_EXAMPLE="a")
    try:
        spare = prepare_spare(sys.executable, env)
        other = Job(["sampledata"], env=dict(env, MEDTRANSFER_EXAMPLE="b")).start()
        assert not other.warm and other.pid != spare.proc.pid and waiting_spare() is spare
        assert other.wait(timeout=120) == "finished"
        assert prepare_spare(sys.executable) is not spare and spare.proc.poll() is not None   # replaced, ended
        dead = prepare_spare(sys.executable, env)
        dead.proc.kill()
        dead.proc.wait()
        job = Job(["sampledata"], env=env).start()
        assert not job.warm and waiting_spare() is None   # a dead spare is dropped, not handed the job
        assert job.wait(timeout=120) == "finished"
    finally:
        drop_spare()


@pytest.mark.slow   # child processes
def test_a_spare_that_ends_as_it_is_handed_the_job_leaves_the_job_to_a_new_process(monkeypatch):
    import sys

    from MedTransferLib.core.launch import Spare, drop_spare, prepare_spare

    def gone(self, args):   # the spare died between the check and the command
        self.proc.kill()
        self.proc.wait()
        raise BrokenPipeError("the spare's stdin is closed")

    try:
        spare = prepare_spare(sys.executable)
        monkeypatch.setattr(Spare, "hand_over", gone)
        job = Job(["sampledata"]).start()
        assert not job.warm and job.pid != spare.proc.pid
        assert job.wait(timeout=120) == "finished"
    finally:
        drop_spare()
