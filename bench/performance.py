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

3. The same prediction on a 512×512×300 CT-sized synthetic volume, for scale (``--ct-depth``).

With ``--ceiling``, each training comparison also runs the pure-compute ceiling: the same network
on random tensors already on the device (``ceiling_rate``). On a GPU (``--device cuda``, run by
bench/gpu_check.sh) both sides use autocast and the tutorial loop 4 loader processes.

Usage: .venv/bin/python bench/performance.py [--steps 30] [--warmup 5] [--out runs/bench_perf]
       [--device cpu|cuda] [--data FOLDER] [--ceiling] [--ct-depth 300]
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
from MedTransferLib.core.progress import Reporter  # noqa: E402
from MedTransferLib.training.optim import adamw  # noqa: E402

PATCH, BATCH, LR = 64, 2, 2e-3


def medtransfer_rate(data, out: Path, steps: int, warmup: int, batch: int, **train_kw) -> dict:
    """``medtransfer train`` (a datalist, or cases with ``labels=``) for warm-up + timed steps;
    items (patches or slices) per second from the step events' arrival times (each step ends
    with the loss read back, so on a GPU the time includes the step's kernels)."""
    times = []

    def sink(event):
        if event.get("event") == "step":
            times.append(time.perf_counter())

    t0 = time.perf_counter()
    run = mt.train(data, out, reporter=Reporter(sink=sink, stream=None, bar=False), strategy="finetune",
                   epochs=1, steps_per_epoch=warmup + steps, batch_size=batch, val_fraction=0, lr=LR, **train_kw)
    steady = times[-1] - times[warmup - 1]
    return {"items_per_s": steps * batch / steady, "s_per_step": steady / steps,
            "total_s": time.perf_counter() - t0, "package": str(run.package)}


def settings(mode: str, weights="pretrained") -> dict:
    """MedTransfer's side of each comparison (``batch`` and ``mt.train``'s options): the MONAI
    UNet from scratch on 2 × 64³ patches in 3D, the Lite0 U-Net on 16 × 128² slabs in 2.5D."""
    return (dict(batch=BATCH, mode="3d", backbone="unet", weights=None, patch=PATCH) if mode == "3d"
            else dict(batch=16, mode="2.5d", patch=128, weights=weights))


def monai_tutorial_rate(image: Path, label: Path, net, crop, batch: int, to_xy, steps: int, warmup: int,
                        device: str = "cpu", workers: int = 0) -> dict:
    """The loop as MONAI's tutorials write it: an uncached Dataset whose transforms load,
    resample, rescale and crop ``batch`` samples of size ``crop`` per step; ``to_xy`` turns a
    batch into the network's input and target; MedTransfer's loss, AdamW. On a GPU as the
    tutorials' fast-training variant does: ``workers`` loader processes, autocast (bf16 where
    the card has it, else fp16 with a GradScaler), ``loss.item()`` each step."""
    import nibabel  # what LoadImaged reads NIfTI with (no SimpleITK on a GPU machine)
    from monai.data import DataLoader, Dataset
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
    )

    from MedTransferLib.training.losses import loss_function

    arr = np.asarray(nibabel.load(str(image)).dataobj, np.float32)
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
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers)
    dev = torch.device(device)
    net = net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    loss_fn = loss_function()
    amp = dev.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    net.train()
    times = []
    t0 = time.perf_counter()
    for b in loader:
        x, y = to_xy(b)
        x, y = x.to(dev), y.to(dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=amp):
            out = net(x)                 # MetaTensors through the network, as in the tutorials
        # MedTransfer's loss takes plain tensors (MONAI's own losses take MetaTensors)
        loss = loss_fn(out.as_tensor().float(), y.as_tensor())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()
        times.append(time.perf_counter())
    steady = times[-1] - times[warmup - 1]
    return {"items_per_s": steps * batch / steady, "s_per_step": steady / steps, "total_s": time.perf_counter() - t0}


def net_3d(num_classes):
    from MedTransferLib.models.backbones.monai3d import build_unet

    torch.manual_seed(0)
    return build_unet(1, num_classes)


def net_25d(num_classes, weights):
    from MedTransferLib.models.backbones import build_encoder
    from MedTransferLib.models.segmentation import SegmentationNet

    torch.manual_seed(0)
    return SegmentationNet(build_encoder("efficientnet-lite0", weights, 3, 2, "mean"), num_classes, 3)


def monai_tutorial_3d(image, label, num_classes, steps, warmup, **kw) -> dict:
    return monai_tutorial_rate(image, label, net_3d(num_classes), (PATCH,) * 3, BATCH,
                               lambda b: (b["image"].float(), b["label"][:, 0].long()), steps, warmup, **kw)


def monai_tutorial_25d(image, label, num_classes, steps, warmup, weights="pretrained", **kw) -> dict:
    """128×128×3 crops (three adjacent axial slices) become 3 channels, the centre slice's labels
    the target; the same Lite0 U-Net as MedTransfer's 2.5D default, batch 16."""
    return monai_tutorial_rate(image, label, net_25d(num_classes, weights), (128, 128, 3), 16,
                               lambda b: (b["image"][:, 0].permute(0, 3, 1, 2).float().contiguous(),
                                          b["label"][:, 0, :, :, 1].long()), steps, warmup, **kw)


def random_stepper(net, x_shape, num_classes: int, device: str):
    """``(net, step)``: ``net`` on ``device`` in MedTransfer's memory format there, and
    ``step(model, optimizer)`` — one training step of ``model`` (``net`` or a compiled ``net``) on
    random tensors already on the device, with autocast as MedTransfer uses it and its loss, ending
    with the loss read back (a GPU step is then complete)."""
    from MedTransferLib.core.device import autocast, memory_format
    from MedTransferLib.training.losses import loss_function

    dev = torch.device(device)
    net = net.to(dev)
    fmt = memory_format(dev, len(x_shape) - 2)
    if fmt is not None:
        net = net.to(memory_format=fmt)
    x = torch.randn(x_shape, device=dev)
    x = x.contiguous(memory_format=fmt) if fmt is not None else x
    y = torch.randint(0, num_classes, (x_shape[0],) + tuple(x_shape[2:]), device=dev)
    loss_fn = loss_function()

    def step(model, opt):
        with autocast(dev):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    return net, step


def ceiling_rate(net, x_shape, num_classes: int, steps: int, warmup: int, device: str) -> dict:
    """The pure-compute ceiling: the same network, loss, optimizer and batch on random tensors
    already on the device — no data loading, no augmentation; autocast and channels-last as
    MedTransfer uses them there."""
    net, step = random_stepper(net, x_shape, num_classes, device)
    opt = adamw([{"params": list(net.parameters())}], lr=LR, weight_decay=1e-4)   # as MedTransfer makes it
    net.train()
    times = []
    for _ in range(warmup + steps):
        step(net, opt)
        times.append(time.perf_counter())
    steady = times[-1] - times[warmup - 1]
    return {"items_per_s": steps * x_shape[0] / steady, "s_per_step": steady / steps}


def prediction(package: str, case, device: str = "cpu") -> dict:
    """MedTransfer's ``predict`` vs ``sliding_window_inference`` on the whole volume with the same
    network, window, overlap, Gaussian blending and windows per batch (what ``predict`` uses
    there), on ``device`` for both."""
    from monai.inferers import sliding_window_inference

    from MedTransferLib.core.device import autocast
    from MedTransferLib.data.slabs import from_slices_first, to_slices_first
    from MedTransferLib.inference.segment import _window_batch

    pkg = mt.ModelPackage.load(package)
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    ours = mt.predict(pkg, case, device=device, check=False).label
    sync()
    ours_s = time.perf_counter() - t0
    lut = np.array([0] + [lab.value for lab in pkg.labels], np.uint8)

    def monai(scores_on):
        t0 = time.perf_counter()   # both sides from the loaded package to labels: building the network counts
        net = pkg.build_model(dev)
        prep = pkg.preprocessing
        inf = pkg.manifest.inference

        def run(x):
            with autocast(dev):
                return net(prep.to_backbone(x)).float()

        x = torch.from_numpy(np.ascontiguousarray(to_slices_first(prep.standardise(case.image), pkg.axis)))[None, None]
        with torch.inference_mode():
            scores = sliding_window_inference(x.to(scores_on), roi_size=tuple(inf.patch),
                                              sw_batch_size=_window_batch(dev, inf.patch, 16),
                                              predictor=run, overlap=0.25 if inf.overlap is None else inf.overlap, mode="gaussian",
                                              padding_mode="replicate", sw_device=dev, device=scores_on)
            cls = scores[0].argmax(0).cpu().numpy()
        del scores
        theirs = from_slices_first(lut[cls], pkg.axis)
        sync()
        return time.perf_counter() - t0, float((ours == theirs).mean())

    # scores on the CPU: what fits any volume (MedTransfer's own buffer is one window deep)
    monai_s, same = monai(torch.device("cpu"))
    result = {"shape": list(case.image.shape), "medtransfer_s": ours_s, "monai_s": monai_s,
              "speed_ratio": monai_s / ours_s, "identical_voxels": same}
    if dev.type == "cuda":
        # as the tutorials write it on a GPU: the volume and all its scores on the card (9 classes
        # of a 512×512×300 CT: 2.8 GB), fastest where it fits
        gpu_s, gpu_same = monai(dev)
        result.update(monai_gpu_s=gpu_s, speed_ratio_gpu=gpu_s / ours_s, identical_voxels_gpu=gpu_same)
    return result


def synthetic_ct(depth: int = 300):
    """A 512×512×``depth`` CT-sized volume (body ellipse, noise) as float32, for prediction at scale."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from memory_scaling import synthetic_ct as make

    case = make(depth)
    case.label = None
    case.image = case.image.astype(np.float32)
    return case


def sample(data_dir: str | None):
    """(NIfTI image, NIfTI label, cases, labels) of the sample task: from the sample-data cache
    (SimpleITK reads it), or from a folder prepared by ``bench/gpu_check.sh --prepare`` (a .npz
    of the same volume, for a machine without SimpleITK)."""
    if data_dir is None:
        data = Path(mt.sample_data())
        dl = mt.load_datalist(data)
        return data.parent / "ch2.nii.gz", data.parent / "deep_grey_matter.nii.gz", dl.load_cases(), dl.labels
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import load_prepared

    folder = Path(data_dir)
    case, labels = load_prepared(folder)
    return folder / "ch2.nii.gz", folder / "deep_grey_matter.nii.gz", [case], labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="runs/bench_perf")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bench/gpu_check.sh)")
    ap.add_argument("--data", help="a folder made by bench/gpu_check.sh --prepare (default: the sample data)")
    ap.add_argument("--ceiling", action="store_true", help="also the pure-compute ceiling of each network")
    ap.add_argument("--ct-depth", type=int, default=300, help="slices of the 512×512 CT-sized volume (0: none)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu = a.device != "cpu"
    if not gpu:
        torch.set_num_threads(2)
    image, label, cases, labels = sample(a.data)
    num_classes = len(labels) + 1
    # on a GPU machine the Lite0 ImageNet file may be absent: the same network from random weights
    # costs the same per step
    weights = None if gpu else "pretrained"
    results = {"device": torch.cuda.get_device_name(0) if gpu else f"CPU, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "steps": a.steps, "warmup": a.warmup}
    import shutil
    import traceback

    def section(name, work):
        """One part of the comparison; on a lent GPU (minutes, one try) a failing part is
        reported and the others still run."""
        try:
            results[name] = work()
        except Exception:   # noqa: BLE001 — printed in full, and the run's exit status says so
            traceback.print_exc()
            failed.append(name)
            return
        print(json.dumps({name: results[name]}), flush=True)

    def training(mode):
        tutorial = (monai_tutorial_3d(image, label, num_classes, a.steps, a.warmup, device=a.device,
                                      workers=4 if gpu else 0) if mode == "3d" else
                    monai_tutorial_25d(image, label, num_classes, a.steps, a.warmup, weights=weights,
                                       device=a.device, workers=4 if gpu else 0))
        shutil.rmtree(out / f"mt_run_{mode}", ignore_errors=True)
        ours = medtransfer_rate(cases, out / f"mt_run_{mode}", a.steps, a.warmup, labels=labels, device=a.device,
                                **settings(mode, weights))
        r = {"monai_tutorial": tutorial, "medtransfer": ours, "training_ratio": ours["items_per_s"] / tutorial["items_per_s"]}
        if a.ceiling:
            net, shape = ((net_3d(num_classes), (BATCH, 1) + (PATCH,) * 3) if mode == "3d" else
                          (net_25d(num_classes, weights), (16, 3, 128, 128)))
            r["ceiling"] = ceiling_rate(net, shape, num_classes, a.steps, a.warmup, a.device)
            r["fraction_of_ceiling"] = ours["items_per_s"] / r["ceiling"]["items_per_s"]
        return r

    failed: list[str] = []
    for mode in ("3d", "2.5d"):
        section(mode, lambda: training(mode))
    if "3d" in results:
        package = results["3d"]["medtransfer"]["package"]
        if gpu:   # the first inference kernels load lazily: once, untimed, before either side is timed
            mt.predict(mt.ModelPackage.load(package), cases[0], device=a.device, check=False)
        section("prediction", lambda: prediction(package, cases[0], a.device))
        if a.ct_depth:
            section("prediction_ct", lambda: prediction(package, synthetic_ct(a.ct_depth), a.device))
    (out / "performance.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks above)")
    return 1 if failed else 0


def table(r: dict) -> str:
    """The results as one Markdown table (the parts that ran)."""
    ceiling = any("ceiling" in r.get(mode, {}) for mode in ("3d", "2.5d"))
    end = " | |" if ceiling else ""
    rows = [f"| {r['device']}, torch {r['torch']} | MONAI-tutorial loop | MedTransfer | ratio |"
            + (" ceiling | fraction of ceiling |" if ceiling else ""), "|---|---:|---:|---:|"
            + ("---:|---:|" if ceiling else "")]
    for mode, unit in (("3d", "patches/s"), ("2.5d", "slices/s")):
        if mode not in r:
            continue
        m = r[mode]
        row = (f"| training {mode}, {unit} | {m['monai_tutorial']['items_per_s']:.1f} | "
               f"{m['medtransfer']['items_per_s']:.1f} | {m['training_ratio']:.2f}× |")
        if "ceiling" in m:
            row += f" {m['ceiling']['items_per_s']:.1f} | {m['fraction_of_ceiling']:.0%} |"
        rows.append(row)
    for key in ("prediction", "prediction_ct"):
        if key in r:
            p = r[key]
            size = "×".join(str(n) for n in p["shape"][::-1])
            rows.append(f"| 3D prediction {size}, s | {p['monai_s']:.2f} | {p['medtransfer_s']:.2f} | "
                        f"{p['speed_ratio']:.2f}× (identical voxels {p['identical_voxels']:.6f}) |" + end)
            if "monai_gpu_s" in p:
                rows.append(f"| 3D prediction {size}, MONAI's scores on the GPU, s | {p['monai_gpu_s']:.2f} | "
                            f"{p['medtransfer_s']:.2f} | {p['speed_ratio_gpu']:.2f}× (identical voxels "
                            f"{p['identical_voxels_gpu']:.6f}) |" + end)
    return "\n".join(rows)


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
