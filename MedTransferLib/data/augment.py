"""Data augmentation of a batch, on the device it trains on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from MedTransferLib.core.case import IGNORE


def augment(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator,
            rotate_deg: float = 15.0, scale: tuple[float, float] = (0.85, 1.15),
            intensity: float = 0.1, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-plane rotation/scaling (no flips: left and right structures differ) and
    intensity scale/shift/noise, for a whole batch at once: 2D ``(B, C, H, W)`` slabs, or 3D
    ``(B, C, D, H, W)`` patches (rotation about the slice axis, isotropic scale). Target voxels
    that come from outside the crop are IGNORE.

    Runs where ``images`` are: training puts a batch on the GPU first, since on a CPU this is
    most of a 3D batch's preparation (bench/profile_training.py, bench/NOTES.md) and the card
    otherwise waits for it. The random draws are the
    same on every device."""
    b, nd, dev = images.shape[0], images.ndim - 2, images.device
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, b))
    s = rng.uniform(*scale, b)
    mats = np.zeros((b, nd, nd + 1), np.float32)
    # affine_grid's coordinates are (x, y[, z]) = (W, H[, D]): rotate in x-y, scale all
    mats[:, 0, 0], mats[:, 0, 1] = np.cos(theta) / s, -np.sin(theta) / s
    mats[:, 1, 0], mats[:, 1, 1] = np.sin(theta) / s, np.cos(theta) / s
    if nd == 3:
        mats[:, 2, 2] = 1 / s
    grid = F.affine_grid(torch.from_numpy(mats).to(dev), list(images.shape), align_corners=False)
    fill = images.amin(dim=tuple(range(1, images.ndim)), keepdim=True)
    images = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    targets = F.grid_sample(targets[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[:, 0]
    # outside the original slice nothing is labelled
    inside = F.grid_sample(torch.ones_like(images[:, :1]), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0]
    targets = torch.where(inside > 0.5, targets, torch.full_like(targets, IGNORE)).long()
    shape = (b,) + (1,) * (images.ndim - 1)
    gain = torch.from_numpy(rng.uniform(1 - intensity, 1 + intensity, shape).astype(np.float32)).to(dev)
    shift = torch.from_numpy(rng.uniform(-intensity, intensity, shape).astype(np.float32)).to(dev)
    images = images * gain + shift + noise * torch.randn(images.shape, generator=_torch_gen(rng, dev), device=dev)
    return images, targets


def _torch_gen(rng: np.random.Generator, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
