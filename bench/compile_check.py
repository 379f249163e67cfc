"""Does ``torch.compile`` pay off for MedTransfer's training steps? (issue 8: "optional
torch.compile where it pays off").

For the 2.5D default (EfficientNet-Lite0 U-Net, 16 × 3 × 128²) and the 3D UNet (2 × 1 × 64³):
the eager step time, the first compiled step (compilation included), the compiled step time,
and the break-even number of steps — against the default run's 800 steps. Random tensors,
channels-last as training uses them, MedTransfer's loss, AdamW. Prints JSON lines. Not a test.

    .venv/bin/python bench/compile_check.py [--steps 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def measure(name: str, net, shape, num_classes: int, steps: int, device: str) -> dict:
    from performance import random_stepper

    net, step = random_stepper(net, shape, num_classes, device)

    def timed(model, n):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            step(model, opt)
            times.append(time.perf_counter() - t0)
        return times

    eager = timed(net, steps + 2)[2:]
    e = sum(eager) / len(eager)
    try:
        compiled = timed(torch.compile(net), steps + 1)
    except Exception as err:   # noqa: BLE001 — a compiler failure is a result here
        torch._dynamo.reset()
        return {"network": name, "device": device, "eager_s_per_step": round(e, 4),
                "compile_failed": f"{type(err).__name__}: " + str(err).strip().splitlines()[0][:300]}
    c = sum(compiled[1:]) / len(compiled[1:])
    first = compiled[0]
    gain = e - c
    return {"network": name, "device": device, "eager_s_per_step": round(e, 4),
            "compiled_s_per_step": round(c, 4), "speedup": round(e / c, 3), "first_compiled_step_s": round(first, 1),
            "break_even_steps": round((first - c) / gain) if gain > 0 else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(2)
    from MedTransferLib.models.backbones import build_encoder
    from MedTransferLib.models.backbones.monai3d import build_unet
    from MedTransferLib.models.segmentation import SegmentationNet

    torch.manual_seed(0)
    print(json.dumps(measure("2.5D Lite0 U-Net, 16×3×128²",
                             SegmentationNet(build_encoder("efficientnet-lite0", None, 3, 2, "mean"), 9, 3),
                             (16, 3, 128, 128), 9, a.steps, a.device)), flush=True)
    print(json.dumps(measure("3D MONAI UNet, 2×1×64³", build_unet(1, 9), (2, 1, 64, 64, 64), 9, a.steps,
                             a.device)), flush=True)
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
