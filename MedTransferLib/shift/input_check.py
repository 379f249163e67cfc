"""Covariate shift, before anything runs: each image's intensities against the preprocessing
preset, the backbone's input and the training images."""

from __future__ import annotations

import numpy as np

from MedTransferLib.data.histogram import sparse_sample


def intensity_profile(image: np.ndarray, prep, standardised: np.ndarray | None = None) -> dict:
    """Raw percentiles, the detected modality, and the statistics after the model's
    preprocessing (standardised, then mapped to the backbone's expected input).
    ``standardised``: ``prep.standardise(image)`` (same layout) when the caller already has it."""
    from MedTransferLib.data.preprocessing import detect_modality

    channels = [image] if image.ndim == 3 else list(image)
    out = {"channels": []}
    std = prep.standardise(image) if standardised is None else standardised
    std_channels = [std] if std.ndim == 3 else list(std)
    for c, (raw, st) in enumerate(zip(channels, std_channels)):
        s, t = sparse_sample(raw), sparse_sample(st)
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
