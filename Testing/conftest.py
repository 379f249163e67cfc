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


@pytest.fixture
def blob_datalist(tmp_path):
    """A datalist with two synthetic cases (every 3rd slice labelled in the first)."""
    entries = []
    for i in range(2):
        image, label = blob_volume(seed=i)
        write_volume(tmp_path / f"img{i}.nii.gz", image, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
        write_volume(tmp_path / f"lab{i}.nii.gz", label, (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
        entries.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
    entries[0]["labelled_slices"] = list(range(0, 16, 3))
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "bright", "2": "dim"},
                                "modality": "MR", "training": entries}))
    return path


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
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
