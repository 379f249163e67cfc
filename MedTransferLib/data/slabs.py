"""Volumes as stacks of slices: axis moves, 2.5D slabs of k adjacent slices, padding, the
cached standardised ``Volume`` the training samples from, and crops."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from MedTransferLib.core.case import IGNORE, Case
from MedTransferLib.data.preprocessing import Preprocessing

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
