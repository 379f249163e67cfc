"""Where the advisor's domain distance puts natural photos (the encoder's own domain) and the
sample MRI, per stage — the evidence behind ``advisor.SIMILAR_DOMAIN``.

    .venv/bin/python bench/advisor_calibration.py

Offline, the only natural photos at hand are matplotlib's two sample photographs; 16 random
crops of each (224², random flips) stand in for an ImageNet batch. Prints JSON. Not a test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foundation import machine  # noqa: E402


def photo_batches(encoder, n_crops: int = 16, seed: int = 0):
    import matplotlib.cbook
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        img = Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)).convert("RGB")
        arr = np.asarray(img, np.float32) / 255
        crops = []
        for _ in range(n_crops):
            side = int(rng.integers(min(arr.shape[:2]) // 2, min(arr.shape[:2]) + 1))
            y, x = rng.integers(0, arr.shape[0] - side + 1), rng.integers(0, arr.shape[1] - side + 1)
            crop = Image.fromarray((arr[y:y + side, x:x + side] * 255).astype(np.uint8)).resize((224, 224))
            c = np.asarray(crop, np.float32) / 255
            crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
        x = torch.from_numpy(np.stack(crops).copy()).permute(0, 3, 1, 2)
        mean = torch.tensor(encoder.input_mean)[None, :, None, None]
        std = torch.tensor(encoder.input_std)[None, :, None, None]
        yield (x - mean) / std


def main() -> None:
    import MedTransferLib as mt
    from MedTransferLib.models.backbones import build_encoder
    from MedTransferLib.training.advisor import _stage_distances, advise, bn_distance

    enc = build_encoder("efficientnet-lite0")
    photos = bn_distance(enc, photo_batches(enc))
    dl = mt.load_datalist(mt.sample_data())
    mri = advise(dl.load_cases(), dl.labels)
    print(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "backbone": "efficientnet-lite0",
                      "photos": {"distance": round(photos["distance"], 3),
                                 "per_stage": _stage_distances(enc, photos["per_layer"])},
                      "colin27_mri": {"distance": mri.domain["distance"], "per_stage": mri.domain["per_stage"]}},
                     indent=1))


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    main()
