"""2.5D training data: k adjacent slices as channels, targets only where labels exist.

Volumes are standardised once and cached as ``(S, H, W)`` arrays with the slice axis first;
every sample afterwards is index arithmetic on those arrays (no file I/O or resampling), and
augmentation runs batched in torch (one ``grid_sample`` per batch) — cheaper on CPU than
per-sample MONAI dictionary transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .case import IGNORE, Case
from .errors import MedTransferError
from .preprocessing import Preprocessing

PAD_MULTIPLE = 32  # the encoders downsample 5 times


def to_slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    """``(k, j, i)`` array → ``(S, H, W)`` with voxel axis ``axis`` (0=i, 1=j, 2=k) first;
    ``(C, k, j, i)`` → ``(C, S, H, W)``."""
    lead = volume.ndim - 3
    return np.moveaxis(volume, lead + 2 - axis, lead)


def from_slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    lead = volume.ndim - 3
    return np.moveaxis(volume, lead, lead + 2 - axis)


def with_channels(image: np.ndarray) -> np.ndarray:
    """``(S, H, W)`` → ``(1, S, H, W)``; a ``(C, S, H, W)`` array is returned as it is."""
    return image[None] if image.ndim == 3 else image


def gather_slabs(image: np.ndarray, slices, k: int) -> np.ndarray:
    """``(B, C·k, H, W)`` slabs of a ``(C, S, H, W)`` (or ``(S, H, W)``) volume, centred on
    ``slices``; channels are modality-major (T1 s-1, T1 s, T1 s+1, T2 s-1 …), so ``--stem repeat``
    gives every modality the RGB filters."""
    image = with_channels(image)
    c, n, h, w = image.shape
    idx = np.stack([slab_indices(s, n, k) for s in slices])            # (B, k)
    x = image[:, idx]                                                   # (C, B, k, H, W)
    return np.ascontiguousarray(x.transpose(1, 0, 2, 3, 4).reshape(len(idx), c * k, h, w))


def slab_indices(s: int, n: int, k: int) -> np.ndarray:
    """The k slice indices centred on ``s``, clamped at the volume's ends (edge replication)."""
    return np.clip(np.arange(s - k // 2, s - k // 2 + k), 0, n - 1)


def padded_size(h: int, w: int) -> tuple[int, int]:
    return (math.ceil(h / PAD_MULTIPLE) * PAD_MULTIPLE, math.ceil(w / PAD_MULTIPLE) * PAD_MULTIPLE)


def value_lut(values: list[int], max_value: int) -> np.ndarray:
    """Lookup table: label value → class index (1..C), 0 → 0, anything else → IGNORE."""
    lut = np.full(max(max_value, IGNORE) + 1, IGNORE, dtype=np.uint8)
    lut[0] = 0
    for i, v in enumerate(values, start=1):
        lut[v] = i
    return lut


@dataclass
class Volume:
    """A cached, standardised case with the slice axis first."""

    image: np.ndarray          # (C, S, H, W) float32, standardised
    target: np.ndarray | None  # (S, H, W) uint8 class indices, IGNORE where unlabelled
    case_id: str

    @classmethod
    def from_case(cls, case: Case, prep: Preprocessing, axis: int, values: list[int]) -> "Volume":
        image = to_slices_first(with_channels(prep.standardise(case.image)), axis)
        target = None
        if case.label is not None:
            lut = value_lut(values, int(case.label.max()))
            target = to_slices_first(lut[case.label], axis)
        return cls(np.ascontiguousarray(image), None if target is None else np.ascontiguousarray(target),
                   case.case_id)

    def __post_init__(self):
        self.image = with_channels(self.image)

    def slab(self, s: int, k: int) -> np.ndarray:
        return gather_slabs(self.image, [s], k)[0]


MIN_FG_SLICES_FOR_VALIDATION = 10


def split_train_val(volumes: list[Volume], val_fraction: float, seed: int):
    """Split labelled slices into training and validation sets.

    Several cases: whole cases go to validation (never one case's slices on both sides).
    One case: whole labelled slices are held out, spread evenly over those with structures —
    when it has at least 10 of them; with fewer, all are needed for training (no validation).
    Returns ``(train, val, note)`` with train/val lists of ``(volume index, slice)``.
    """
    labelled = []
    for vi, vol in enumerate(volumes):
        lab = vol.target != IGNORE
        idx = np.nonzero(lab.any(axis=(1, 2)))[0]
        if len(idx) == 0:
            raise MedTransferError(f"case '{vol.case_id}' has no labelled slice; label at least one "
                                   f"slice or remove the case from the datalist")
        labelled.append(idx)
    rng = np.random.default_rng(seed)
    if len(volumes) > 1 and val_fraction <= 0:   # every case trains (a test found case 0 alone did)
        return ([(vi, int(s)) for vi in range(len(volumes)) for s in labelled[vi]], [],
                "validation: none (validation fraction 0); training runs for the full number of epochs "
                "without early stopping")
    if len(volumes) > 1:
        n_val = max(1, round(val_fraction * len(volumes)))
        order = rng.permutation(len(volumes))
        val_cases = set(order[:n_val].tolist())
        train = [(vi, int(s)) for vi in range(len(volumes)) if vi not in val_cases for s in labelled[vi]]
        val = [(vi, int(s)) for vi in sorted(val_cases) for s in labelled[vi]]
        note = (f"validation: {n_val} of {len(volumes)} cases held out "
                f"({', '.join(volumes[v].case_id for v in sorted(val_cases))})")
        return train, val, note
    vol = volumes[0]
    fg = [int(s) for s in labelled[0] if ((vol.target[s] > 0) & (vol.target[s] != IGNORE)).any()]
    empty = [int(s) for s in labelled[0] if int(s) not in set(fg)]
    # Holding out slices from a handful costs more than validation gives: on the sample task
    # (5 labelled slices with structures) it cost 0.045 mean Dice on the never-labelled slices.
    n_val = round(val_fraction * len(fg)) if len(fg) >= MIN_FG_SLICES_FOR_VALIDATION else 0
    if n_val == 0:
        why = ("validation fraction 0" if val_fraction == 0 else
               f"one case with {len(fg)} labelled slices holding structures; at least "
               f"{MIN_FG_SLICES_FOR_VALIDATION} are needed before some are held out")
        note = (f"validation: none ({why}); training runs for the full number of epochs without "
                f"early stopping")
        return [(0, s) for s in labelled[0]], [], note

    def spread(items, n):
        if n <= 0:
            return []
        pos = (np.arange(n) + 0.5) * len(items) / n
        return [items[int(p)] for p in pos]

    val_slices = set(spread(fg, n_val)) | set(spread(empty, round(val_fraction * len(empty))))
    train = [(0, int(s)) for s in labelled[0] if int(s) not in val_slices]
    val = [(0, s) for s in sorted(val_slices)]
    note = (f"validation: one case, so {len(val)} of {len(labelled[0])} labelled slices are held out "
            f"({n_val} with structures: {sorted(set(spread(fg, n_val)))}); they are not trained on")
    return train, val, note


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


def largest_extent(volumes: list[Volume], items) -> int:
    """The largest in-plane extent (pixels) of any structure on the given labelled slices."""
    extent = 0
    for vi, s in items:
        t = volumes[vi].target[s]
        for c in np.unique(t):
            if 0 < c != IGNORE:
                ys, xs = np.nonzero(t == c)
                extent = max(extent, int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1)
    return extent


def crop_pad(arr: np.ndarray, y0: int, x0: int, h: int, w: int, value) -> np.ndarray:
    """``arr[:, y0:y0+h, x0:x0+w]``, padding with ``value`` where the window leaves the array."""
    out = np.full((arr.shape[0], h, w), value, dtype=arr.dtype)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(arr.shape[1], y0 + h), min(arr.shape[2], x0 + w)
    if ye > ys and xe > xs:
        out[:, ys - y0:ye - y0, xs - x0:xe - x0] = arr[:, ys:ye, xs:xe]
    return out


def augment(images: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator,
            rotate_deg: float = 15.0, scale: tuple[float, float] = (0.85, 1.15),
            intensity: float = 0.1, noise: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-plane rotation/scaling (no flips: left and right structures differ) and
    intensity scale/shift/noise, for a whole batch at once: 2D ``(B, C, H, W)`` slabs, or 3D
    ``(B, C, D, H, W)`` patches (rotation about the slice axis, isotropic scale). Target voxels
    that come from outside the crop are IGNORE.

    Runs where ``images`` are: training puts a batch on the GPU first, since on a CPU this is
    most of a 3D batch's preparation (15–16 ms of 18–19 for two 64³ patches on 2 EPYC cores,
    bench/profile_training.py) and the card otherwise waits for it. The random draws are the
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
