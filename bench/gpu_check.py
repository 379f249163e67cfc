"""GPU check of the foundation path (CUDA, AMP, channels-last): trains the sample task briefly
on the GPU and predicts the whole volume, printing time per step, prediction time and Dice on
the never-labelled slices.

Prepare here (writes .gpu/, ignored by git), then run on a GPU machine:
    .venv/bin/python bench/gpu_check.py --prepare .gpu
    python3 bench/gpu_check.py --data .gpu            # on the GPU machine
It needs no SimpleITK on the GPU machine: the volume travels as a .npz.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def prepare(folder: Path) -> None:
    import shutil

    import MedTransferLib as mt
    from MedTransferLib.models.backbones import lite0_imagenet_file

    folder.mkdir(parents=True, exist_ok=True)
    dl = mt.load_datalist(mt.sample_data())
    case = dl.load_cases()[0]
    g = case.geometry
    np.savez_compressed(folder / "colin27.npz", image=case.image.astype(np.uint8), label=case.label,
                        size=g.size, spacing=g.spacing, origin=g.origin, direction=g.direction)
    (folder / "labels.json").write_text(json.dumps([lab.to_dict() for lab in dl.labels]))
    shutil.copyfile(lite0_imagenet_file(), folder / "lite0.pth")
    for name in ("ch2.nii.gz", "deep_grey_matter.nii.gz"):   # for the MONAI loop of gpu_check.sh
        shutil.copyfile(Path(mt.sample_data()).parent / name, folder / name)


def load_prepared(folder: Path):
    """The fully labelled Colin27 case and its labels, as :func:`prepare` wrote them (no SimpleITK)."""
    from MedTransferLib import Case, Geometry, Label

    d = np.load(Path(folder) / "colin27.npz")
    geo = Geometry(tuple(int(x) for x in d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))
    labels = [Label.from_dict(x) for x in json.loads((Path(folder) / "labels.json").read_text(encoding="utf-8"))]
    return Case(d["image"].astype(np.float32), geo, d["label"], "colin27"), labels


def check(folder: Path, epochs: int) -> None:
    import torch

    from MedTransferLib import Case, predict
    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.core.progress import Reporter
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.segmentation import train

    full_case, labels = load_prepared(folder)
    full = full_case.label
    geo = full_case.geometry
    sparse = np.full_like(full, IGNORE)
    sparse[::10] = full[::10]  # every 10th axial slice labelled
    case = Case(full_case.image, geo, sparse, "colin27")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    events = []
    t0 = time.monotonic()
    run = train([case], labels, "/tmp/gpu_run", TrainConfig(weights=str(folder / "lite0.pth"), epochs=epochs,
                                                           modality="MR", device="cuda"),
                Reporter(sink=events.append, stream=None, bar=False))
    torch.cuda.synchronize()
    train_s = time.monotonic() - t0
    steps = run.metrics["steps_run"]
    step_times = [e["time_s"] for e in events if e["event"] == "step"]
    steady = np.diff(step_times[10:]).mean() if len(step_times) > 12 else float("nan")
    t0 = time.monotonic()
    pred = predict(run.package, Case(case.image, geo, None, "colin27"), device="cuda")
    pred_s = time.monotonic() - t0
    held = [k for k in range(full.shape[0]) if k % 10]
    dice = []
    for lab in labels:
        p, r = pred.label[held] == lab.value, full[held] == lab.value
        dice.append(2 * (p & r).sum() / max(1, p.sum() + r.sum()))
    print(json.dumps({"steps": steps, "train_s": round(train_s, 1), "s_per_step_steady": round(float(steady), 4),
                      "predict_s": round(pred_s, 2), "mean_dice_never_labelled": round(float(np.mean(dice)), 3),
                      "dice": {lab.name: round(float(x), 3) for lab, x in zip(labels, dice)},
                      "amp_dtype": "bf16" if torch.cuda.is_bf16_supported() else "fp16",
                      "max_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20)}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--prepare", type=Path)
    p.add_argument("--data", type=Path)
    p.add_argument("--epochs", type=int, default=16)
    a = p.parse_args()
    if a.prepare:
        prepare(a.prepare)
    elif a.data:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from machine import print_machine  # bench/machine.py

        print_machine()
        check(a.data, a.epochs)
    else:
        p.error("give --prepare DIR or --data DIR")
