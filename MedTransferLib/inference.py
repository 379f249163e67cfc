"""Slice-wise 2.5D inference on a standardised volume, in batches, with no per-voxel Python."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import gather_slabs, padded_size, with_channels
from .device import autocast
from .preprocessing import Preprocessing


@torch.inference_mode()
def predict_slices(model: torch.nn.Module, image: np.ndarray, k: int, prep: Preprocessing,
                   device: torch.device, slices=None, batch_size: int = 16,
                   probabilities: bool = False) -> np.ndarray:
    """Class indices ``(len(slices), H, W)`` (uint8) for a standardised ``(S, H, W)`` or
    ``(C, S, H, W)`` volume.

    With ``probabilities=True`` returns float32 softmax ``(len(slices), C, H, W)`` instead.
    """
    n, h, w = image.shape[-3:]
    slices = list(range(n)) if slices is None else list(slices)
    ph, pw = padded_size(h, w)
    pad = (0, pw - w, 0, ph - h)
    # ``batch_size`` slices of 256² at most: a 512² CT slice holds 4× the activations, so 4× fewer
    # slices per batch keep the peak memory of a whole-CT prediction bounded (bench/NOTES.md)
    batch_size = max(1, min(batch_size, batch_size * 256 * 256 // (ph * pw)))
    model.eval()
    if probabilities:
        probs = []
    else:
        out = np.empty((len(slices), h, w), np.uint8)   # filled in place: no list to concatenate
    for i in range(0, len(slices), batch_size):
        x = torch.from_numpy(gather_slabs(image, slices[i:i + batch_size], k)).to(device)
        x = F.pad(x, pad, mode="replicate")
        x = prep.to_backbone(x)
        with autocast(device):
            logits = model(x)[..., :h, :w].float()
        if probabilities:
            probs.append(torch.softmax(logits, 1).cpu().numpy())
        else:
            out[i:i + len(x)] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    if probabilities:
        return np.concatenate(probs) if probs else np.zeros((0, 0, h, w), np.float32)
    return out


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255) -> list[float]:
    """Dice per foreground class over voxels where ``target != ignore``; NaN where a class is
    absent from both."""
    valid = target != ignore
    scores = []
    for c in range(1, num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        denom = int(p.sum()) + int(t.sum())
        scores.append(float("nan") if denom == 0 else 2.0 * int((p & t).sum()) / denom)
    return scores


def chunking(shape, num_classes: int, patch_depth: int, budget_bytes: float) -> tuple[int, int]:
    """``(slices per chunk, context slices on each side)`` so that a chunk's blended float scores,
    weight map and input (``num_classes + 2`` floats per voxel) stay within ``budget_bytes``."""
    _, h, w = shape
    per_slice = (num_classes + 2) * h * w * 4
    margin = patch_depth // 4
    chunk = max(patch_depth // 2, int(budget_bytes // per_slice) - 2 * margin)
    return chunk, margin


@torch.inference_mode()
def predict_volume_3d(model: torch.nn.Module, image: np.ndarray, prep: Preprocessing,
                      device: torch.device, patch, num_classes: int, overlap: float = 0.25,
                      batch_size: int = 2, memory_budget_gb: float = 1.0,
                      probabilities: bool = False) -> np.ndarray:
    """Class indices ``(D, H, W)`` for a standardised ``(D, H, W)`` or ``(C, D, H, W)`` volume,
    by MONAI's sliding window with Gaussian blending.

    Memory stays bounded on large CT: the volume goes through in chunks of slices, each with a
    quarter patch of context on both sides (so a chunk's edge voxels are still blended from
    several windows); only one chunk's float scores exist at any time, and the result is a uint8
    label map. A 512×512×600 CT with 8 structures needs about 1 GiB for scores. With ``probabilities=True`` returns float32
    ``(C, D, H, W)`` instead (no chunking benefit: meant for small volumes).
    """
    from monai.inferers import sliding_window_inference

    model.eval()
    image = with_channels(image)
    d = image.shape[1]
    pd = int(patch[0])
    chunk, margin = chunking(image.shape[1:], num_classes, pd, memory_budget_gb * 2**30)
    if probabilities:
        chunk = d
    out = np.zeros(image.shape[1:], np.uint8) if not probabilities else None

    def run(x):
        with autocast(device):
            return model(prep.to_backbone(x)).float()

    for z0 in range(0, d, chunk):
        a, b = max(0, z0 - margin), min(d, z0 + chunk + margin)
        x = torch.from_numpy(np.ascontiguousarray(image[:, a:b]))[None]
        scores = sliding_window_inference(x, roi_size=tuple(int(p) for p in patch), sw_batch_size=batch_size,
                                          predictor=run, overlap=overlap, mode="gaussian",
                                          padding_mode="replicate", sw_device=device, device="cpu")
        if probabilities:
            return torch.softmax(scores[0], 0).numpy()
        labels = scores[0].argmax(0).to(torch.uint8).numpy()
        out[z0:min(d, z0 + chunk)] = labels[z0 - a:z0 - a + min(chunk, d - z0)]
    return out


def bn_inputs_2d(image: np.ndarray, k: int, prep: Preprocessing, max_slices: int = 64,
                 batch_size: int = 8):
    """Label-free input batches for AdaBN in 2.5D: whole-slice slabs spread evenly over the
    volume (at most ``max_slices``), padded like prediction pads them."""
    image = with_channels(image)
    n, h, w = image.shape[1:]
    slices = np.unique(np.linspace(0, n - 1, min(n, max_slices)).round().astype(int))
    ph, pw = padded_size(h, w)
    for i in range(0, len(slices), batch_size):
        x = torch.from_numpy(gather_slabs(image, slices[i:i + batch_size], k))
        yield prep.to_backbone(F.pad(x, (0, pw - w, 0, ph - h), mode="replicate"))


def bn_inputs_3d(image: np.ndarray, patch, prep: Preprocessing, count: int = 8, batch_size: int = 2,
                 seed: int = 0):
    """Label-free input batches for AdaBN in 3D: ``count`` patches placed uniformly at random."""
    from .dataset3d import crop_pad_nd

    image = with_channels(image)
    rng = np.random.default_rng(seed)
    shape = image.shape[1:]
    fill = float(image.min())
    for i in range(0, count, batch_size):
        crops = []
        for _ in range(min(batch_size, count - i)):
            origin = [int(rng.integers(min(0, n - p), max(0, n - p) + 1)) for n, p in zip(shape, patch)]
            crops.append(crop_pad_nd(image, origin, tuple(int(p) for p in patch), fill))
        yield prep.to_backbone(torch.from_numpy(np.stack(crops)))
