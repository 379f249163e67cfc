"""3D training data: patches from the cached, standardised volumes, with sparse-label masking.

The 3D path reuses :class:`~.dataset.Volume` (standardised once, slice axis first) as its cache:
after the first epoch's set-up no file is read and nothing is resampled. A patch's target keeps
only the voxels of *training* slices — unlabelled slices and slices held out for validation are
``IGNORE`` — so a network sees the whole 3D context but learns only from what was labelled.
"""

from __future__ import annotations

import math

import numpy as np

from .case import IGNORE
from .dataset import SlabSampler, Volume, largest_extent


def crop_pad_nd(arr: np.ndarray, origin, size, value) -> np.ndarray:
    """``arr[o0:o0+s0, o1:o1+s1, ...]`` over the last ``len(origin)`` axes, padded with ``value``."""
    lead = arr.shape[:arr.ndim - len(origin)]
    out = np.full(lead + tuple(size), value, dtype=arr.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for o, s, n in zip(origin, size, arr.shape[len(lead):]):
        a, b = max(0, o), min(n, o + s)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def auto_patch_3d(volumes: list[Volume], items, multiple: int = 32, lo: int = 64, hi: int = 128) -> tuple:
    """Patch edge per axis: 1.5× the largest structure's in-plane extent, a multiple of the
    network's divisor, within [lo, hi] and no larger than the (padded) volume."""
    extent = largest_extent(volumes, items)
    edge = int(np.clip(math.ceil(1.5 * extent / multiple) * multiple, lo, hi))
    shape = np.max([v.image.shape[-3:] for v in volumes], axis=0)
    return tuple(int(min(edge, math.ceil(n / multiple) * multiple)) for n in shape)


class PatchSampler3D(SlabSampler):
    """Draws batches of 3D patches centred as :class:`~.dataset.SlabSampler` centres its crops
    (a voxel of a uniformly chosen class two thirds of the time, otherwise any voxel of a
    labelled training slice), with the slice jittered too."""

    def __init__(self, volumes: list[Volume], items: list[tuple[int, int]], num_classes: int,
                 patch: tuple[int, int, int], p_foreground: float = 0.67, seed: int = 0):
        super().__init__(volumes, items, 1, num_classes, max(patch), p_foreground, seed)
        self.patch = tuple(patch)
        self.train_mask = [np.zeros(v.target.shape[0], bool) for v in volumes]
        for vi, s in items:
            self.train_mask[vi][s] = True

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        images, targets = [], []
        for _ in range(batch_size):
            vi, s, (y, x) = self.pick()
            vol = self.volumes[vi]
            origin = []
            for c, p, n in zip((s, y, x), self.patch, vol.target.shape):
                jitter = self.rng.integers(-(p // 4), p // 4 + 1)
                origin.append(int(np.clip(c - p // 2 + jitter, min(0, n - p), max(0, n - p))))
            img = crop_pad_nd(vol.image, origin, self.patch, float(vol.image.min()))
            tgt = crop_pad_nd(vol.target, origin, self.patch, IGNORE)   # a copy: masked below
            keep = crop_pad_nd(self.train_mask[vi], origin[:1], self.patch[:1], False)
            tgt[~keep] = IGNORE   # unlabelled and held-out slices teach nothing
            images.append(img)                 # (C, d, h, w)
            targets.append(tgt)
        return np.stack(images), np.stack(targets)

