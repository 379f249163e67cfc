"""Classification inputs: slices with content, square resizing, slab batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from MedTransferLib.data.slabs import gather_slabs, with_channels

if TYPE_CHECKING:
    pass


def content_slices(image: np.ndarray) -> np.ndarray:
    """Slices (of a slices-first standardised volume) that hold more than air: their spread
    is at least a tenth of the volume's."""
    first = with_channels(image)[0]                  # judged on the first image
    spread = first.reshape(first.shape[0], -1).std(axis=1)
    keep = np.nonzero(spread >= 0.1 * float(first.std()))[0]
    return keep if len(keep) else np.arange(first.shape[0])


def square_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Pad the spatial dims of ``(N, C, *spatial)`` to a square/cube (with the minimum), then
    resample to ``size`` per side: keeps the aspect ratio."""
    spatial = x.shape[2:]
    edge = max(spatial)
    pads = []
    for s in reversed(spatial):
        before = (edge - s) // 2
        pads += [before, edge - s - before]
    fill = float(x.amin())
    x = F.pad(x - fill, pads) + fill
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(x, size=(size,) * len(spatial), mode=mode, align_corners=False)


def slab_batch(image: np.ndarray, slices, k: int, size: int) -> torch.Tensor:
    return square_resize(torch.from_numpy(gather_slabs(image, slices, k)), size)
