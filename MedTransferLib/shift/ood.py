"""Covariate shift at prediction: an out-of-distribution score from the network's own BatchNorm
input statistics against the training set's, calibrated on chunks of the training volumes."""

from __future__ import annotations

import math

import numpy as np


def activation_stats(model, batches) -> dict:
    """Per BatchNorm layer, the per-channel mean and variance of its input over ``batches``
    (what the layer sees), as float32 tensors ``{name.mean, name.var}``."""
    import torch
    from torch import nn

    # inputs of the normalisation layers with a channel axis at 1 (BatchNorm; InstanceNorm and
    # GroupNorm in MONAI networks without BatchNorm)
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    sums: dict = {}

    def make_hook(name):
        def hook(module, inputs):
            x = inputs[0].detach().float()
            dims = [0] + list(range(2, x.ndim))
            s, ss, n = x.sum(dims).double(), (x * x).sum(dims).double(), x.numel() / x.shape[1]
            prev = sums.get(name)
            sums[name] = (s, ss, n) if prev is None else (prev[0] + s, prev[1] + ss, prev[2] + n)
        return hook

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers]
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for name, (s, ss, n) in sums.items():
        mean = s / n
        out[f"{name}.mean"] = mean.float().cpu()
        out[f"{name}.var"] = (ss / n - mean ** 2).clamp_min(1e-8).float().cpu()
    return out


def stats_distance(target: dict, reference: dict) -> float:
    """Mean over layers (and channels) of |Δmean| / σ_ref + ½ |log σ²_t − log σ²_ref|: how far a
    case's activations are from the training set's, in units the network itself normalises by."""
    names = sorted(k[:-5] for k in reference if k.endswith(".mean") and k in target)
    if not names:
        return float("nan")
    d = []
    for n in names:
        mt_, vt = target[f"{n}.mean"].double(), target[f"{n}.var"].double()
        mr, vr = reference[f"{n}.mean"].double(), reference[f"{n}.var"].double()
        d.append(float(((mt_ - mr).abs() / vr.sqrt() + 0.5 * (vt.log() - vr.log()).abs()).mean()))
    return float(np.mean(d))


def _ood_batches(image_slices_first, prep, mode, slices, patch, max_slices):
    from MedTransferLib.data.sampling import bn_inputs_2d, bn_inputs_3d

    return (bn_inputs_3d(image_slices_first, patch, prep, count=4, batch_size=1) if mode == "3d"
            else bn_inputs_2d(image_slices_first, slices, prep, max_slices=max_slices))


def reference_stats(model, volumes_slices_first, prep, mode: str, slices: int, patch=None, device="cpu") -> dict:
    """The training set's activation statistics: whole-slice (or patch) inputs of every training
    volume, the same kind of input :func:`ood_score` measures a new case with."""
    import torch

    dev = torch.device(device)

    def batches():
        for img in volumes_slices_first:
            yield from (x.to(dev) for x in _ood_batches(img, prep, mode, slices, patch, 24))

    return activation_stats(model, batches())


def ood_score(model, image_slices_first: np.ndarray, prep, mode: str, slices: int, patch=None,
              device="cpu", reference: dict | None = None, max_slices: int = 24) -> float:
    """Label-free OOD score of one standardised, slices-first volume: :func:`stats_distance`
    between its BatchNorm-layer input statistics and the training set's (``reference``)."""
    import torch

    if not reference:
        return float("nan")
    dev = torch.device(device)
    target = activation_stats(model, (x.to(dev) for x in _ood_batches(image_slices_first, prep, mode, slices,
                                                                        patch, max_slices)))
    return stats_distance(target, reference)


def chunk_scores(model, image_slices_first: np.ndarray, prep, mode: str, slices: int, patch=None,
                 device="cpu", reference: dict | None = None, chunks: int = 4) -> list[float]:
    """Scores of contiguous slabs of a training volume against the reference: how much normal
    anatomy varies, for calibration."""
    img = image_slices_first if image_slices_first.ndim == 4 else image_slices_first[None]
    n = img.shape[1]
    min_len = max(slices, int(max(patch)) if patch is not None else 1)
    edges = np.linspace(0, n, chunks + 1).round().astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a >= min_len:
            out.append(ood_score(model, img[:, a:b], prep, mode, slices, patch, device, reference, max_slices=8))
    return [s for s in out if not math.isnan(s)]


def calibrate_ood(reference_scores: list[float]) -> dict:
    """Thresholds from in-distribution scores: median + 3 and + 6 robust spreads (the spread
    is at least 10 % of the median, so a few near-identical chunks do not make it brittle)."""
    r = np.asarray([s for s in reference_scores if not math.isnan(s)], float)
    if r.size == 0:
        return {}
    med = float(np.median(r))
    spread = max(1.4826 * float(np.median(np.abs(r - med))), 0.1 * med, 1e-6)
    return {"median": round(med, 4), "spread": round(spread, 4), "unusual_above": round(med + 3 * spread, 4),
            "far_out_above": round(med + 6 * spread, 4), "reference": [round(float(v), 4) for v in r]}


def ood_verdict(score: float, calibration: dict) -> str:
    if not calibration or math.isnan(score):
        return "unknown"
    if score > calibration["far_out_above"]:
        return "far out"
    if score > calibration["unusual_above"]:
        return "unusual"
    return "in range"
