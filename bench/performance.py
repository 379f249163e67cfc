"""MedTransfer against a plain MONAI-tutorial loop on the same model and data (issue 8, part 1).

Both sides run back to back in one process on the same machine; each number is a ratio of two
measurements taken minutes apart, because these machines are noisy.

1. Training throughput, 3D: ``medtransfer train --backbone unet --mode 3d`` (MONAI's UNet, from
   scratch) vs the loop MONAI's tutorials write: ``Dataset`` with LoadImaged, EnsureChannelFirstd,
   Spacingd, ScaleIntensityRanged, RandCropByPosNegLabeld → ``DataLoader`` → the same network,
   the same loss (MedTransfer's), AdamW at the same rate, the same batch (2 patches of 64³).
   Steady state: patches per second over the steps after ``--warmup``.
   The same for 2.5D: 16 crops of 128×128×3 (three adjacent slices → 3 channels) through the
   EfficientNet-Lite0 U-Net, slices per second.
2. Prediction time per volume: ``medtransfer``'s chunked sliding window vs
   ``monai.inferers.sliding_window_inference`` on the whole volume with the same network,
   window, overlap and Gaussian blending; the two label maps are compared voxel by voxel.

Data: Colin27 T1 (181×217×181, 1 mm) with the 8 AAL deep grey-matter structures.

Usage: .venv/bin/python bench/performance.py [--steps 30] [--warmup 5] [--out runs/bench_perf]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import MedTransferLib as mt  # noqa: E402
from MedTransferLib.progress import Reporter  # noqa: E402

PATCH, BATCH, LR = 64, 2, 2e-3


def medtransfer_rate(datalist, out: Path, steps: int, warmup: int, batch: int, **train_kw) -> dict:
    """``medtransfer train`` for warm-up + timed steps; items (patches or slices) per second from
    the step events' arrival times."""
    times = []

    def sink(event):
        if event.get("event") == "step":
            times.append(time.perf_counter())

    t0 = time.perf_counter()
    run = mt.train(datalist, out, reporter=Reporter(sink=sink, stream=None, bar=False), strategy="finetune",
                   epochs=1, steps_per_epoch=warmup + steps, batch_size=batch, val_fraction=0, lr=LR, **train_kw)
    steady = times[-1] - times[warmup - 1]
    return {"items_per_s": steps * batch / steady, "s_per_step": steady / steps,
            "total_s": time.perf_counter() - t0, "package": str(run.package)}


def monai_tutorial_rate(image: Path, label: Path, net, crop, batch: int, to_xy, steps: int, warmup: int) -> dict:
    """The loop as MONAI's tutorials write it: an uncached Dataset whose transforms load,
    resample, rescale and crop ``batch`` samples of size ``crop`` per step; ``to_xy`` turns a
    batch into the network's input and target; MedTransfer's loss, AdamW."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld,
                                  ScaleIntensityRanged, Spacingd)

    from MedTransferLib.trainer import loss_function

    arr = mt.read_case(image).image
    lo, hi = (float(v) for v in np.percentile(arr, (0.5, 99.5)))
    transforms = Compose([
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=crop,
                               pos=1, neg=1, num_samples=batch, image_key="image", image_threshold=0),
    ])
    ds = Dataset([{"image": str(image), "label": str(label)}] * (warmup + steps), transform=transforms)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    loss_fn = loss_function()
    net.train()
    times = []
    t0 = time.perf_counter()
    for b in loader:
        x, y = to_xy(b)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    steady = times[-1] - times[warmup - 1]
    return {"items_per_s": steps * batch / steady, "s_per_step": steady / steps, "total_s": time.perf_counter() - t0}


def monai_tutorial_3d(image, label, num_classes, steps, warmup) -> dict:
    from MedTransferLib.backbones.monai3d import build_unet

    torch.manual_seed(0)
    return monai_tutorial_rate(image, label, build_unet(1, num_classes), (PATCH,) * 3, BATCH,
                               lambda b: (b["image"].float(), b["label"][:, 0].long()), steps, warmup)


def monai_tutorial_25d(image, label, num_classes, steps, warmup) -> dict:
    """128×128×3 crops (three adjacent axial slices) become 3 channels, the centre slice's labels
    the target; the same Lite0 U-Net as MedTransfer's 2.5D default, batch 16."""
    from MedTransferLib.backbones import build_encoder
    from MedTransferLib.model import SegmentationNet

    torch.manual_seed(0)
    net = SegmentationNet(build_encoder("efficientnet-lite0", "pretrained", 3, 2, "mean"), num_classes, 3)
    return monai_tutorial_rate(image, label, net, (128, 128, 3), 16,
                               lambda b: (b["image"][:, 0].permute(0, 3, 1, 2).float().contiguous(),
                                          b["label"][:, 0, :, :, 1].long()), steps, warmup)


def prediction(package: str, image: Path) -> dict:
    from monai.inferers import sliding_window_inference

    from MedTransferLib.dataset import to_slices_first

    pkg = mt.ModelPackage.load(package)
    case = mt.read_case(image)
    t0 = time.perf_counter()
    ours = mt.predict(pkg, case, check=False).label
    ours_s = time.perf_counter() - t0
    net = pkg.build_model()
    prep = pkg.preprocessing
    inf = pkg.manifest["inference"]
    t0 = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(to_slices_first(prep.standardise(case.image), pkg.axis)))[None, None]
    with torch.inference_mode():
        scores = sliding_window_inference(prep.to_backbone(x), roi_size=tuple(inf["patch"]), sw_batch_size=2,
                                          predictor=net, overlap=inf["overlap"], mode="gaussian",
                                          padding_mode="replicate")
    cls = scores[0].argmax(0).numpy()
    lut = np.array([0] + [lab.value for lab in pkg.labels], np.uint8)
    from MedTransferLib.dataset import from_slices_first

    theirs = from_slices_first(lut[cls], pkg.axis)
    monai_s = time.perf_counter() - t0
    return {"medtransfer_s": ours_s, "monai_s": monai_s, "speed_ratio": monai_s / ours_s,
            "identical_voxels": float((ours == theirs).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="runs/bench_perf")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    data = Path(mt.sample_data())
    image, label = data.parent / "ch2.nii.gz", data.parent / "deep_grey_matter.nii.gz"
    num_classes = len(mt.load_datalist(data).labels) + 1
    results = {"machine": f"{torch.get_num_threads()} threads", "steps": a.steps, "warmup": a.warmup}
    import shutil

    for mode in ("3d", "2.5d"):
        tutorial = (monai_tutorial_3d if mode == "3d" else monai_tutorial_25d)(image, label, num_classes,
                                                                             a.steps, a.warmup)
        shutil.rmtree(out / f"mt_run_{mode}", ignore_errors=True)
        ours = medtransfer_rate(data, out / f"mt_run_{mode}", a.steps, a.warmup,
                                **(dict(batch=BATCH, mode="3d", backbone="unet", weights=None, patch=PATCH)
                                   if mode == "3d" else dict(batch=16, mode="2.5d", patch=128)))
        results[mode] = {"monai_tutorial": tutorial, "medtransfer": ours,
                         "training_ratio": ours["items_per_s"] / tutorial["items_per_s"]}
        print(json.dumps({mode: results[mode]}), flush=True)
    results["prediction"] = prediction(results["3d"]["medtransfer"]["package"], image)
    print(json.dumps({"prediction": results["prediction"]}), flush=True)
    (out / "performance.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
