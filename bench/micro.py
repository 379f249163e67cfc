"""The micro-benchmarks behind bench/NOTES.md's changes, each alone on random tensors (2 threads
on the CPU; median of repeated runs after warm-up). Prints JSON lines. Not a test.

- ``formats``: one training step (forward, MedTransfer's loss, backward, AdamW) of the 2.5D Lite0
  U-Net (16 × 3 × 128²) and the 3D MONAI UNet (2 × 1 × 64³): contiguous, channels-last, and
  channels-last + bf16 autocast (change 1).
- ``windows``: one inference forward of the 3D UNet per 64³, 96³, 128³ window, one or two
  windows per pass (change 3: windows per pass in ``predict``).
- ``argmax``: class indices over the class axis, ``argmax`` vs ``max().indices`` (change 4).
- ``loss``: forward + backward of MedTransfer's loss vs its one-hot definition
  (Testing/test_performance.py), 3D and 2.5D batch shapes (change 5).
- ``optimizer``: AdamW's step alone and a whole channels-last training step of both networks,
  torch's default (foreach) implementation vs the fused kernel (change 6).
- ``frozen``: where a 2.5D training step with the encoder frozen (the first epochs of the default
  ``gradual`` strategy) spends its time: the whole step, the encoder's forward alone, and the
  decoder + head step on features computed beforehand — what caching the encoder's features of
  the labelled slices (a feature-extraction first phase) could save at most.

    .venv/bin/python bench/micro.py [--only formats|windows|argmax|loss|optimizer|frozen]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

import torch  # noqa: E402


def median_s(fn, repeat: int = 6, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def nets():
    from MedTransferLib.models.backbones import build_encoder
    from MedTransferLib.models.backbones.monai3d import build_unet
    from MedTransferLib.models.segmentation import SegmentationNet

    torch.manual_seed(0)
    return [("2.5D Lite0 U-Net, 16×3×128²", lambda: SegmentationNet(build_encoder("efficientnet-lite0", None, 3, 2,
                                                                                    "mean"), 9, 3), (16, 3, 128, 128)),
            ("3D MONAI UNet, 2×1×64³", lambda: build_unet(1, 9), (2, 1, 64, 64, 64))]


def training_step(make, shape, channels_last: bool, bf16: bool = False, **adamw):
    """``(step, optimizer)``: one forward, MedTransfer's loss, backward and AdamW step of the
    network ``make()`` on a random batch of ``shape``, in the memory format asked for."""
    from MedTransferLib.training.losses import loss_function

    loss_fn = loss_function()
    net = make()
    fmt = (torch.channels_last_3d if len(shape) == 5 else torch.channels_last) if channels_last else None
    if fmt is not None:
        net = net.to(memory_format=fmt)
    x = torch.randn(shape)
    x = x.contiguous(memory_format=fmt) if fmt is not None else x
    y = torch.randint(0, 9, (shape[0],) + shape[2:])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **adamw)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, opt


def formats() -> None:
    for name, make, shape in nets():
        row = {"bench": "formats", "network": name}
        for label, last, bf16 in (("contiguous", False, False), ("channels_last", True, False),
                                  ("channels_last_bf16", True, True)):
            step, _ = training_step(make, shape, last, bf16)
            row[f"{label}_s"] = round(median_s(step), 4)
        print(json.dumps(row), flush=True)


def windows() -> None:
    from MedTransferLib.models.backbones.monai3d import build_unet

    torch.manual_seed(0)
    net = build_unet(1, 9).eval()
    for size in (64, 96, 128):
        row = {"bench": "windows", "window": size}
        for batch in (1, 2):
            x = torch.randn(batch, 1, size, size, size)
            with torch.inference_mode():
                row[f"s_per_window_batch{batch}"] = round(median_s(lambda: net(x), repeat=3, warmup=1) / batch, 4)
        print(json.dumps(row), flush=True)


def argmax() -> None:
    for name, scores in (("3D block, 9 × 8 × 217 × 181", torch.randn(9, 8, 217, 181)),
                         ("2.5D logits, 16 × 9 × 256², channels-last",
                          torch.randn(16, 9, 256, 256).contiguous(memory_format=torch.channels_last))):
        axis = 0 if scores.ndim == 4 and scores.shape[0] == 9 else 1
        a = median_s(lambda: scores.argmax(axis), repeat=10)
        m = median_s(lambda: scores.max(axis).indices, repeat=10)
        same = bool(torch.equal(scores.argmax(axis), scores.max(axis).indices))
        print(json.dumps({"bench": "argmax", "scores": name, "argmax_ms": round(a * 1e3, 2),
                          "max_indices_ms": round(m * 1e3, 2), "same_indices": same}), flush=True)


def loss() -> None:
    from test_performance import one_hot_loss

    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.training.losses import loss_function

    ours = loss_function()
    for shape in ((2, 9, 64, 64, 64), (16, 9, 128, 128)):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=g)
        y = torch.randint(0, 9, (shape[0],) + shape[2:], generator=g)
        y[:, :4] = IGNORE
        row = {"bench": "loss", "logits": "×".join(map(str, shape))}
        for label, fn in (("one_hot", one_hot_loss), ("medtransfer", ours)):
            x = logits.clone().requires_grad_()
            row[f"{label}_fwd_bwd_s"] = round(median_s(lambda: fn(x, y).backward()), 4)
        print(json.dumps(row), flush=True)


def optimizer() -> None:
    for name, make, shape in nets():
        row = {"bench": "optimizer", "net": name}
        for impl in ("foreach", "fused"):
            torch.manual_seed(0)
            step, opt = training_step(make, shape, True, **{impl: True})
            row[f"{impl}_step_s"] = round(median_s(step), 4)
            row[f"{impl}_optimizer_ms"] = round(median_s(opt.step, repeat=20) * 1e3, 2)
        print(json.dumps(row), flush=True)


def frozen() -> None:
    from MedTransferLib.training.losses import loss_function

    name, make, shape = nets()[0]
    net = make().to(memory_format=torch.channels_last)
    net.encoder.requires_grad_(False)
    net.encoder.eval()
    loss_fn = loss_function()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3, fused=True)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 9, (shape[0],) + shape[2:])
    with torch.no_grad():
        features = net.encoder(x)

    def train(head_of):
        loss = loss_fn(head_of().float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def encode():
        with torch.no_grad():
            net.encoder(x)

    whole = median_s(lambda: train(lambda: net(x)))
    encoder = median_s(encode)
    decoder = median_s(lambda: train(lambda: net.head(net.decoder(features, 4))))
    print(json.dumps({"bench": "frozen", "network": name, "whole_step_s": round(whole, 4),
                      "encoder_forward_s": round(encoder, 4), "decoder_head_step_s": round(decoder, 4),
                      "encoder_share": round(encoder / whole, 3),
                      "speedup_if_features_cached": round(whole / decoder, 2)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["formats", "windows", "argmax", "loss", "optimizer", "frozen"])
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    for name, fn in (("formats", formats), ("windows", windows), ("argmax", argmax), ("loss", loss),
                     ("optimizer", optimizer), ("frozen", frozen)):
        if a.only in (None, name):
            fn()
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
