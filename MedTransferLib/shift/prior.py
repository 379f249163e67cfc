"""Prior (label) shift: the target prevalence estimated (EM, BBSE) or given, posteriors adjusted;
for segmentation, class fractions flagged against training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from MedTransferLib.core.errors import MedTransferError

if TYPE_CHECKING:
    pass


def adjust_posteriors(probs: np.ndarray, source_prior, target_prior) -> np.ndarray:
    """Bayes' rule for a new prevalence: p'(y|x) ∝ p(y|x) · q(y) / p(y)."""
    w = np.asarray(target_prior, float) / np.clip(np.asarray(source_prior, float), 1e-12, None)
    adj = probs * w[None]
    return adj / np.clip(adj.sum(axis=1, keepdims=True), 1e-12, None)


def em_prior(probs: np.ndarray, source_prior, iters: int = 1000, tol: float = 1e-8):
    """Saerens, Latinne & Decaestecker (2002): re-estimate the target prevalence from unlabelled
    posteriors by EM; returns ``(prior, adjusted posteriors, iterations)``."""
    probs = np.asarray(probs, float)
    source = np.asarray(source_prior, float)
    prior = source.copy()
    for it in range(1, iters + 1):
        adj = adjust_posteriors(probs, source, prior)
        new = adj.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            prior = new
            break
        prior = new
    return prior, adjust_posteriors(probs, source, prior), it


def confusion_given_truth(pred: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = P(ŷ = i | y = j) on labelled (validation) data."""
    C = np.zeros((n_classes, n_classes))
    for j in range(n_classes):
        m = np.asarray(y) == j
        if not m.any():
            raise MedTransferError(f"BBSE needs validation cases of every class; class {j} has none")
        C[:, j] = np.bincount(np.asarray(pred)[m], minlength=n_classes) / m.sum()
    return C


def bbse_prior(confusion, target_pred: np.ndarray) -> np.ndarray:
    """Black-box shift estimation (Lipton et al. 2018): solve C q = μ for the target prevalence
    q, with C = P(ŷ | y) from validation and μ the target's predicted-class frequencies;
    clipped at 0 and normalised."""
    C = np.asarray(confusion, float)
    n = C.shape[0]
    mu = np.bincount(np.asarray(target_pred), minlength=n) / max(1, len(target_pred))
    q, *_ = np.linalg.lstsq(C, mu, rcond=None)
    q = np.clip(q, 0, None)
    return q / q.sum() if q.sum() > 0 else np.full(n, 1.0 / n)


def _known_prior(spec: str, classes: list[str]) -> np.ndarray:
    body = spec.split(":", 1)[1]
    parts = [x.strip() for x in body.split(",") if x.strip()]
    try:
        if all("=" in x for x in parts):
            given = {k.strip(): float(v) for k, v in (x.split("=", 1) for x in parts)}
            unknown = set(given) - set(classes)
            if unknown or set(given) != set(classes):
                raise ValueError
            q = np.array([given[c] for c in classes])
        else:
            q = np.array([float(x) for x in parts])
            if q.size != len(classes):
                raise ValueError
    except ValueError:
        raise MedTransferError(f"--prior {spec}: give one prevalence per class, e.g. known:"
                               + ",".join(f"{c}=0.5" for c in classes)) from None
    if (q < 0).any() or q.sum() <= 0:
        raise MedTransferError(f"--prior {spec}: prevalences must be ≥ 0 and not all 0")
    return q / q.sum()


def prior_correction(rows: list[dict], classes: list[str], calibration: dict, method: str):
    """Adjust predicted class probabilities of a set of target cases to their prevalence:
    ``em`` (estimated from the predictions themselves), ``bbse`` (from predicted-class counts and
    the validation confusion), or ``known:a=0.1,b=0.9``. Returns ``(rows, report)``: rows with
    adjusted ``p_*``/``predicted`` (and ``predicted_before``), and the estimated prior with the
    number of decisions that changed."""

    probs = rows_to_probs(rows, classes)
    source = np.asarray(calibration.get("source_prior") or [1.0 / len(classes)] * len(classes))
    if method == "em":
        prior, adj, _ = em_prior(probs, source)
    elif method == "bbse":
        if "confusion" not in calibration:
            raise MedTransferError("--prior bbse needs the validation confusion matrix, which this model "
                                   "lacks (it had no validation cases); use --prior em")
        prior = bbse_prior(calibration["confusion"], probs.argmax(1))
        adj = adjust_posteriors(probs, source, prior)
    elif method.startswith("known:"):
        prior = _known_prior(method, classes)
        adj = adjust_posteriors(probs, source, prior)
    else:
        raise MedTransferError(f"--prior {method} unknown; use em, bbse or known:CLASS=P,...")
    out = []
    for row, p in zip(rows, adj):
        r = dict(row, predicted_before=row.get("predicted"), predicted=classes[int(p.argmax())])
        r.update({f"p_{c}": float(v) for c, v in zip(classes, p)})
        out.append(r)
    changed = sum(r["predicted"] != r["predicted_before"] for r in out)
    report = {"method": method.split(":")[0], "cases": len(out),
              "training_prior": {c: round(float(v), 4) for c, v in zip(classes, source)},
              "estimated_prior": {c: round(float(v), 4) for c, v in zip(classes, prior)},
              "decisions_changed": int(changed)}
    return out, report


def class_fractions(label: np.ndarray, labels, ignore: int | None = None) -> dict[str, float]:
    """Fraction of (labelled) voxels per structure."""
    lab = label if ignore is None else label[label != ignore]
    total = max(1, lab.size)
    counts = np.bincount(np.asarray(lab).ravel().astype(np.int64), minlength=max(l.value for l in labels) + 1)
    return {l.name: float(counts[l.value]) / total for l in labels}


def fraction_flag(fraction: float, reference: list[float], factor: float = 2.0) -> str:
    """'ok', 'low' or 'high' against the training cases' fractions (outside [min/f, max·f])."""
    if not reference:
        return "unknown"
    lo, hi = min(reference), max(reference)
    if fraction < lo / factor:
        return "low"
    if fraction > hi * factor:
        return "high"
    return "ok"


def rows_to_probs(rows: list[dict], classes: list[str]) -> np.ndarray:
    try:
        return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    except KeyError as exc:
        raise MedTransferError(f"prediction table lacks the column {exc}; it must come from "
                               f"'medtransfer predict' with a model of these classes") from None
