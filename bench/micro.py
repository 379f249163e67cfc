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
- ``fuse``: the painted slices' guide combined with the network's probabilities
  (``inference/guide.py``) on the sample MRI's 181 axial slices, 12 of them painted evenly over the
  structures: in batches of 16 as ``predict --painted`` does, and all slices between painted ones in
  one call as a preview does; ``Guide.fuse`` against the same score formed for every class (the
  implementation before), each call's first run and the median, the classes checked against the
  definition (``Testing/test_guide.py``); one batch's 2.5D network forward for scale.
- ``decoder``: one channels-last training step (fused AdamW, as the trainer runs it) of the 2.5D
  Lite0 U-Net with the decoder widths tried for the default: the earlier 256-128-64-32-16, the
  shipped 128-64-32-16-8 and three in between; each step's median and its speed against the
  earlier one.

    .venv/bin/python bench/micro.py [--only formats|windows|argmax|loss|optimizer|frozen|fuse|decoder]
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


def fuse_every_class(g, slices, probs):
    """``Guide.fuse`` before it scored two classes per pixel: the whole score for every class,
    vectorised over the batch (the timing reference)."""
    import numpy as np

    slices = np.asarray(list(slices), int)
    out = probs.argmax(1).astype(np.uint8)
    known = g.known[slices]
    if known.any():
        logp = np.log(probs[known] + 1e-6)
        onehot = np.moveaxis(np.eye(g.num_classes, dtype=np.float32)[g.classes[slices[known]]], -1, 1)
        w = np.full((len(logp), 1) + probs.shape[2:], g.weight, np.float32)
        for i, z in enumerate(slices[known].tolist()):
            if z in g.soft:
                onehot[i] = g.soft_vote(*g.soft[z])
            if z in g.open:
                w[i, 0][g.open[z]] = 0.0
        q = np.log((1 - g.eps) * onehot + g.eps / g.num_classes)
        out[known] = ((1 - w) * logp + w * q).argmax(1).astype(np.uint8)
    painted = g.painted[slices]
    out[painted] = g.classes[slices[painted]]
    return out


def fuse() -> None:
    import numpy as np
    from test_guide import fuse_by_definition

    import MedTransferLib as mt
    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.data.slabs import to_slices_first
    from MedTransferLib.inference.guide import case_guide

    datalist = mt.sample_data()
    data = json.loads(Path(datalist).read_text())
    entry = data["training"][0]
    case = mt.read_case(Path(datalist).parent / entry["image"], Path(datalist).parent / entry["label"])
    label = to_slices_first(case.label, 2)
    held = np.flatnonzero(label.reshape(len(label), -1).any(1))
    painted = np.unique(np.linspace(held[0], held[-1], 12).round().astype(int))
    sparse = np.full_like(label, IGNORE)
    sparse[painted] = label[painted]
    case.label = sparse            # slices-first along the axial voxel axis k is the array's first
    values = [int(k) for k in data["labels"] if int(k) > 0]
    guide = case_guide(case, values, 2)
    n, h, w = label.shape
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, (16, len(values) + 1, h, w)).astype(np.float32))
    # channels-last, as the network gives them on the CPU (its convolutions run channels-last)
    batch = torch.softmax(logits.contiguous(memory_format=torch.channels_last), 1).numpy()
    between = [s for s in range(n) if guide.known[s] and not guide.painted[s]]
    # Apply (predict --painted): the volume in batches of 16; a preview: one call, its slices at once
    shapes = {"apply_181_slices_in_16s": [list(range(i, min(i + 16, n))) for i in range(0, n, 16)],
              f"preview_{len(between)}_slices_between_painted_in_one_call": [between]}
    row = {"bench": "fuse", "slices": n, "painted": painted.tolist()}
    for shape, calls in shapes.items():
        probs = [np.concatenate([batch] * (len(c) // 16 + 1))[:len(c)] for c in calls]

        def run(fn):
            return [fn(c, p) for c, p in zip(calls, probs)]

        for name, fn in (("every_class_before", lambda c, p: fuse_every_class(guide, c, p)),
                         ("fuse", guide.fuse)):
            t0 = time.perf_counter()
            run(fn)                      # the first call: its arrays newly allocated, as in a preview
            row[f"{shape}_{name}_first_s"] = round(time.perf_counter() - t0, 3)
            row[f"{shape}_{name}_s"] = round(median_s(lambda: run(fn), repeat=3, warmup=0), 3)
        row[f"{shape}_same_as_definition"] = all(
            np.array_equal(guide.fuse(c, p), fuse_by_definition(guide, c, p)) for c, p in zip(calls, probs))
    name, make, shape = nets()[0]
    net = make().eval()
    x = torch.randn(16, 3, 224, 192)
    with torch.inference_mode():
        row["network_forward_16_slices_s"] = round(median_s(lambda: net(x), repeat=3, warmup=1), 3)
    print(json.dumps(row), flush=True)


def decoder() -> None:
    from MedTransferLib.models.backbones import build_encoder
    from MedTransferLib.models.segmentation import SegmentationNet

    shape, base = (16, 3, 128, 128), None
    for widths in ((256, 128, 64, 32, 16), (256, 128, 64, 32, 8), (256, 128, 64, 16, 8),
                   (128, 64, 32, 16, 16), (128, 64, 32, 16, 8)):
        torch.manual_seed(0)
        step, _ = training_step(lambda: SegmentationNet(build_encoder("efficientnet-lite0", None, 3, 2, "mean"),
                                                        9, 3, widths), shape, True, fused=True)
        t = median_s(step, repeat=5)
        base = base or t
        print(json.dumps({"bench": "decoder", "widths": widths, "batch": list(shape), "step_s": round(t, 4),
                          "speed_vs_256": round(base / t, 2)}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["formats", "windows", "argmax", "loss", "optimizer", "frozen", "fuse",
                                        "decoder"])
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    for name, fn in (("formats", formats), ("windows", windows), ("argmax", argmax), ("loss", loss),
                     ("optimizer", optimizer), ("frozen", frozen), ("fuse", fuse),
                     ("decoder", decoder)):
        if a.only in (None, name):
            fn()
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
