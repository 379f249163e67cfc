"""Peak memory and time of 3D prediction on a large CT-sized volume (512×512×600, 8 structures),
through the user's path (`predict` on a Case), on the CPU.

    .venv/bin/python bench/memory_3d.py [--depth 600] [--backbone unet]

A small network is trained for one step on a synthetic 8-structure volume only to get a real
model package with a 96³ window (the network's weights do not change the memory, which is the
input, the chunk's blended scores and the output). Prints JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import machine  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=600)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--backbone", default="unet")
    a = p.parse_args()
    import MedTransferLib as mt
    from MedTransferLib.case import Case, Geometry
    from MedTransferLib.labels import Label

    rng = np.random.default_rng(0)
    geo = Geometry((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = (-1000 + 1000 * (rng.random((64, 64, 64)) > 0.3)).astype(np.float32)
    label = np.zeros((64, 64, 64), np.uint8)
    for v in range(1, 9):
        z, y, x = rng.integers(8, 56, 3)
        label[z - 4:z + 4, y - 4:y + 4, x - 4:x + 4] = v
    labels = [Label(v, f"s{v}", (0.5, 0.5, 0.5)) for v in range(1, 9)]
    with tempfile.TemporaryDirectory() as tmp:
        run = mt.train_cases([Case(image, geo, label, "train")], labels, tmp,
                             mt.TrainConfig(mode="3d", backbone=a.backbone, weights=None, epochs=1,
                                            steps_per_epoch=1, batch_size=1, patch=96, val_fraction=0,
                                            modality="CT"))
        before = rss_mb()
        big_geo = Geometry((a.size, a.size, a.depth), (0.7, 0.7, 1.0), (0.0, 0.0, 0.0),
                           (1, 0, 0, 0, 1, 0, 0, 0, 1))
        ct = rng.integers(-1000, 1500, (a.depth, a.size, a.size), dtype=np.int16)
        case = Case(ct, big_geo, None, "big")
        after_input = rss_mb()
        t0 = time.monotonic()
        pred = mt.predict(run.package, case, device="cpu")
        seconds = time.monotonic() - t0
        peak = rss_mb()
    print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "backbone": a.backbone,
                      "volume": [a.depth, a.size, a.size], "input_dtype": "int16", "classes": 9,
                      "window": 96, "rss_before_mb": round(before), "rss_with_input_mb": round(after_input),
                      "peak_rss_mb": round(peak), "predict_seconds": round(seconds, 1),
                      "output_dtype": str(pred.label.dtype)}))


if __name__ == "__main__":
    main()
