"""Calibrated class probabilities: temperature scaling and the expected calibration error."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising the validation NLL of
    softmax(logits / T); a 1D search on log T in [0.25, 20] ([1, 20] when every validation item
    is already right: there the NLL has no minimum and sharpening would only overfit)."""
    logits, y = np.asarray(logits, np.float64), np.asarray(y, int)

    def nll(t):
        p = softmax(logits / t)
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))

    if (logits.argmax(1) == y).all():
        # perfectly separated validation: the NLL keeps falling as T → 0, which would make the
        # network arbitrarily overconfident on a few items; soften only (T ≥ 1)
        lo_t = 1.0
    else:
        lo_t = 0.25
    grid = np.exp(np.linspace(np.log(lo_t), np.log(20), 121))
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    lo, hi = max(lo_t, best / 1.08), best * 1.08
    for _ in range(40):   # golden-section refinement
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return round(float((lo + hi) / 2), 4)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == np.asarray(y)).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        m = (conf > a) & (conf <= b)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)
