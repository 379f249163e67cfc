"""Domain-shift toolkit (MISSION.md): make covariate, prior and concept shift visible in plain
numbers, and correct what can be corrected.

Covariate shift — images that look different:
- :func:`intensity_profile` / :func:`input_check`: a case's intensities before and after the
  model's preprocessing, against the training set's and against what the backbone expects;
  wrong modality presets (MR through a CT window and vice versa) are named.
- :func:`ood_score` + :func:`calibrate_ood` / :func:`ood_verdict`: a label-free out-of-
  distribution score — the distance between a case's BatchNorm-layer input statistics and the
  training set's (measured with the trained model at the end of training on whole slices of the
  training volumes, stored in the package as ``reference_stats.safetensors``) — calibrated on
  chunks of the training volumes into "in range / unusual / far out".
- Corrections: AdaBN at prediction (``predict --adapt-bn``, on the case or on unlabelled target
  cases) and Nyúl histogram standardisation for MR (:func:`learn_landmarks`, ``--histogram-
  standardise``).

Prior shift — prevalence that differs (classification): :func:`fit_temperature` (temperature
scaling on validation logits), :func:`em_prior` (Saerens et al. 2002), :func:`bbse_prior`
(Lipton et al. 2018), :func:`adjust_posteriors` for a known prevalence. Segmentation:
:func:`class_fractions` against the training set's.

Concept shift — labels that mean something else: :func:`label_audit` (two or more annotations
of one volume) and :func:`site_audit` (label statistics per site). Nothing here can fix concept
shift; it makes it visible.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from .errors import MedTransferError

HIST_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


# ---- covariate shift: the input check -----------------------------------------------------------

def _sample(image: np.ndarray) -> np.ndarray:
    return np.asarray(image[:: max(1, image.shape[0] // 48)], dtype=np.float32)


def intensity_profile(image: np.ndarray, prep, standardised: np.ndarray | None = None) -> dict:
    """Raw percentiles, the detected modality, and the statistics after the model's
    preprocessing (standardised, then mapped to the backbone's expected input).
    ``standardised``: ``prep.standardise(image)`` (same layout) when the caller already has it."""
    from .preprocessing import detect_modality

    channels = [image] if image.ndim == 3 else list(image)
    out = {"channels": []}
    std = prep.standardise(image) if standardised is None else standardised
    std_channels = [std] if std.ndim == 3 else list(std)
    for c, (raw, st) in enumerate(zip(channels, std_channels)):
        s, t = _sample(raw), _sample(st)
        p1, p50, p99 = (float(v) for v in np.percentile(s, (1, 50, 99)))
        mean_b = float(t.mean()) * prep.target_std[c % len(prep.target_std)] + prep.target_mean[c % len(prep.target_mean)]
        std_b = float(t.std()) * prep.target_std[c % len(prep.target_std)]
        out["channels"].append({
            "raw_p1": round(p1, 3), "raw_p50": round(p50, 3), "raw_p99": round(p99, 3),
            "detected_modality": detect_modality(raw),
            "std_p1": round(float(np.percentile(t, 1)), 4), "std_p99": round(float(np.percentile(t, 99)), 4),
            "backbone_mean": round(mean_b, 4), "backbone_std": round(std_b, 4),
            "saturated": round(float(np.mean(np.abs(t) >= 0.999 * max(1e-6, float(np.abs(t).max())))), 4)})
    return out


def training_reference(profiles: list[dict]) -> dict:
    """What :func:`input_check` compares against: per channel, the training cases' raw
    intensity range (p99 − p1) and standardised percentiles."""
    if not profiles:
        return {}
    ref = []
    for c in range(len(profiles[0]["channels"])):
        chans = [p["channels"][c] for p in profiles]
        ref.append({"raw_range": [float(ch["raw_p99"] - ch["raw_p1"]) for ch in chans],
                    "raw_p50": [float(ch["raw_p50"]) for ch in chans],
                    "std_p99": [float(ch["std_p99"]) for ch in chans]})
    return {"cases": len(profiles), "channels": ref}


def input_check(image: np.ndarray, prep, reference: dict | None = None, case_id: str = "",
                profile: dict | None = None) -> list[str]:
    """Warnings (with numbers and the fix) when a case's intensities are off: wrong modality
    preset, an input far from what the backbone expects, a range far from the training set's.
    ``profile``: the case's :func:`intensity_profile` when already computed."""
    prof = profile or intensity_profile(image, prep)
    mods = prep.channel_modalities or (prep.modality,)
    warnings = []
    name = f"case '{case_id}'" if case_id else "this case"
    for c, ch in enumerate(prof["channels"]):
        which = f"{name}" + (f", image {c + 1}" if len(prof["channels"]) > 1 else "")
        model_mod = mods[c] if c < len(mods) else mods[0]
        if ch["detected_modality"] != model_mod:
            if model_mod == "CT":
                warnings.append(f"{which} looks like MR (1st percentile {ch['raw_p1']:g}, no air near -1000 HU) "
                                f"but the model reads it through a CT window: the network sees the wrong "
                                f"contrast. Use a model trained on MR (or --modality MR when training)")
            else:
                warnings.append(f"{which} looks like CT (1st percentile {ch['raw_p1']:g} HU) but the model "
                                f"standardises it as MR: use a model trained on CT (or --modality CT)")
        tm = prep.target_mean[c % len(prep.target_mean)]
        ts = prep.target_std[c % len(prep.target_std)]
        if abs(ch["backbone_mean"] - tm) > 1.0 * ts or not 0.33 < ch["backbone_std"] / ts < 3.0:
            warnings.append(f"{which}: the network input has mean {ch['backbone_mean']:.2f} and spread "
                            f"{ch['backbone_std']:.2f}, the backbone expects about {tm:.2f} ± {ts:.2f}; "
                            f"the preprocessing does not fit this image (check modality and contents)")
        if reference and c < len(reference.get("channels", [])):
            ref = reference["channels"][c]
            rng = max(1e-6, ch["raw_p99"] - ch["raw_p1"])
            lo, hi = min(ref["raw_range"]), max(ref["raw_range"])
            factor = max(rng / hi, lo / rng) if (rng > hi or rng < lo) else 1.0
            if factor > 3.0:
                warnings.append(f"{which}: raw intensity range {rng:.4g} vs {lo:.4g}–{hi:.4g} in the training "
                                f"set (×{factor:.1f}); per-image standardisation corrects a linear scale, "
                                f"but if predictions look wrong try --adapt-bn (or train with "
                                f"--histogram-standardise for MR)")
            sp = ch["std_p99"]
            if not (min(ref["std_p99"]) - 1.0 <= sp <= max(ref["std_p99"]) + 1.0):
                warnings.append(f"{which}: after standardisation its 99th percentile is {sp:.2f} vs "
                                f"{min(ref['std_p99']):.2f}–{max(ref['std_p99']):.2f} in training — a "
                                f"different contrast or intensity distribution; try --adapt-bn")
    return warnings


# ---- covariate shift: out-of-distribution score -------------------------------------------------

def activation_stats(model, batches) -> dict:
    """Per BatchNorm layer, the per-channel mean and variance of its input over ``batches``
    (what the layer sees), as float32 tensors ``{name.mean, name.var}``."""
    import torch

    from torch import nn

    # inputs of the normalisation layers with a channel axis at 1 (BatchNorm; InstanceNorm and
    # GroupNorm in MONAI networks without BatchNorm)
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    sums: dict = {}

    def make_hook(name):
        def hook(module, inputs):
            x = inputs[0].detach().float()
            dims = [0] + list(range(2, x.ndim))
            s, ss, n = x.sum(dims).double(), (x * x).sum(dims).double(), x.numel() / x.shape[1]
            prev = sums.get(name)
            sums[name] = (s, ss, n) if prev is None else (prev[0] + s, prev[1] + ss, prev[2] + n)
        return hook

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers]
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for name, (s, ss, n) in sums.items():
        mean = s / n
        out[f"{name}.mean"] = mean.float().cpu()
        out[f"{name}.var"] = (ss / n - mean ** 2).clamp_min(1e-8).float().cpu()
    return out


def stats_distance(target: dict, reference: dict) -> float:
    """Mean over layers (and channels) of |Δmean| / σ_ref + ½ |log σ²_t − log σ²_ref|: how far a
    case's activations are from the training set's, in units the network itself normalises by."""
    names = sorted(k[:-5] for k in reference if k.endswith(".mean") and k in target)
    if not names:
        return float("nan")
    d = []
    for n in names:
        mt_, vt = target[f"{n}.mean"].double(), target[f"{n}.var"].double()
        mr, vr = reference[f"{n}.mean"].double(), reference[f"{n}.var"].double()
        d.append(float(((mt_ - mr).abs() / vr.sqrt() + 0.5 * (vt.log() - vr.log()).abs()).mean()))
    return float(np.mean(d))


def _ood_batches(image_slices_first, prep, mode, slices, patch, max_slices):
    from .inference import bn_inputs_2d, bn_inputs_3d

    return (bn_inputs_3d(image_slices_first, patch, prep, count=4, batch_size=1) if mode == "3d"
            else bn_inputs_2d(image_slices_first, slices, prep, max_slices=max_slices))


def reference_stats(model, volumes_slices_first, prep, mode: str, slices: int, patch=None, device="cpu") -> dict:
    """The training set's activation statistics: whole-slice (or patch) inputs of every training
    volume, the same kind of input :func:`ood_score` measures a new case with."""
    import torch

    dev = torch.device(device)

    def batches():
        for img in volumes_slices_first:
            yield from (x.to(dev) for x in _ood_batches(img, prep, mode, slices, patch, 24))

    return activation_stats(model, batches())


def ood_score(model, image_slices_first: np.ndarray, prep, mode: str, slices: int, patch=None,
              device="cpu", reference: dict | None = None, max_slices: int = 24) -> float:
    """Label-free OOD score of one standardised, slices-first volume: :func:`stats_distance`
    between its BatchNorm-layer input statistics and the training set's (``reference``)."""
    import torch

    if not reference:
        return float("nan")
    dev = torch.device(device)
    target = activation_stats(model, (x.to(dev) for x in _ood_batches(image_slices_first, prep, mode, slices,
                                                                        patch, max_slices)))
    return stats_distance(target, reference)


def chunk_scores(model, image_slices_first: np.ndarray, prep, mode: str, slices: int, patch=None,
                 device="cpu", reference: dict | None = None, chunks: int = 4) -> list[float]:
    """Scores of contiguous slabs of a training volume against the reference: how much normal
    anatomy varies, for calibration."""
    img = image_slices_first if image_slices_first.ndim == 4 else image_slices_first[None]
    n = img.shape[1]
    min_len = max(slices, int(max(patch)) if patch is not None else 1)
    edges = np.linspace(0, n, chunks + 1).round().astype(int)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a >= min_len:
            out.append(ood_score(model, img[:, a:b], prep, mode, slices, patch, device, reference, max_slices=8))
    return [s for s in out if not math.isnan(s)]


def calibrate_ood(reference_scores: list[float]) -> dict:
    """Thresholds from in-distribution scores: median + 3 and + 6 robust spreads (the spread
    is at least 10 % of the median, so a few near-identical chunks do not make it brittle)."""
    r = np.asarray([s for s in reference_scores if not math.isnan(s)], float)
    if r.size == 0:
        return {}
    med = float(np.median(r))
    spread = max(1.4826 * float(np.median(np.abs(r - med))), 0.1 * med, 1e-6)
    return {"median": round(med, 4), "spread": round(spread, 4), "unusual_above": round(med + 3 * spread, 4),
            "far_out_above": round(med + 6 * spread, 4), "reference": [round(float(v), 4) for v in r]}


def ood_verdict(score: float, calibration: dict) -> str:
    if not calibration or math.isnan(score):
        return "unknown"
    if score > calibration["far_out_above"]:
        return "far out"
    if score > calibration["unusual_above"]:
        return "unusual"
    return "in range"


# ---- covariate shift: Nyúl histogram standardisation --------------------------------------------

def _landmarks(image: np.ndarray) -> np.ndarray:
    s = _sample(image)
    fg = s[s > np.percentile(s, 10)] if s.size > 100 else s   # leave most of the background out
    return np.percentile(fg, HIST_PERCENTILES).astype(np.float64)


def learn_landmarks(images) -> tuple[float, ...]:
    """Nyúl & Udupa's standard scale: each image's landmarks rescaled so its 1st and 99th
    percentiles map to 0 and 100, averaged over the training images."""
    scaled = []
    for img in images:
        lm = _landmarks(img)
        if lm[-1] - lm[0] < 1e-6:
            raise MedTransferError("an image is constant: histogram standardisation cannot learn from it")
        scaled.append((lm - lm[0]) / (lm[-1] - lm[0]) * 100.0)
    return tuple(round(float(v), 4) for v in np.mean(scaled, axis=0))


def apply_landmarks(image: np.ndarray, standard: tuple[float, ...], landmarks=None) -> np.ndarray:
    """Piecewise-linear map of the image's landmarks onto the standard scale (linear beyond).
    ``landmarks``: the image's own, already measured (when ``image`` is a block of it)."""
    lm = _landmarks(image) if landmarks is None else np.asarray(landmarks, np.float64)
    lm = np.maximum.accumulate(lm + np.arange(lm.size) * 1e-6)   # strictly increasing
    std = np.asarray(standard, np.float64)
    out = np.interp(image, lm, std).astype(np.float32)
    lo_slope = (std[1] - std[0]) / (lm[1] - lm[0])
    hi_slope = (std[-1] - std[-2]) / (lm[-1] - lm[-2])
    below, above = image < lm[0], image > lm[-1]
    out[below] = (std[0] + (image[below] - lm[0]) * lo_slope).astype(np.float32)
    out[above] = (std[-1] + (image[above] - lm[-1]) * hi_slope).astype(np.float32)
    return out


# ---- prior shift -------------------------------------------------------------------------------

def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising the validation NLL of
    softmax(logits / T); a 1D search on log T in [0.25, 20] ([1, 20] when every validation item
    is already right: there the NLL has no minimum and sharpening would only overfit)."""
    logits, y = np.asarray(logits, np.float64), np.asarray(y, int)

    def nll(t):
        p = _softmax(logits / t)
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
    from .classify import rows_to_probs

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


# ---- prior shift for segmentation: class fractions ---------------------------------------------

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


# ---- concept shift: label audit -----------------------------------------------------------------

def _surface_distances(a: np.ndarray, b: np.ndarray, spacing_xyz) -> tuple[float, float]:
    from .metrics import hd95

    if not a.any() or not b.any():
        return float("nan"), float("nan")
    import SimpleITK as sitk

    def surface_dist(x, y):
        ref = sitk.GetImageFromArray(y.astype(np.uint8))
        ref.SetSpacing(tuple(float(s) for s in spacing_xyz))
        dist = sitk.Abs(sitk.SignedMaurerDistanceMap(ref, squaredDistance=False, useImageSpacing=True))
        d = sitk.GetArrayFromImage(dist)
        xs = sitk.GetArrayFromImage(sitk.BinaryContour(sitk.GetImageFromArray(x.astype(np.uint8))))
        return d[xs > 0]

    d1, d2 = surface_dist(a, b), surface_dist(b, a)
    assd = float((d1.sum() + d2.sum()) / max(1, d1.size + d2.size))
    return hd95(a, b, spacing_xyz), assd


def label_audit(annotations: dict, labels, geometry) -> list[dict]:
    """Agreement of two or more annotations of the same volume: one row per structure and
    annotator pair (Dice, volumes in mL, volume difference %, HD95 and mean surface distance in
    mm), then one summary row per annotator (mean Dice against the others)."""
    names = list(annotations)
    if len(names) < 2:
        raise MedTransferError("a label audit needs two or more annotations of the same volume")
    shapes = {k: v.shape for k, v in annotations.items()}
    if len(set(shapes.values())) != 1:
        raise MedTransferError(f"annotations have different grids {shapes}; resample them onto the same volume first")
    vox_ml = geometry.voxel_volume_ml()
    rows = []
    for a, b in combinations(names, 2):
        for lab in labels:
            ma, mb = annotations[a] == lab.value, annotations[b] == lab.value
            va, vb = float(ma.sum() * vox_ml), float(mb.sum() * vox_ml)
            inter, total = float(np.logical_and(ma, mb).sum()), float(ma.sum() + mb.sum())
            dice = 2 * inter / total if total else float("nan")
            hd, assd = _surface_distances(ma, mb, tuple(geometry.spacing))
            rows.append({"structure": lab.name, "annotator_a": a, "annotator_b": b, "dice": dice,
                         "volume_a_ml": va, "volume_b_ml": vb,
                         "volume_diff_pct": 100 * (vb - va) / ((va + vb) / 2) if va + vb else float("nan"),
                         "hd95_mm": hd, "assd_mm": assd})
    for name in names:
        ds = [r["dice"] for r in rows if name in (r["annotator_a"], r["annotator_b"]) and not math.isnan(r["dice"])]
        rows.append({"structure": "(all)", "annotator_a": name, "annotator_b": "(others)",
                     "dice": float(np.mean(ds)) if ds else float("nan")})
    return rows


def _boundary_intensity(image_std: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        return float("nan")
    # the structure's inner boundary: voxels of the mask with a 6-neighbour outside it
    inner = mask.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis=axis)
    boundary = mask & ~inner
    return float(image_std[boundary].mean())


def site_audit(cases, sites: list[str], labels, prep=None) -> list[dict]:
    """Per site and structure: cases, mean volume (mL) and mean boundary intensity (standardised
    image on the structure's boundary voxels); ``flag`` where a site's mean volume differs from
    the other sites' by more than 25 % or its boundary intensity by more than 0.5 standard
    units — a sign that the site draws the structure differently (or images it differently)."""
    from .preprocessing import Preprocessing, detect_modality

    if len(set(sites)) < 2:
        raise MedTransferError("a site audit needs cases from two or more sites ('site' in the datalist entries)")
    per = []
    for case, site in zip(cases, sites):
        p = prep or Preprocessing(modality=detect_modality(case.image if case.channels == 1 else case.image[0]))
        img = p.standardise(case.image if case.channels == 1 else case.image[0])
        vox_ml = case.geometry.voxel_volume_ml()
        for lab in labels:
            mask = case.label == lab.value
            per.append({"site": site, "structure": lab.name, "volume_ml": float(mask.sum() * vox_ml),
                        "boundary": _boundary_intensity(img, mask)})
    rows = []
    for lab in labels:
        for site in sorted(set(sites)):
            mine = [r for r in per if r["site"] == site and r["structure"] == lab.name]
            other = [r for r in per if r["site"] != site and r["structure"] == lab.name]
            vol = float(np.mean([r["volume_ml"] for r in mine]))
            vol_o = float(np.mean([r["volume_ml"] for r in other]))
            bnd = float(np.nanmean([r["boundary"] for r in mine])) if mine else float("nan")
            bnd_o = float(np.nanmean([r["boundary"] for r in other])) if other else float("nan")
            diff = 100 * (vol - vol_o) / vol_o if vol_o else float("nan")
            flags = []
            if not math.isnan(diff) and abs(diff) > 25:
                flags.append(f"volume {diff:+.0f}% vs other sites")
            if not (math.isnan(bnd) or math.isnan(bnd_o)) and abs(bnd - bnd_o) > 0.5:
                flags.append(f"boundary intensity {bnd - bnd_o:+.2f} vs other sites")
            rows.append({"structure": lab.name, "site": site, "cases": len(mine), "mean_volume_ml": vol,
                         "other_sites_volume_ml": vol_o, "volume_diff_pct": diff, "boundary_intensity": bnd,
                         "other_sites_boundary_intensity": bnd_o, "flag": "; ".join(flags)})
    return rows
