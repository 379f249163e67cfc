"""Training batches: 2.5D slabs and 3D patches centred on structures (classes drawn equally
often), with sparse-label masking; and the inputs BatchNorm statistics are measured on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from MedTransferLib.core.case import IGNORE
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.data.slabs import (
    Volume,
    crop_pad,
    crop_pad_nd,
    gather_slabs,
    padded_size,
    with_channels,
)


class SlabSampler:
    """Draws training batches of 2.5D slabs, oversampling slices that hold structures.

    With probability ``p_foreground`` a sample is drawn by first picking a class present in the
    training slices uniformly (so small structures are seen as often as large ones), then a slice
    holding it; otherwise any labelled slice. Crops larger slices to ``patch`` around the class.
    """

    def __init__(self, volumes: list[Volume], items: list[tuple[int, int]], k: int, num_classes: int,
                 patch: int = 256, p_foreground: float = 0.67, seed: int = 0):
        self.volumes, self.items, self.k = volumes, items, k
        self.patch = patch
        self.p_fg = p_foreground
        self.rng = np.random.default_rng(seed)
        self.by_class: dict[int, list[tuple[int, int]]] = {}
        for vi, s in items:
            present = np.unique(volumes[vi].target[s])
            for c in present:
                if 0 < c < num_classes:
                    self.by_class.setdefault(int(c), []).append((vi, s))
        self.classes = sorted(self.by_class)

    def _crop_origin(self, shape, centre):
        h, w = shape
        ph, pw = padded_size(min(h, self.patch), min(w, self.patch))
        out = []
        for size, p, c in zip((h, w), (ph, pw), centre):
            lo = int(np.clip(c - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), min(0, size - p), max(0, size - p)))
            out.append(lo)
        return out, (ph, pw)

    def pick(self) -> tuple[int, int, tuple[int, int]]:
        """``(volume, slice, (y, x))``: a voxel of a uniformly chosen class with probability
        ``p_foreground``, otherwise any voxel of a labelled training slice."""
        if self.classes and self.rng.random() < self.p_fg:
            cls = self.classes[self.rng.integers(len(self.classes))]
            vi, s = self.by_class[cls][self.rng.integers(len(self.by_class[cls]))]
            ys, xs = np.nonzero(self.volumes[vi].target[s] == cls)
            j = self.rng.integers(len(ys))
            return vi, s, (int(ys[j]), int(xs[j]))
        vi, s = self.items[self.rng.integers(len(self.items))]
        h, w = self.volumes[vi].image.shape[-2:]
        return vi, s, (int(self.rng.integers(h)), int(self.rng.integers(w)))

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        images, targets = [], []
        for _ in range(batch_size):
            vi, s, centre = self.pick()
            vol = self.volumes[vi]
            h, w = vol.image.shape[-2:]
            (y0, x0), (ph, pw) = self._crop_origin((h, w), centre)
            img = vol.slab(s, self.k)
            tgt = vol.target[s]
            images.append(crop_pad(img, y0, x0, ph, pw, value=float(img.min())))
            targets.append(crop_pad(tgt[None], y0, x0, ph, pw, value=IGNORE)[0])
        # batches of one size: pad every sample to the largest
        H = max(i.shape[1] for i in images)
        W = max(i.shape[2] for i in images)
        images = [crop_pad(i, 0, 0, H, W, float(i.min())) for i in images]
        targets = [crop_pad(t[None], 0, 0, H, W, IGNORE)[0] for t in targets]
        return np.stack(images), np.stack(targets)


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
    from MedTransferLib.data.slabs import crop_pad_nd

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
