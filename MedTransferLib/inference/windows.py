"""Whole-volume prediction: 2.5D slice by slice in batches, 3D by a streamed sliding window."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from MedTransferLib.core.device import autocast
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.data.slabs import gather_slabs, padded_size, with_channels

# how far a 2.5D prediction looks along the slice axis (smooth_weight()): a Gaussian this many
# in-plane pixels wide. 0 turns it off (bench/guide_rescore.py --smooth compares).
SMOOTH_PIXELS = 1.0


def smooth_weight(slice_mm: float, pixel_mm: float) -> float:
    """The weight of each neighbouring slice when a 2.5D prediction is smoothed along the slice
    axis: a Gaussian of σ = ``SMOOTH_PIXELS`` in-plane pixels sampled at the slice spacing, its
    three taps normalised — 0.27 on isotropic voxels, under 0.01 on slices 2.5 mm apart with
    0.8-mm pixels (where neighbouring slices differ too much to vote). 0 where it is off."""
    if SMOOTH_PIXELS <= 0 or not (slice_mm > 0 and pixel_mm > 0):
        return 0.0
    g = float(np.exp(-0.5 * (slice_mm / (SMOOTH_PIXELS * pixel_mm)) ** 2))
    return g / (1.0 + 2.0 * g)


def slice_smoothing(spacing, axis: int) -> float:
    """:func:`smooth_weight` for a volume of voxel ``spacing`` (i, j, k) in mm predicted along
    voxel ``axis`` (0=i, 1=j, 2=k): the slice spacing against the finer in-plane pixel side."""
    return smooth_weight(float(spacing[axis]), min(float(s) for a, s in enumerate(spacing) if a != axis))


def _smoothed(batches, w: float):
    """Each slice's log-probabilities averaged with its neighbours' (weights ``w``, ``1 - 2w``,
    ``w``; a neighbour that was not predicted drops out and the rest are renormalised), then
    softmax: the weighted geometric mean of the three slices' probabilities. A 2.5D network sees
    each slice once, in the middle of its slab, and neighbouring slices' predictions differ by
    chance as well as by anatomy; on the sample MRI this raised the network alone's mean Dice on
    never-labelled slices by 0.006-0.025 and left a synthetic CT of 2.5-mm slices unchanged
    (bench/guide_rescore.py ``--smooth``, bench/RESULTS.md).

    ``batches`` yields ``(start, zs, logp)``: a batch's position in the output, its slice indices
    and log-softmax ``(B, C, H, W)``. Yields ``(start, probs)`` one batch behind: a batch's last
    slice waits for the first slice of the next."""
    held = before = None    # the batch waiting for its successor; the (slice, logp) before it
    for item in itertools.chain(batches, [None]):
        if held is not None:
            start, zs, lp = held
            after = (item[1][0], item[2][0]) if item is not None else None
            total = (1 - 2 * w) * lp
            for j, z in enumerate(zs):
                left = (zs[j - 1], lp[j - 1]) if j > 0 else before
                right = (zs[j + 1], lp[j + 1]) if j + 1 < len(zs) else after
                norm = 1 - 2 * w
                for neighbour in (left, right):
                    if neighbour is not None and abs(neighbour[0] - z) == 1:
                        total[j] += w * neighbour[1]
                        norm += w
                total[j] /= norm
            yield start, torch.softmax(total, 1)
            before = (zs[-1], lp[-1])
        held = item


@torch.inference_mode()
def predict_slices(model: torch.nn.Module, image: np.ndarray, k: int, prep: Preprocessing,
                   device: torch.device, slices=None, batch_size: int = 16,
                   probabilities: bool = False, guide=None, smooth: float = 0.0) -> np.ndarray:
    """Class indices ``(len(slices), H, W)`` (uint8) for a standardised ``(S, H, W)`` or
    ``(C, S, H, W)`` volume.

    With ``probabilities=True`` returns float32 softmax ``(len(slices), C, H, W)`` instead.
    ``guide``: an :class:`~MedTransferLib.inference.guide.Guide` of the volume's painted slices,
    combined with the softmax of each batch (inference/guide.py). ``smooth``: the weight of each
    neighbouring slice (:func:`smooth_weight`) in a smoothing along the slice axis of the
    probabilities of the slices predicted (:func:`_smoothed`); 0 predicts each slice alone.
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

    def logits():
        for i in range(0, len(slices), batch_size):
            x = torch.from_numpy(gather_slabs(image, slices[i:i + batch_size], k)).to(device)
            x = F.pad(x, pad, mode="replicate")
            x = prep.to_backbone(x)
            with autocast(device):
                scores = model(x)[..., :h, :w].float()
            yield i, scores

    if smooth > 0:   # probabilities, smoothed along the slices
        batches = _smoothed(((i, slices[i:i + len(s)], torch.log_softmax(s, 1)) for i, s in logits()), smooth)
    else:            # logits
        batches = logits()
    for i, scores in batches:
        if probabilities or guide is not None:
            p = (scores if smooth > 0 else torch.softmax(scores, 1)).cpu().numpy()
            if probabilities:
                probs.append(p)
            else:
                out[i:i + len(p)] = guide.fuse(slices[i:i + len(p)], p)
        else:
            # max().indices, not argmax(): the same first-maximum index, faster on the CPU (bench/NOTES.md)
            out[i:i + len(scores)] = scores.max(1).indices.to(torch.uint8).cpu().numpy()
    if probabilities:
        return np.concatenate(probs) if probs else np.zeros((0, 0, h, w), np.float32)
    return out


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = 255) -> list[float]:
    """Dice per foreground class over voxels where ``target != ignore``; NaN where a class is
    absent from both."""
    from MedTransferLib.data.metrics import dice

    valid = target != ignore
    return [dice((pred == c) & valid, (target == c) & valid) for c in range(1, num_classes)]


class Slabs:
    """A standardised ``(C, D, H, W)`` volume that 3D prediction reads a window at a time: from
    an array, or through ``read(zs, ys, xs)`` (slices of the three axes) that standardises just
    that block of the raw image (:meth:`Preprocessing.apply`), so that no standardised copy of a
    large CT is held beside the scores (bench/NOTES.md, change 3)."""

    def __init__(self, shape, read):
        self.shape = tuple(int(n) for n in shape)
        self.read = read

    @classmethod
    def of(cls, image) -> "Slabs":
        if isinstance(image, cls):
            return image
        image = with_channels(image)
        return cls(image.shape, lambda zs, ys, xs: image[:, zs, ys, xs])


def _windows(size, roi, overlap: float):
    """MONAI's sliding-window grid for a volume of ``size``: the size after its symmetric padding
    to at least ``roi``, the padding before, and the window slices in MONAI's order (first axis
    slowest). The interval is MONAI's ``_get_scan_interval`` (private there, so restated)."""
    from monai.data.utils import dense_patch_slices

    padded = tuple(max(s, r) for s, r in zip(size, roi))
    before = tuple((p - s) // 2 for s, p in zip(size, padded))
    interval = tuple(r if r == p else max(1, int(r * (1 - overlap))) for r, p in zip(roi, padded))
    return padded, before, dense_patch_slices(padded, roi, interval)


@torch.inference_mode()
def predict_volume_3d(model: torch.nn.Module, image, prep: Preprocessing,
                      device: torch.device, patch, num_classes: int, overlap: float = 0.25,
                      batch_size: int = 2, probabilities: bool = False) -> np.ndarray:
    """Class indices ``(D, H, W)`` for a standardised ``(D, H, W)`` or ``(C, D, H, W)`` volume
    (or :class:`Slabs`): MONAI's sliding window with Gaussian blending — the same windows, weights,
    batches and sums as ``monai.inferers.sliding_window_inference``, hence the same labels.

    Why not that function itself: it holds float scores for every voxel and class (a 512×512×600
    CT with 8 structures: 5.6 GB). Here windows are visited in MONAI's order (first axis slowest)
    and the scores live in a buffer one window deep; the slices no later window reaches are
    divided by their weight sum, reduced to class indices and dropped; each window's input is
    read (and, from :class:`Slabs`, standardised) on its own. Memory: one float per class for
    ``patch[0]`` slices, plus the uint8 result. With ``probabilities=True`` returns
    float32 softmax ``(C, D, H, W)`` (MONAI's function, whole volume: meant for small volumes).
    """
    from monai.data.utils import compute_importance_map

    model.eval()

    def run(x):
        with autocast(device):
            return model(prep.to_backbone(x)).float()

    roi = tuple(int(p) for p in patch)
    if probabilities:
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(np.ascontiguousarray(with_channels(image)))[None]
        scores = sliding_window_inference(x, roi_size=roi, sw_batch_size=batch_size, predictor=run,
                                          overlap=overlap, mode="gaussian", padding_mode="replicate",
                                          sw_device=device, device="cpu")
        return torch.softmax(scores[0], 0).numpy()
    slabs = Slabs.of(image)
    _, d, h, w = slabs.shape
    padded, before, windows = _windows((d, h, w), roi, overlap)
    weight = compute_importance_map(roi, mode="gaussian", device=device, dtype=torch.float32)[None]
    depth = roi[0]
    scores = torch.zeros((num_classes, depth) + padded[1:], dtype=torch.float32, device=device)
    out = np.empty((d, h, w), np.uint8)
    base = 0                       # padded slice held in the buffer's first plane
    # replicate padding is index clamping: padded position → voxel of the volume, per axis
    rows = [np.clip(np.arange(p) - b, 0, n - 1) for p, b, n in zip(padded, before, (d, h, w))]
    z_starts = np.array([win[0].start for win in windows])

    def read(win) -> np.ndarray:
        """One window of the standardised input, read (and standardised) on its own."""
        src = [r[s] for r, s in zip(rows, win)]
        block = np.asarray(slabs.read(*(slice(int(i[0]), int(i[-1]) + 1) for i in src)), np.float32)
        block = with_channels(block)
        for axis, i in enumerate(src, start=1):
            if (np.diff(i) != 1).any():                  # a padded edge: repeat the border voxel
                block = np.take(block, i - i[0], axis=axis)
        return block

    def emit(upto):
        """Padded slices base..upto are final: weighted mean → class index → ``out``. The weight
        sums are added up here, window by window in MONAI's order (its count map, bit for bit),
        for 8 slices at a time instead of being held for the whole buffer."""
        for z in range(base, upto, 8):
            lo, hi = max(z, before[0]), min(upto, z + 8, before[0] + d)
            if lo >= hi:
                continue
            count = torch.zeros((1, hi - lo) + padded[1:], dtype=torch.float32, device=device)
            for k in np.nonzero((z_starts < hi) & (z_starts + depth > lo))[0]:
                zs, ys, xs = windows[k]
                a, b = max(lo, zs.start), min(hi, zs.stop)
                count[:, a - lo:b - lo, ys, xs] += weight[:, a - zs.start:b - zs.start]
            s = (scores[:, lo - base:hi - base] / count).max(0).indices   # = argmax(0), faster (bench/NOTES.md)
            out[lo - before[0]:hi - before[0]] = s[:, before[1]:before[1] + h, before[2]:before[2] + w] \
                .to(torch.uint8).cpu().numpy()

    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        pred = run(torch.from_numpy(np.stack([read(win) for win in batch])).to(device))
        pred *= weight[None]
        for win, p in zip(batch, pred):
            if win[0].start > base:          # no later window reaches the slices before it
                emit(win[0].start)
                shift = win[0].start - base
                for j in range(depth - shift):   # plane by plane, front first: no temporary copy
                    scores[:, j] = scores[:, j + shift]
                scores[:, depth - shift:] = 0
                base = win[0].start
            scores[(slice(None), slice(win[0].start - base, win[0].stop - base), win[1], win[2])] += p
    emit(padded[0])
    return out
