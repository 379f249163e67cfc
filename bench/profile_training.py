"""Where a training step's time goes (torch.profiler, CPU): the top operators of MedTransfer's
2.5D (EfficientNet-Lite0 U-Net, 16 × 128² slabs) and 3D (MONAI UNet, 2 × 64³ patches) steps on
the sample data, plus the share of the step spent outside the network (sampling, augmentation,
normalisation). Numbers go to bench/NOTES.md.

Usage: .venv/bin/python bench/profile_training.py [--steps 6]
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
from MedTransferLib import loop  # noqa: E402


def profiled(mode: str, steps: int, out: Path) -> None:
    data = mt.sample_data()
    kw = (dict(mode="3d", backbone="unet", weights=None, batch_size=2, patch=64) if mode == "3d"
          else dict(mode="2.5d", batch_size=16, patch=128))
    real_fit = loop.fit
    report = {}

    def fit(model, strategy, opt, config, device, next_batch, *a, **k):
        t_batch = [0.0]

        def timed_batch():
            t0 = time.perf_counter()
            b = next_batch()
            t_batch[0] += time.perf_counter() - t0
            return b

        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = real_fit(model, strategy, opt, config, device, timed_batch, *a, **k)
        total = time.perf_counter() - t0
        report["table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        report["batch_share"] = t_batch[0] / total
        report["s_per_step"] = total / (config.epochs * config.steps_per_epoch)
        return result

    import MedTransferLib.trainer as trainer

    trainer.fit = fit
    try:
        mt.train(data, out / mode, strategy="finetune", epochs=1, steps_per_epoch=steps, val_fraction=0, **kw)
    finally:
        trainer.fit = real_fit
    print(f"== {mode}: {report['s_per_step']:.3f} s/step (profiled), data sampling + augmentation "
          f"{100 * report['batch_share']:.1f} % of the loop")
    print(report["table"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default="runs/bench_profile")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    import shutil

    shutil.rmtree(a.out, ignore_errors=True)
    for mode in ("2.5d", "3d"):
        profiled(mode, a.steps, Path(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
