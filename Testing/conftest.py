"""Shared fixtures: small synthetic volumes written to a temp dir per test (seeded), and the
real Colin27 + AAL sample data (fetched once into the cache by `medtransfer sampledata`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import MedTransferLib as mt
from MedTransferLib.core.progress import Reporter

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")   # the Slicer harness's Qt runs without a screen
# the panel starts no spare process (core/launch.py) unless a test turns it on: each would load
# torch beside the test on 2 cores
os.environ["MEDTRANSFER_SPARE"] = "0"

OBLIQUE = tuple(np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0].ravel())


def write_volume(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return Path(path)


def digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def blob_volume(shape=(16, 40, 48), seed=0):
    """An MR-like volume (noisy background, bright ellipsoids) and a 2-class label map."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    cz, cy, cx = [s / 2 for s in shape]
    a = ((z - cz) / (shape[0] / 2.5)) ** 2 + ((y - cy + 6) / 7) ** 2 + ((x - cx - 8) / 6) ** 2 < 1
    b = ((z - cz) / (shape[0] / 2.5)) ** 2 + ((y - cy - 6) / 6) ** 2 + ((x - cx + 8) / 8) ** 2 < 1
    image = 100 + 10 * rng.normal(size=shape) + 300 * a + 180 * b
    label = np.zeros(shape, np.uint8)
    label[a] = 1
    label[b] = 2
    return image.astype(np.float32), label


def write_blob_datalist(folder, spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0), direction=None,
                        labelled_first=None):
    """Two synthetic cases (:func:`blob_volume`, seeds 0 and 1) and their ``dataset.json`` in
    ``folder``; ``labelled_first``: the labelled slices of the first case (default: all)."""
    entries = []
    for i in range(2):
        image, label = blob_volume(seed=i)
        write_volume(folder / f"img{i}.nii.gz", image, spacing, origin, direction)
        write_volume(folder / f"lab{i}.nii.gz", label, spacing, origin, direction)
        entries.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
    if labelled_first is not None:
        entries[0]["labelled_slices"] = list(labelled_first)
    path = folder / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "bright", "2": "dim"},
                                "modality": "MR", "training": entries}))
    return path


def red_view(scene, normal):
    """The scene's Red view (added if missing), its plane turned to ``normal`` (RAS); for the
    Slicer tests."""
    import slicer

    view = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    if view is None:
        view = slicer.vtkMRMLSliceNode()
        view.SetSingletonTag("Red")
        view = scene.AddNode(view)
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    x = np.cross([0.0, 1.0, 0.0] if abs(n[1]) < 0.9 else [1.0, 0.0, 0.0], n)
    x /= np.linalg.norm(x)
    for r, row in enumerate(np.stack([x, np.cross(n, x), n], axis=1)):
        for c in range(3):
            view.GetSliceToRAS().SetElement(r, c, float(row[c]))
    view.UpdateMatrices()
    return view


class Events(Reporter):
    """A reporter that keeps every event as ``(event, fields)`` in ``seen``."""

    def __init__(self):
        super().__init__(stream=None, bar=False)
        self.seen = []

    def emit(self, event, **fields):
        self.seen.append((event, fields))


@pytest.fixture
def blob_datalist(tmp_path):
    """A datalist with two synthetic cases (every 3rd slice labelled in the first)."""
    return write_blob_datalist(tmp_path, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE, range(0, 16, 3))


@pytest.fixture(scope="session")
def colin():
    """Real sample data: paths of Colin27 T1 and the 8-structure AAL label map."""
    datalist = mt.sample_data()
    folder = datalist.parent
    return {"datalist": datalist, "image": folder / "ch2.nii.gz", "label": folder / "deep_grey_matter.nii.gz"}


@pytest.fixture(scope="session")
def colin_crop(tmp_path_factory, colin):
    """A real 96×96×36 crop of Colin27 around the deep grey matter, with its labels."""
    out = tmp_path_factory.mktemp("colin_crop")
    img = sitk.ReadImage(str(colin["image"]))
    lab = sitk.ReadImage(str(colin["label"]))
    index, size = [44, 72, 56], [96, 96, 36]
    img_c = sitk.RegionOfInterest(img, size, index)
    lab_c = sitk.RegionOfInterest(lab, size, index)
    sitk.WriteImage(img_c, str(out / "image.nii.gz"))
    sitk.WriteImage(lab_c, str(out / "label.nii.gz"))
    labels = json.loads(colin["datalist"].read_text(encoding="utf-8"))["labels"]
    (out / "dataset.json").write_text(json.dumps({
        "labels": labels, "modality": "MR",
        "training": [{"image": "image.nii.gz", "label": "label.nii.gz",
                      "labelled_slices": list(range(0, 36, 3))}]}))
    return {"dir": out, "datalist": out / "dataset.json", "image": out / "image.nii.gz",
            "label": out / "label.nii.gz"}


@pytest.fixture(autouse=True)
def _few_threads():
    if os.environ.get("MEDTRANSFER_BLOCK"):   # the fresh-install scenario: torch is 'not installed'
        return
    import torch

    # MEDTRANSFER_TEST_THREADS=1 under mutmut, which forks: OpenMP thread pools do not survive a fork
    torch.set_num_threads(int(os.environ.get("MEDTRANSFER_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture
def make_harness(qapp, tmp_path):
    """Slicer around the MedTransfer module (Testing/slicer_harness): real Qt, MRML and slicer.util;
    stand-ins for what only the application has; PythonSlicer as a real launcher.
    ``make_harness(absent=..., packaging=..., pytorch_extension=..., testing=...)``;
    ``harness.load()`` runs the module's setup."""
    pytest.importorskip("slicer")
    from slicer_harness.application import Harness
    from slicer_harness.launcher import write_launcher

    made = []

    def make(**options):
        h = Harness(qapp, tmp_path / "slicer-temp", launcher=write_launcher(tmp_path), **options)
        made.append(h)
        return h

    yield make
    for h in reversed(made):
        h.close()


@pytest.fixture
def harness(make_harness):
    """The harness with everything installed (Slicer 5.11+, PyTorch extension present)."""
    return make_harness()
