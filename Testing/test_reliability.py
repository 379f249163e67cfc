"""Issue 7: bad input, faults and untrusted files — each failure explained, inputs untouched,
nothing half-written, nothing executed."""

import gzip
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import blob_volume, digest, write_volume

import MedTransferLib as mt
from MedTransferLib.app.cli import main
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.rundir import read_state

TINY = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=1, steps_per_epoch=1, batch_size=2, patch=64)


def _datalist(folder: Path, image, label, extra=None, spacing=(1.0, 1.0, 1.0), labels=None, ext=".nii.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(folder / f"img{ext}", image, spacing)
    write_volume(folder / f"lab{ext}", label, spacing)
    entry = {"image": f"img{ext}", "label": f"lab{ext}", **(extra or {})}
    path = folder / "dataset.json"
    path.write_text(json.dumps({"labels": labels or {"0": "background", "1": "bright", "2": "dim"},
                                "modality": "MR", "training": [entry]}), encoding="utf-8")
    return path


@pytest.mark.parametrize("case, message", [
    ("empty label", "appear in no training label map"),
    ("no labelled slice", "has no labelled slice"),
    ("float64 extremes", "beyond the float32 range"),
    ("inf voxels", "NaN/Inf"),
    ("constant image", "constant"),
])
def test_bad_training_input_is_named_and_nothing_is_written(tmp_path, case, message):
    image, label = blob_volume()
    extra = None
    if case == "empty label":
        label = np.zeros_like(label)
    elif case == "no labelled slice":
        extra = {"labelled_slices": []}
    elif case == "float64 extremes":
        image = image.astype(np.float64) * 1e300
    elif case == "inf voxels":
        image = image.copy()
        image[4, 10, 10] = np.inf
    elif case == "constant image":
        image = np.full_like(image, 7.0)
    # NRRD keeps Inf (SimpleITK's NIfTI reader turns it into 0)
    dl = _datalist(tmp_path / "data", image, label, extra, ext=".nrrd" if case == "inf voxels" else ".nii.gz")
    before = digest(*sorted((tmp_path / "data").iterdir()))
    with pytest.raises(MedTransferError, match=message):
        mt.train(dl, tmp_path / "run", **TINY)
    assert digest(*sorted((tmp_path / "data").iterdir())) == before          # inputs untouched
    assert not (tmp_path / "run" / "model").exists()                          # no package at all
    state = read_state(tmp_path / "run")
    assert state is None or (state["state"] == "failed" and message.split()[0] in state["message"])


def test_truncated_and_corrupt_files_of_each_format_are_refused(tmp_path):
    image, _ = blob_volume()
    nrrd = write_volume(tmp_path / "a.nrrd", image)
    data = nrrd.read_bytes()
    nrrd.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedTransferError, match="could not be read"):
        mt.read_case(nrrd)
    good = write_volume(tmp_path / "b.nii.gz", image)
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "c.nii.gz").write_bytes(gzip.compress(raw[:200]))          # header only
    with pytest.raises(MedTransferError, match="could not be read"):
        mt.read_case(tmp_path / "c.nii.gz")
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "001.dcm").write_bytes(b"DICM" + os.urandom(300))
    with pytest.raises(MedTransferError):
        mt.read_case(folder)


def test_paths_with_spaces_and_non_ascii_characters_work_end_to_end(tmp_path):
    image, label = blob_volume()
    folder = tmp_path / "Patient ü 名前 data"
    dl = _datalist(folder, image, label)
    run = mt.train(dl, tmp_path / "Läufe mit Leerzeichen" / "run 1", **TINY)
    out = tmp_path / "Ergebnis ß.nii.gz"
    assert main(["predict", "--model", str(run.package), "--image", str(folder / "img.nii.gz"), "--out", str(out)]) == 0
    pred, geo = mt.read_image(out)
    assert pred.shape == image.shape


def test_extreme_anisotropy_trains_and_predicts_in_the_input_geometry(tmp_path):
    image, label = blob_volume()
    dl = _datalist(tmp_path / "data", image, label, spacing=(0.5, 0.5, 10.0))
    run = mt.train(dl, tmp_path / "run", **TINY)
    case = mt.read_case(tmp_path / "data" / "img.nii.gz")
    pred = mt.predict(run.package, case)
    assert pred.label.shape == image.shape and np.allclose(case.geometry.spacing, (0.5, 0.5, 10.0))


def test_uint16_extremes_are_standardised_not_overflowed(tmp_path):
    image, label = blob_volume()
    img16 = np.where(label > 0, 65535, 0).astype(np.uint16)
    img16[0, 0, 0] = 1
    dl = _datalist(tmp_path / "data", img16, label)
    run = mt.train(dl, tmp_path / "run", **TINY)
    assert np.isfinite(run.history[-1]["train_loss"])


def test_available_memory_is_what_the_system_can_give_not_only_free_pages(monkeypatch, tmp_path):
    """MemAvailable (free pages plus what the page cache gives back), not MemFree; within a cgroup
    v2 limit when there is one; the user's cap first."""
    from MedTransferLib.training.run import available_memory_mb

    monkeypatch.delenv("MEDTRANSFER_MEMORY_LIMIT_MB", raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:          512000 kB\nMemAvailable:    8192000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert available_memory_mb(str(meminfo), str(cgroup)) == pytest.approx(8000.0)          # no cgroup files
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(str(2 ** 30) + "\n")
    assert available_memory_mb(str(meminfo), str(cgroup)) == pytest.approx(8000.0)          # no limit set
    (cgroup / "memory.max").write_text(str(3 * 2 ** 30) + "\n")
    assert available_memory_mb(str(meminfo), str(cgroup)) == pytest.approx(2048.0)          # limit − used
    (cgroup / "memory.max").write_text(str(64 * 2 ** 30) + "\n")
    assert available_memory_mb(str(meminfo), str(cgroup)) == pytest.approx(8000.0)          # the smaller one
    assert available_memory_mb(str(tmp_path / "no-such-file"), str(cgroup)) is None          # not Linux
    monkeypatch.setenv("MEDTRANSFER_MEMORY_LIMIT_MB", "1234")
    assert available_memory_mb(str(meminfo), str(cgroup)) == 1234.0
    monkeypatch.setenv("MEDTRANSFER_MEMORY_LIMIT_MB", "lots")
    with pytest.raises(MedTransferError, match="not a number"):
        available_memory_mb(str(meminfo), str(cgroup))


def test_a_volume_larger_than_memory_allows_is_refused_before_any_work(tmp_path, monkeypatch):
    image, label = blob_volume()
    dl = _datalist(tmp_path / "data", image, label)
    monkeypatch.setenv("MEDTRANSFER_MEMORY_LIMIT_MB", "50")   # a user's cap (or a small machine)
    with pytest.raises(MedTransferError, match=r"only 50 MB are available.*smaller --batch-size"):
        mt.train(dl, tmp_path / "run", **{**TINY, "batch_size": 8, "patch": 128})
    monkeypatch.setenv("MEDTRANSFER_MEMORY_LIMIT_MB", "lots")
    with pytest.raises(MedTransferError, match="not a number"):
        mt.train(dl, tmp_path / "run", **TINY)



def test_a_datalist_too_large_for_memory_is_refused_from_its_headers_before_reading(tmp_path, monkeypatch):
    """The same refusal, with the same numbers, from the files' headers — no volume is read (a
    Decathlon task of hundreds of 4D MRIs would fill the memory while being read). A 4D file's
    volumes count as channels."""
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.run import check_memory

    image, label = blob_volume()
    folder = tmp_path / "data"
    dl = _datalist(folder, image, label)
    sitk.WriteImage(sitk.JoinSeries([sitk.ReadImage(str(folder / "img.nii.gz"))] * 3), str(folder / "img4d.nii.gz"))
    data = json.loads(dl.read_text())
    data["training"].append({"image": "img4d.nii.gz", "label": "lab.nii.gz"})
    data["training"][0]["image"] = ["img.nii.gz"] * 3
    dl.write_text(json.dumps(data))
    monkeypatch.setenv("MEDTRANSFER_MEMORY_LIMIT_MB", "20")
    config = {**TINY, "batch_size": 2, "patch": 64}
    with pytest.raises(MedTransferError) as after_reading:        # the check on the cases read
        check_memory(mt.load_datalist(dl).load_cases(), TrainConfig(**config))
    assert mt.load_datalist(dl).stored_voxels() == (2 * 3 * image.size, 2 * label.size, 3)
    (folder / "junk.nrrd").write_text("not an image")                 # what no header tells is not counted
    (folder / "junk.json").write_text(json.dumps({**data, "training": [{"image": "junk.nrrd", "label": "lab.nii.gz"}]}))
    assert mt.load_datalist(folder / "junk.json").stored_voxels() == (0, 0, 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("a volume was read before the memory check")

    monkeypatch.setattr("MedTransferLib.data.datalist.read_case", no_reading)
    with pytest.raises(MedTransferError, match=r"only 20 MB are available") as before:
        mt.train(dl, tmp_path / "run", **config)
    assert str(before.value) == str(after_reading.value)
    assert not (tmp_path / "run").exists()


# ---- faults -------------------------------------------------------------------------------------

def test_an_unwritable_or_full_output_folder_fails_before_training(blob_datalist, tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    with pytest.raises(MedTransferError, match="cannot be written"):
        mt.train(blob_datalist, blocker / "run", **TINY)
    import MedTransferLib.core.rundir as rundir

    monkeypatch.setattr(rundir, "MIN_FREE_MB", 10**12)
    with pytest.raises(MedTransferError, match="MB free"):
        mt.train(blob_datalist, tmp_path / "run", **TINY)
    assert not (tmp_path / "run" / "model").exists()


def test_a_second_run_on_the_same_folder_refuses_and_a_stale_lock_is_taken_over(blob_datalist, tmp_path):
    import socket
    import subprocess

    from MedTransferLib.core.rundir import LOCK

    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{socket.gethostname()} {sleeper.pid}")
        with pytest.raises(MedTransferError, match=f"in use by process {sleeper.pid}"):
            mt.train(blob_datalist, out, **TINY)
        assert not (out / "model").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    run = mt.train(blob_datalist, out, **TINY)          # its process is gone: the lock is stale
    assert run.package.is_dir() and not (out / LOCK).exists()
    assert read_state(out)["state"] == "finished"


@pytest.mark.slow   # child processes (test_resume.py is the fast twin)
def test_cancel_leaves_a_valid_checkpoint_and_says_cancelled(blob_datalist, tmp_path):
    import time

    from MedTransferLib.core.runner import Job

    job = Job(["train", "--datalist", str(blob_datalist), "--out", str(tmp_path / "run"), "--backbone", "resnet18",
               "--weights", "none", "--strategy", "finetune", "--epochs", "50", "--steps-per-epoch", "2",
               "--batch-size", "2", "--patch", "64", "--patience", "100"]).start()
    while not any(e["event"] == "epoch" for e in job.events) and job.state == "running":
        job.poll()
        time.sleep(0.05)
    job.cancel()
    assert job.wait(timeout=60) == "cancelled"
    assert read_state(tmp_path / "run")["state"] == "cancelled"
    pkg = mt.ModelPackage.load(tmp_path / "run")          # the last complete checkpoint loads
    assert pkg.manifest.complete is False and pkg.manifest.metrics["epoch"] >= 1
    assert not any(p.name.startswith(".model-") for p in (tmp_path / "run").iterdir())   # no temp dirs left


# ---- security ---------------------------------------------------------------------------------

class _Evil:
    """Unpickling this runs code: it would write the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


def test_malicious_pickles_are_refused_by_every_loading_path_and_never_run(tmp_path, blob_datalist):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, evil)
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Evil(marker), f)
    assert not marker.exists()

    # 1. as --weights of a torchvision/MedicalNet/Swin backbone
    for backbone, mode in (("resnet18", "2.5d"), ("medicalnet-resnet10", "3d"), ("swinunetr", "3d")):
        with pytest.raises(MedTransferError, match="refused"):
            mt.train(blob_datalist, tmp_path / f"run_{backbone}", backbone=backbone, weights=str(evil), mode=mode,
                     strategy="finetune", epochs=1, steps_per_epoch=1, batch_size=2, patch=32)
    # 2. as a model package whose weights file is a pickle (with a consistent checksum)
    run = mt.train(blob_datalist, tmp_path / "good", **TINY)
    pkg_dir = tmp_path / "evil_package"
    pkg_dir.mkdir()
    m = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
    (pkg_dir / "model.safetensors").write_bytes((tmp_path / "evil.pkl").read_bytes())
    from MedTransferLib.core.files import sha256_file
    from MedTransferLib.package.store import fingerprint

    m["weights"]["sha256"] = sha256_file(pkg_dir / "model.safetensors")
    m.pop("files", None)
    m["fingerprint"] = fingerprint(m)
    (pkg_dir / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(MedTransferError, match="not a valid safetensors file") as info:
        mt.predict(pkg_dir, mt.read_case(blob_datalist.parent / "img0.nii.gz"))
    assert "pwned" not in str(info.value)
    # 3. as a MONAI bundle's models/model.pt
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": {
        "_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [8, 16], "strides": [2]}}))
    (bundle / "models" / "model.pt").write_bytes(evil.read_bytes())
    with pytest.raises(MedTransferError, match="refused"):
        mt.train(blob_datalist, tmp_path / "run_bundle", backbone=f"bundle:{bundle}", weights="pretrained",
                 mode="3d", strategy="finetune", epochs=1, steps_per_epoch=1, batch_size=2, patch=32)
    assert not marker.exists()


def test_a_package_cannot_name_files_outside_itself(blob_datalist, tmp_path):
    run = mt.train(blob_datalist, tmp_path / "run", **TINY)
    m = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
    from MedTransferLib.package.store import fingerprint

    m["files"] = {"../../etc/passwd": "0" * 64}
    m["fingerprint"] = fingerprint(m)
    (run.package / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(MedTransferError, match="outside the package"):
        mt.ModelPackage.load(run.package)


def test_no_patient_identifiers_from_dicom_reach_any_file_the_run_writes(tmp_path):
    image, label = blob_volume(shape=(8, 40, 48))
    vol = sitk.GetImageFromArray(image.astype(np.int16))
    folder = tmp_path / "series"
    folder.mkdir()
    phi = {"0010|0010": "Doe^Jane", "0010|0020": "PID-990077", "0010|0030": "19440321",
           "0008|0080": "St Elsewhere Hospital"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        for tag, value in {**phi, "0020|000e": "1.2.826.0.1.3680043.2.1125.7", "0020|0013": str(k + 1),
                           "0008|0060": "MR", "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": "1",
                           "0020|0032": "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k))))}.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    case = mt.read_case(folder)
    write_volume(tmp_path / "lab.nii.gz", label, tuple(case.geometry.spacing), tuple(case.geometry.origin),
                 tuple(np.asarray(case.geometry.direction).ravel()))
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "modality": "MR",
                                                 "training": [{"image": "series", "label": "lab.nii.gz"}]}))
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(tmp_path / "d.json"), "--out", str(out), "--backbone", "resnet18",
                 "--weights", "none", "--strategy", "finetune", "--epochs", "1", "--steps-per-epoch", "1",
                 "--batch-size", "2", "--patch", "64", "--progress", "json"]) == 0
    assert main(["predict", "--model", str(out), "--image", str(folder), "--out", str(out / "pred.nii.gz"),
                 "--table", str(out / "volumes.csv")]) == 0
    assert main(["export", "--model", str(out), "--out", str(out / "export"), "--format", "torchscript"]) == 0
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 6
    for p in written:
        data = p.read_bytes()
        for value in phi.values():
            for form in {value, value.replace("^", " ")}:
                assert form.encode() not in data, f"{form} in {p}"


# ---- determinism -------------------------------------------------------------------------------

@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_same_data_config_and_seed_on_cpu_give_bit_identical_weights_and_predictions(blob_datalist, tmp_path):
    a = mt.train(blob_datalist, tmp_path / "a", **{**TINY, "steps_per_epoch": 3})
    b = mt.train(blob_datalist, tmp_path / "b", **{**TINY, "steps_per_epoch": 3})
    assert digest(a.package / "model.safetensors") == digest(b.package / "model.safetensors")
    case = mt.read_case(blob_datalist.parent / "img1.nii.gz")
    assert np.array_equal(mt.predict(a.package, case).label, mt.predict(b.package, case).label)


@pytest.mark.slow   # child processes (test_resume.py is the fast twin)
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_result(blob_datalist, tmp_path):
    import signal
    import time

    from MedTransferLib.core.runner import Job

    args = ["--datalist", str(blob_datalist), "--backbone", "efficientnet-lite0", "--strategy",
            "gradual+discriminative", "--epochs", "4", "--steps-per-epoch", "3", "--batch-size", "2", "--patch", "64",
            "--patience", "100"]
    whole = Job(["train", "--out", str(tmp_path / "whole"), *args]).start()
    assert whole.wait(timeout=300) == "finished", whole.error
    cut = Job(["train", "--out", str(tmp_path / "cut"), *args]).start()
    while not any(e["event"] == "epoch" for e in cut.events) and cut.state == "running":
        cut.poll()
        time.sleep(0.02)
    os.kill(cut._proc.pid, signal.SIGKILL)          # no chance to clean up
    cut.wait(timeout=60)
    assert read_state(tmp_path / "cut")["state"] == "running"     # it never got to say otherwise
    mt.ModelPackage.load(tmp_path / "cut")                          # the previous checkpoint loads
    resumed = Job(["train", "--resume", str(tmp_path / "cut")]).start()
    assert resumed.wait(timeout=300) == "finished", resumed.error
    assert any("resumed after epoch" in e.get("message", "") for e in resumed.events)
    assert digest(tmp_path / "cut" / "model" / "model.safetensors") == digest(tmp_path / "whole" / "model" / "model.safetensors")
    assert read_state(tmp_path / "cut")["state"] == "finished" and not (tmp_path / "cut" / "train_state").exists()
    with pytest.raises(MedTransferError, match="train again without --resume"):
        mt.train(blob_datalist, tmp_path / "cut", resume=True, **TINY)


def test_out_of_memory_names_what_to_lower_and_oom_retry_halves_the_batch(blob_datalist, tmp_path, monkeypatch):
    """No GPU here: a convolution that runs out of memory above 2 images per batch stands in for
    CUDA's allocator (torch.OutOfMemoryError is what torch raises on CUDA and MPS)."""
    import torch.nn.functional as F

    from MedTransferLib.core.errors import OutOfMemory
    from MedTransferLib.core.progress import Reporter

    real = F.conv2d

    def conv2d(x, *args, **kw):
        if x.shape[0] > 2 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, *args, **kw)

    monkeypatch.setattr(F, "conv2d", conv2d)
    with pytest.raises(OutOfMemory, match=r"batch of 8 .*--batch-size \(e\.g\. 4\).*--oom-retry"):
        mt.train(blob_datalist, tmp_path / "a", **{**TINY, "batch_size": 8})
    assert read_state(tmp_path / "a")["state"] == "failed"
    events = []
    run = mt.train(blob_datalist, tmp_path / "b", reporter=Reporter(sink=events.append, stream=None, bar=False),
                   **{**TINY, "batch_size": 8}, oom_retry=True)
    notes = [e["message"] for e in events if e["event"] == "note" and "out of memory" in e["message"]]
    assert [n.split("--batch-size ")[1].split()[0] for n in notes] == ["4", "2"]
    assert mt.ModelPackage.load(run.package).manifest.training["batch_size"] == 2


def test_datalist_paths_cannot_climb_out_of_their_folder_unless_written_absolute(tmp_path):
    image, label = blob_volume()
    outside = tmp_path / "secret"
    outside.mkdir()
    write_volume(outside / "img.nii.gz", image)
    write_volume(outside / "lab.nii.gz", label)
    inside = tmp_path / "data"
    inside.mkdir()
    for entry, ok in (({"image": "../secret/img.nii.gz", "label": "../secret/lab.nii.gz"}, False),
                      ({"image": str(outside / "img.nii.gz"), "label": str(outside / "lab.nii.gz")}, True)):
        (inside / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": [entry]}))
        if ok:
            assert mt.load_datalist(inside / "dataset.json").training[0].image == outside / "img.nii.gz"
        else:
            with pytest.raises(MedTransferError, match="outside the datalist's folder"):
                mt.load_datalist(inside / "dataset.json")
    (inside / "cls.csv").write_text("image,label\n../secret/img.nii.gz,a\n../secret/lab.nii.gz,b\n")
    from MedTransferLib.data.class_datalist import load_class_datalist

    with pytest.raises(MedTransferError, match="outside the datalist's folder"):
        load_class_datalist(inside / "cls.csv")


def test_a_crash_between_the_two_renames_of_a_checkpoint_leaves_the_previous_one_usable(blob_datalist, tmp_path):
    run = mt.train(blob_datalist, tmp_path / "run", **TINY)
    os.replace(run.package, run.package.with_name("model.old"))     # as if killed right after the first rename
    pkg = mt.ModelPackage.load(tmp_path / "run")
    assert pkg.path.name == "model.old"
    assert mt.ModelPackage.load(run.package).path.name == "model.old"
