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


def medtransfer_training(datalist, out: Path, steps: int, warmup: int) -> dict:
    times = []

    def sink(event):
        if event.get("event") == "step":
            times.append(time.perf_counter())

    t0 = time.perf_counter()
    run = mt.train(datalist, out, reporter=Reporter(sink=sink, stream=None, bar=False), mode="3d", backbone="unet",
                   weights=None, strategy="finetune", epochs=1, steps_per_epoch=warmup + steps, batch_size=BATCH,
                   patch=PATCH, val_fraction=0, lr=LR)
    total = time.perf_counter() - t0
    steady = times[-1] - times[warmup - 1]
    return {"patches_per_s": steps * BATCH / steady, "s_per_step": steady / steps, "total_s": total,
            "package": str(run.package)}


def monai_tutorial_training(image: Path, label: Path, num_classes: int, steps: int, warmup: int) -> dict:
    """The loop as MONAI's tutorials write it (uncached Dataset, transforms per sample)."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld,
                                  ScaleIntensityRanged, Spacingd)

    from MedTransferLib.backbones.monai3d import build_unet
    from MedTransferLib.trainer import loss_function

    arr = mt.read_case(image).image
    lo, hi = (float(v) for v in np.percentile(arr, (0.5, 99.5)))
    transforms = Compose([
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(PATCH,) * 3,
                               pos=1, neg=1, num_samples=BATCH, image_key="image", image_threshold=0),
    ])
    ds = Dataset([{"image": str(image), "label": str(label)}] * (warmup + steps), transform=transforms)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    net = build_unet(1, num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    loss_fn = loss_function()
    net.train()
    times = []
    t0 = time.perf_counter()
    for batch in loader:
        x, y = batch["image"].float(), batch["label"][:, 0].long()
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    steady = times[-1] - times[warmup - 1]
    return {"patches_per_s": steps * BATCH / steady, "s_per_step": steady / steps, "total_s": time.perf_counter() - t0}


def medtransfer_training_25d(datalist, out: Path, steps: int, warmup: int) -> dict:
    times = []

    def sink(event):
        if event.get("event") == "step":
            times.append(time.perf_counter())

    mt.train(datalist, out, reporter=Reporter(sink=sink, stream=None, bar=False), mode="2.5d",
             backbone="efficientnet-lite0", strategy="finetune", epochs=1, steps_per_epoch=warmup + steps,
             batch_size=16, patch=128, val_fraction=0, lr=LR)
    steady = times[-1] - times[warmup - 1]
    return {"slices_per_s": steps * 16 / steady, "s_per_step": steady / steps}


def monai_tutorial_training_25d(image: Path, label: Path, num_classes: int, steps: int, warmup: int) -> dict:
    """The same loop for 2.5D: 128×128×3 crops (three adjacent axial slices) turned into 3 channels,
    the centre slice's labels as target; the same Lite0 U-Net, loss, AdamW and batch of 16."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld,
                                  ScaleIntensityRanged, Spacingd)

    from MedTransferLib.backbones import build_encoder
    from MedTransferLib.model import SegmentationNet
    from MedTransferLib.trainer import loss_function

    arr = mt.read_case(image).image
    lo, hi = (float(v) for v in np.percentile(arr, (0.5, 99.5)))
    transforms = Compose([
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys=["image"], a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(128, 128, 3),
                               pos=1, neg=1, num_samples=16, image_key="image", image_threshold=0),
    ])
    ds = Dataset([{"image": str(image), "label": str(label)}] * (warmup + steps), transform=transforms)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    net = SegmentationNet(build_encoder("efficientnet-lite0", "pretrained", 3, 2, "mean"), num_classes, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    loss_fn = loss_function()
    net.train()
    times = []
    for batch in loader:
        x = batch["image"][:, 0].permute(0, 3, 1, 2).float().contiguous()     # (16, 3, 128, 128)
        y = batch["label"][:, 0, :, :, 1].long()                              # centre slice
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter())
    steady = times[-1] - times[warmup - 1]
    return {"slices_per_s": steps * 16 / steady, "s_per_step": steady / steps}


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
    results["monai_tutorial"] = monai_tutorial_training(image, label, num_classes, a.steps, a.warmup)
    print(json.dumps({"monai_tutorial": results["monai_tutorial"]}), flush=True)
    import shutil

    shutil.rmtree(out / "mt_run", ignore_errors=True)
    results["medtransfer"] = medtransfer_training(data, out / "mt_run", a.steps, a.warmup)
    print(json.dumps({"medtransfer": results["medtransfer"]}), flush=True)
    results["training_ratio"] = results["medtransfer"]["patches_per_s"] / results["monai_tutorial"]["patches_per_s"]
    results["monai_tutorial_2.5d"] = monai_tutorial_training_25d(image, label, num_classes, a.steps, a.warmup)
    shutil.rmtree(out / "mt_run_25d", ignore_errors=True)
    results["medtransfer_2.5d"] = medtransfer_training_25d(data, out / "mt_run_25d", a.steps, a.warmup)
    results["training_ratio_2.5d"] = (results["medtransfer_2.5d"]["slices_per_s"]
                                      / results["monai_tutorial_2.5d"]["slices_per_s"])
    print(json.dumps({k: results[k] for k in ("monai_tutorial_2.5d", "medtransfer_2.5d", "training_ratio_2.5d")}),
          flush=True)
    results["prediction"] = prediction(results["medtransfer"]["package"], image)
    print(json.dumps({"training_ratio": results["training_ratio"], "prediction": results["prediction"]}), flush=True)
    (out / "performance.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
