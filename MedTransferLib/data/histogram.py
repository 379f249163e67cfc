"""Nyúl histogram standardisation (MR): landmarks of an image's intensity histogram, a standard
scale learnt from the training images, and the piecewise-linear map onto it."""

from __future__ import annotations

import numpy as np

from MedTransferLib.core.errors import MedTransferError

HIST_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def sparse_sample(image: np.ndarray) -> np.ndarray:
    """About 48 slices of the first axis, as float32: enough for percentiles, cheap on a CT."""
    return np.asarray(image[:: max(1, image.shape[0] // 48)], dtype=np.float32)


def landmarks(image: np.ndarray) -> np.ndarray:
    s = sparse_sample(image)
    fg = s[s > np.percentile(s, 10)] if s.size > 100 else s   # leave most of the background out
    if fg.size == 0:   # (nearly) constant: nothing above the 10th percentile
        fg = s
    return np.percentile(fg, HIST_PERCENTILES).astype(np.float64)


def learn_landmarks(images) -> tuple[float, ...]:
    """Nyúl & Udupa's standard scale: each image's landmarks rescaled so its 1st and 99th
    percentiles map to 0 and 100, averaged over the training images."""
    scaled = []
    for img in images:
        lm = landmarks(img)
        if lm[-1] - lm[0] < 1e-6:
            raise MedTransferError("an image is constant: histogram standardisation cannot learn from it")
        scaled.append((lm - lm[0]) / (lm[-1] - lm[0]) * 100.0)
    return tuple(round(float(v), 4) for v in np.mean(scaled, axis=0))


def apply_landmarks(image: np.ndarray, standard: tuple[float, ...], own=None) -> np.ndarray:
    """Piecewise-linear map of the image's landmarks onto the standard scale (linear beyond).
    ``own``: the image's own landmarks, already measured (when ``image`` is a block of it)."""
    lm = landmarks(image) if own is None else np.asarray(own, np.float64)
    lm = np.maximum.accumulate(lm + np.arange(lm.size) * 1e-6)   # strictly increasing
    std = np.asarray(standard, np.float64)
    out = np.interp(image, lm, std).astype(np.float32)
    lo_slope = (std[1] - std[0]) / (lm[1] - lm[0])
    hi_slope = (std[-1] - std[-2]) / (lm[-1] - lm[-2])
    below, above = image < lm[0], image > lm[-1]
    out[below] = (std[0] + (image[below] - lm[0]) * lo_slope).astype(np.float32)
    out[above] = (std[-1] + (image[above] - lm[-1]) * hi_slope).astype(np.float32)
    return out
