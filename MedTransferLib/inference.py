"""Slice-wise 2.5D inference on a standardised volume, in batches, with no per-voxel Python."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import padded_size, slab_indices
from .device import autocast
from .preprocessing import Preprocessing


@torch.inference_mode()
def predict_slices(model: torch.nn.Module, image: np.ndarray, k: int, prep: Preprocessing,
                   device: torch.device, slices=None, batch_size: int = 16,
                   probabilities: bool = False) -> np.ndarray:
    """Class indices ``(len(slices), H, W)`` (uint8) for a standardised ``(S, H, W)`` volume.

    With ``probabilities=True`` returns float32 softmax ``(len(slices), C, H, W)`` instead.
    """
    n, h, w = image.shape
    slices = list(range(n)) if slices is None else list(slices)
    ph, pw = padded_size(h, w)
    pad = (0, pw - w, 0, ph - h)
    out = []
    model.eval()
    for i in range(0, len(slices), batch_size):
        idx = np.stack([slab_indices(s, n, k) for s in slices[i:i + batch_size]])
        x = torch.from_numpy(image[idx]).to(device)
        x = F.pad(x, pad, mode="replicate")
        x = prep.to_backbone(x)
        with autocast(device):
            logits = model(x)[..., :h, :w].float()
        if probabilities:
            out.append(torch.softmax(logits, 1).cpu().numpy())
        else:
            out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, h, w), np.uint8)


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
