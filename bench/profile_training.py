"""Where a training step's time goes (torch.profiler): the top operators of MedTransfer's
2.5D (EfficientNet-Lite0 U-Net, 16 × 128² slabs) and 3D (MONAI UNet, 2 × 64³ patches) steps on
the sample data, plus the share of the step spent outside the network (sampling, augmentation,
normalisation). On a GPU (``--device cuda``, run by bench/gpu_check.sh) the host's operators and
the card's kernels, each sorted by their own time; the host's wait for the card shows as
``cudaStreamSynchronize``/``aten::_local_scalar_dense`` (the loss read back each step).
Numbers go to bench/NOTES.md.

Usage: .venv/bin/python bench/profile_training.py [--steps 6] [--device cuda --data .gpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import MedTransferLib as mt  # noqa: E402
import MedTransferLib.training.segmentation as trainer  # noqa: E402
import MedTransferLib.training.skeleton as skeleton  # noqa: E402
from MedTransferLib.training import loop  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from performance import medtransfer_rate, sample, settings  # noqa: E402


def profiled(mode: str, steps: int, out: Path, device: str = "cpu", data_dir: str | None = None) -> None:
    # a folder from bench/gpu_check.sh --prepare has no SimpleITK beside it: random 2.5D weights
    kw = settings(mode, "pretrained" if data_dir is None else None)   # (they cost the same per step)
    kw["batch_size"] = kw.pop("batch")
    if data_dir is None:
        data = mt.sample_data()
    else:
        _, _, data, labels = sample(data_dir)
        kw["labels"] = labels
    cuda = device.startswith("cuda")
    real_fit, real_augment = loop.fit, trainer.augment
    report = {}
    t_batch, t_augment = [0.0], [0.0]

    def timed_augment(*a, **k):
        t0 = time.perf_counter()
        result = real_augment(*a, **k)
        t_augment[0] += time.perf_counter() - t0
        return result

    def fit(model, strategy, opt, config, device, next_batch, *a, **k):
        def timed_batch():
            t0 = time.perf_counter()
            b = next_batch()
            t_batch[0] += time.perf_counter() - t0
            return b

        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            result = real_fit(model, strategy, opt, config, device, timed_batch, *a, **k)
        total = time.perf_counter() - t0
        averages = prof.key_averages()
        report["table"] = averages.table(sort_by="self_cpu_time_total", row_limit=12)
        if cuda:
            report["table"] += "\n" + averages.table(sort_by="self_cuda_time_total", row_limit=12)
        report["batch_share"] = t_batch[0] / total
        report["s_per_step"] = total / (config.epochs * config.steps_per_epoch)
        return result

    skeleton.fit, trainer.augment = fit, timed_augment
    try:
        mt.train(data, out / mode, strategy="finetune", epochs=1, steps_per_epoch=steps, val_fraction=0,
                 device=device, **kw)
    finally:
        skeleton.fit, trainer.augment = real_fit, real_augment
    print(f"== {mode}: {report['s_per_step']:.3f} s/step (profiled), data sampling + augmentation "
          f"{100 * report['batch_share']:.1f} % of the loop: {1e3 * t_batch[0] / steps:.1f} ms a batch, "
          f"{1e3 * t_augment[0] / steps:.1f} ms of it augmenting")
    print(report["table"])


def thread_effect(mode: str, steps: int, out: Path, device: str, data_dir: str) -> None:
    """Steady-state items/s with and without the batch thread of ``loop.batches`` (no profiler),
    on the GPU where it is used: its measured effect."""
    _, _, cases, labels = sample(data_dir)
    kw = settings(mode, None)
    threaded = loop.batches

    def inline(next_batch, n, device):
        return (next_batch() for _ in range(n))

    rates = {}
    for name, fn in (("thread", threaded), ("inline", inline), ("thread again", threaded)):
        loop.batches = fn
        try:
            rates[name] = medtransfer_rate(cases, out / f"{mode}_{name.replace(' ', '_')}", steps, 10,
                                           labels=labels, device=device, **kw)["items_per_s"]
        finally:
            loop.batches = threaded
    print(f"== {mode}: items/s with the batch thread {rates['thread']:.1f} and {rates['thread again']:.1f}, "
          f"inline {rates['inline']:.1f} ({rates['thread'] / rates['inline']:.2f}×, "
          f"{rates['thread again'] / rates['inline']:.2f}×)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="runs/bench_profile")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", help="a folder made by bench/gpu_check.sh --prepare (default: the sample data)")
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(2)
    import shutil

    shutil.rmtree(a.out, ignore_errors=True)
    for mode in ("2.5d", "3d"):
        profiled(mode, a.steps, Path(a.out), a.device, a.data)
        if a.device.startswith("cuda") and a.data:
            thread_effect(mode, 100, Path(a.out), a.device, a.data)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
