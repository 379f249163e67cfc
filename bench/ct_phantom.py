"""A synthetic abdominal CT for the benches (no public CT ships with a package this machine can
install: the data here is Colin27, an MRI). Hounsfield units throughout: air −1000 outside an
elliptical body, a fat layer (−100) under the skin, soft tissue (40), and four structures whose
cross-sections change from slice to slice as organs do — liver (90, portal-venous phase; a
large lobe that shrinks and moves), two kidneys (130 with a 200 cortex, bean-shaped), the spine (a vertebral body at 400 inside
cortical bone at 900, with a gap between vertebrae every 12 slices) — plus Gaussian noise
(σ 20 HU) and a smooth low-frequency shading. Its geometry is CT-like: 0.8 mm in-plane, 2.5 mm
slices, 160 × 192 × 96 voxels. Seeded: the same phantom every time.

    python bench/ct_phantom.py --out runs/ct_phantom    # writes ct.nii.gz, ct_label.nii.gz, dataset.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

LABELS = {"1": "liver", "2": "kidney_left", "3": "kidney_right", "4": "spine"}


def phantom(shape=(96, 160, 192), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(image in HU, label map)``, arrays ``(k, j, i)``: k runs feet → head."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = shape
    k = np.arange(nk)[:, None, None] / (nk - 1)                      # 0 … 1 along the body
    j = (np.arange(nj)[None, :, None] - nj / 2) / (nj / 2)          # anterior-posterior, −1 … 1
    i = (np.arange(ni)[None, None, :] - ni / 2) / (ni / 2)          # left-right, −1 … 1
    image = np.full(shape, -1000.0, np.float32)
    label = np.zeros(shape, np.uint8)
    body = np.broadcast_to((i / 0.92) ** 2 + (j / 0.78) ** 2 < 1, shape)
    inner = np.broadcast_to((i / 0.84) ** 2 + (j / 0.70) ** 2 < 1, shape)
    image[body] = -100.0
    image[inner] = 40.0
    # liver: right side (image left, i < 0), upper two thirds, shrinking towards its lower tip
    r = np.clip(1.1 - 1.4 * np.abs(k - 0.62), 0, None)
    liver = (((i + 0.38 + 0.06 * np.sin(6 * k)) / (0.36 * r + 1e-6)) ** 2 + ((j - 0.05) / (0.42 * r + 1e-6)) ** 2 < 1)
    liver &= (k > 0.25)
    # kidneys: posterior, either side of the spine, middle third, bean-like (one notch)
    kid_r = np.clip(1 - ((k - 0.45) / 0.2) ** 2, 0, None) ** 0.5
    kidneys = []
    for side in (1, -1):
        cx = side * 0.33
        bean = ((i - cx) / (0.12 * kid_r + 1e-6)) ** 2 + ((j - 0.38) / (0.18 * kid_r + 1e-6)) ** 2 < 1
        notch = ((i - cx + side * 0.1) / 0.06) ** 2 + ((j - 0.38) / 0.07) ** 2 < 1
        kidneys.append(bean & ~notch)
    # spine: a vertebral body behind the organs, with discs between vertebrae
    disc = (np.arange(nk) % 12 < 2)[:, None, None]
    column = np.broadcast_to((i / 0.11) ** 2 + ((j - 0.52) / 0.11) ** 2 < 1, shape)
    spine = column & ~disc
    cortex = spine & ~(((i / 0.08) ** 2 + ((j - 0.52) / 0.08) ** 2) < 1)
    for value, mask in ((1, liver), (2, kidneys[0]), (3, kidneys[1]), (4, spine)):
        label[mask & inner] = value
    image[label == 1] = 90.0                                              # portal-venous phase
    for v in (2, 3):
        image[label == v] = 130.0
        edge = (label == v) & ~np.roll(label == v, 3, axis=2) | (label == v) & ~np.roll(label == v, -3, axis=2)
        image[edge] = 200.0                                               # enhancing cortex
    image[label == 4] = 400.0
    image[cortex & (label == 4)] = 900.0
    image[column & disc] = 80.0
    shading = 15 * np.sin(3 * i + 2 * j + 4 * k)
    image = np.where(body, image + shading + rng.normal(0, 20, shape), image + rng.normal(0, 5, shape))
    return image.astype(np.float32), label


def write(out: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from MedTransferLib.core.case import Geometry
    from MedTransferLib.core.files import write_json
    from MedTransferLib.data.io import write_image, write_label

    out.mkdir(parents=True, exist_ok=True)
    image, label = phantom()
    geo = Geometry(image.shape[::-1], (0.8, 0.8, 2.5), (-76.8, -64.0, -120.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(out / "ct.nii.gz", image, geo)
    write_label(out / "ct_label.nii.gz", label, geo)
    datalist = out / "dataset.json"
    write_json(datalist, {"labels": {"0": "background", **LABELS}, "modality": "CT",
                          "training": [{"image": "ct.nii.gz", "label": "ct_label.nii.gz"}]})
    return datalist


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/ct_phantom"))
    print(json.dumps({"datalist": str(write(p.parse_args().out))}))
