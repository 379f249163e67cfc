"""Point 10: the CLI (`medtransfer` and `python -m MedTransferLib`): JSON lines, one-line errors."""

import json
import re
import subprocess
import sys

import pytest
from conftest import digest

import MedTransferLib as mt
from MedTransferLib.app.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "MedTransferLib", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.mark.slow   # three interpreters loading every backbone (~25 s)
def test_python_m_skips_the_teardown_and_loses_no_output(capsys, tmp_path):
    # `python -m MedTransferLib` (how the panel and the bench start a job) and the `medtransfer`
    # command end with os._exit once main() has returned and both streams are flushed: an exit
    # handler never runs, the piped output is whole, and the exit status is main()'s. Run without
    # coverage, which keeps the teardown.
    import os
    from importlib.metadata import entry_points

    assert entry_points(group="console_scripts")["medtransfer"].value == "MedTransferLib.app.cli:run"

    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    script = ("import atexit, runpy, sys; atexit.register(lambda: print('TEARDOWN', flush=True)); "
              "sys.argv = ['medtransfer'] + sys.argv[1:]; runpy.run_module('MedTransferLib', run_name='__main__')")
    assert main(["backbones"]) == 0
    expected = capsys.readouterr().out
    r = subprocess.run([sys.executable, "-c", script, "backbones"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout == expected and "efficientnet-lite0" in expected
    assert "TEARDOWN" not in r.stdout
    bad = subprocess.run([sys.executable, "-c", script, "predict", "--model", tmp_path / "none", "--image",
                          tmp_path / "none.nrrd", "--out", tmp_path / "o.nrrd"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 2 and "error" in bad.stderr and "TEARDOWN" not in bad.stdout
    # the same under coverage's measurement: the teardown runs (coverage writes its data then)
    cov = subprocess.run([sys.executable, "-c", "import coverage; " + script, "backbones"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert cov.returncode == 0 and cov.stdout == expected + "TEARDOWN\n"


@pytest.mark.slow   # end to end
def test_train_predict_evaluate_through_the_cli(blob_datalist, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--datalist", blob_datalist, "--out", out, "--backbone", "resnet18", "--weights", "none",
                "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert {"step", "validation"} <= {e["event"] for e in events}
    img = blob_datalist.parent / "img1.nii.gz"
    before = digest(img)
    r = run_cli("predict", "--model", out, "--image", img, "--out", tmp_path / "seg.nrrd",
                "--table", tmp_path / "vol.csv")
    assert r.returncode == 0, r.stderr
    assert digest(img) == before
    assert (tmp_path / "vol.csv").read_text(encoding="utf-8").splitlines()[0].startswith("case,structure,value,voxels,volume_ml")
    assert mt.read_case(tmp_path / "seg.nrrd").geometry.matches(mt.read_case(img).geometry) == []
    r = run_cli("evaluate", "--pred", tmp_path / "seg.nrrd", "--label", blob_datalist.parent / "lab1.nii.gz",
                "--model", out, "--out", tmp_path / "m.csv", "--slices", "0-7")
    assert r.returncode == 0, r.stderr
    assert "bright" in r.stdout and "Dice" in r.stdout
    header = (tmp_path / "m.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "case,structure,value,dice,hd95_mm,volume_pred_ml,volume_ref_ml"


@pytest.mark.parametrize("args,message", [
    (["train", "--datalist", "missing.json", "--out", "x"], "datalist 'missing.json' does not exist"),
    (["predict", "--model", "nomodel", "--image", "a.nii.gz", "--out", "s.nii.gz"], "does not exist"),
    (["train", "--datalist", "{dl}", "--out", "x", "--backbone", "resnet-18"], "did you mean 'resnet18'"),
    (["train", "--datalist", "{dl}", "--out", "x", "--slices", "2"], "odd number"),
    # the network pads a crop up to 32 pixels: 16-pixel crops would train in batches of 1024, 3/4 of it padding
    (["train", "--datalist", "{dl}", "--out", "x", "--patch", "16"], "--patch 16 is below efficientnet-lite0's 32"),
    (["predict", "--model", "{dl}", "--image", "a.nii.gz", "--out", "s.nii.gz"], "is a file, not a model folder"),
])
def test_user_errors_are_one_line_without_traceback(blob_datalist, tmp_path, args, message, capsys, monkeypatch):
    args = [a.replace("{dl}", str(blob_datalist)) for a in args]
    if args[0] == "predict":   # one of them through a real process: what a terminal shows
        r = run_cli(*args, cwd=tmp_path)
        code, err = r.returncode, r.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, err = main(args), capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("medtransfer: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_an_output_never_overwrites_an_input(blob_datalist, capsys):
    """Checked before any work: the model need not even exist for the refusal to come first."""
    image = blob_datalist.parent / "img0.nii.gz"
    before = digest(image)
    for args, message in (
            (["predict", "--model", "m", "--image", str(image), "--out", str(image)],
             "--out '.*img0.nii.gz' is the same file as the input --image"),
            (["evaluate", "--pred", str(image), "--label", str(image), "--out", str(image)],
             "--out '.*img0.nii.gz' is the same file as the input --pred"),
            (["predict", "--model", "m", "--image", str(image), "--out", "s.nii.gz", "--table", "s.nii.gz"],
             "--table 's.nii.gz' is the same file as the output --out")):
        assert main(args) == 2
        assert re.search(message, capsys.readouterr().err)
    assert digest(image) == before


@pytest.mark.slow   # builds every registered network to count its parameters
def test_console_script_entry_point_is_the_same_main(capsys):
    assert main(["backbones"]) == 0
    listing = capsys.readouterr().out
    assert "efficientnet-lite0" in listing and "resnet50" in listing
