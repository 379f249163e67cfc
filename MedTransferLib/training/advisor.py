"""The strategy advisor: measures, without training, how much labelled data there is and how far
the target images are from what the pretrained encoder was trained on, then recommends a
strategy by MISSION.md's two-by-two (data size × domain similarity).

**Domain distance** (label-free): every BatchNorm layer of a pretrained encoder stores the mean
and variance its input channels had on the source data (ImageNet, MedicalNet's 23 datasets).
We run the target images through the encoder (in eval mode, preprocessed exactly as training
will) and measure, per channel, how far the target activations' statistics are from the stored
ones::

    d = |μ_target − μ_source| / σ_source + |log(σ_target / σ_source)|

— 0 when they agree; 1 is "one standard deviation off, or e-fold spread". A layer's distance is
the mean over its channels; the encoder's is the mean over layers (per stage too). This is the
covariate shift the network itself feels, at every depth, and exactly what AdaBN and BN-only
training correct.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.training.strategies import BN_TYPES as _BN

# Thresholds and rule, from bench/strategies.py (Colin27, 8 strategies × 4 label budgets, 150 steps;
# numbers in the README). LITTLE_DATA: below 20 labelled slices holding structures, keeping the
# pretrained encoder (mostly) fixed beat fine-tuning everything (5–13 slices: frozen, partial,
# gradual+discriminative, AdaBN ahead of finetune by 0.01–0.06 Dice); at 30 slices finetune won.
# SIMILAR_DOMAIN: bench/advisor_calibration.py measured EfficientNet-Lite0 at 0.61 on 32 crops of
# natural photos (its own domain; the only photos available offline) and 0.70 on Colin27 T1 MRI;
# the threshold sits between them. Both rest on one subject and two photos: first estimates.
LITTLE_DATA = 20
SIMILAR_DOMAIN = 0.65


@dataclass
class Advice:
    strategy: str
    lr: float
    reason: str
    data: dict = field(default_factory=dict)
    domain: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def bn_distance(encoder: nn.Module, batches) -> dict:
    """Per-layer and overall distance between the encoder's stored BatchNorm statistics and the
    statistics of ``batches`` (its input), see the module docstring."""
    layers = [(n, m) for n, m in encoder.named_modules() if isinstance(m, _BN) and m.track_running_stats]
    if not layers:
        raise MedTransferError("the encoder has no BatchNorm layers: the domain distance is not defined")
    sums = {n: None for n, _ in layers}
    hooks = []

    def make_hook(name):
        def hook(module, inputs):
            x = inputs[0].detach().float()
            dims = [0] + list(range(2, x.ndim))
            count = x.numel() / x.shape[1]
            s, ss = x.sum(dims).double(), (x * x).sum(dims).double()
            prev = sums[name]
            sums[name] = (s, ss, count) if prev is None else (prev[0] + s, prev[1] + ss, prev[2] + count)
        return hook

    was = encoder.training
    encoder.eval()
    for name, m in layers:
        hooks.append(m.register_forward_pre_hook(make_hook(name)))
    try:
        seen = 0
        for x in batches:
            encoder(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was)
    if not seen:
        raise MedTransferError("no target images to measure the domain distance on")
    per_layer = []
    for name, m in layers:
        s, ss, n = sums[name]
        mean_t = s / n
        var_t = (ss / n - mean_t ** 2).clamp_min(1e-12)
        mean_s, var_s = m.running_mean.double(), (m.running_var.double() + m.eps)
        d = ((mean_t - mean_s).abs() / var_s.sqrt() + 0.5 * (var_t.log() - var_s.log()).abs())
        per_layer.append((name, float(d.mean())))
    return {"distance": float(np.mean([d for _, d in per_layer])), "layers": len(per_layer),
            "per_layer": {n: round(d, 4) for n, d in per_layer}}


def _stage_distances(encoder, per_layer: dict) -> list[float]:
    name_of = {id(m): n for n, m in encoder.named_modules()}
    out = []
    for stage in encoder.stages():
        mods = [stage] if id(stage) in name_of else list(stage.children())
        prefixes = tuple(name_of[id(m)] for m in mods)
        vals = [d for n, d in per_layer.items() if n.startswith(prefixes)]
        out.append(round(float(np.mean(vals)), 4) if vals else float("nan"))
    return out


def data_size(cases, labels, axis: int) -> dict:
    """Labelled cases, labelled slices (and those holding a structure), voxels per class."""
    from MedTransferLib.core.case import IGNORE

    slices = fg_slices = 0
    voxels = {lab.name: 0 for lab in labels}
    for case in cases:
        lab = case.label
        arr_axis = 2 - axis
        other = tuple(a for a in range(3) if a != arr_axis)
        labelled = (lab != IGNORE).any(axis=other)
        holding = ((lab != IGNORE) & (lab != 0)).any(axis=other)
        slices += int(labelled.sum())
        fg_slices += int(holding.sum())
        counts = np.bincount(lab[lab != IGNORE].ravel().astype(np.int64),
                             minlength=max(lab_.value for lab_ in labels) + 1)
        for lab_ in labels:
            voxels[lab_.name] += int(counts[lab_.value])
    return {"cases": len(cases), "labelled_slices": slices, "slices_with_structures": fg_slices,
            "voxels_per_class": voxels}


def recommend(size: int, distance: float | None, pretrained: bool, lr: float = 2e-3,
              epochs: int = 16) -> tuple[str, float, str]:
    """MISSION.md's two-by-two, as measured: ``(strategy, lr, reason)``.

    - no pretrained weights → ``finetune`` (nothing to keep);
    - much data (≥ LITTLE_DATA slices with structures) → ``finetune``;
    - little data, similar domain → ``frozen`` (feature extraction);
    - little data, different domain (the danger zone) → ``gradual+discriminative``: the encoder
      starts frozen and unfreezes from the top over the run, early stages at smaller rates.
    """
    if not pretrained or distance is None:
        return "finetune", lr, "no pretrained weights (or no BatchNorm to measure): everything must learn"
    little = size < LITTLE_DATA
    similar = distance < SIMILAR_DOMAIN
    size_txt = f"{size} labelled slices with structures ({'<' if little else '≥'} {LITTLE_DATA}: " \
               f"{'little' if little else 'much'} data)"
    dist_txt = f"domain distance {distance:.2f} ({'<' if similar else '≥'} {SIMILAR_DOMAIN}: " \
               f"{'similar' if similar else 'different'} domain)"
    if not little:
        return "finetune", lr, f"{size_txt}, {dist_txt}: enough data to adapt every layer"
    if similar:
        return "frozen", lr, f"{size_txt}, {dist_txt}: feature extraction is safe and cheap"
    every = max(1, round(epochs / 8))
    return (f"gradual:{every}+discriminative:0.5", lr,
            f"{size_txt}, {dist_txt}: the danger zone — start from the frozen encoder and unfreeze "
            f"it from the top every {every} epoch(s), early stages at smaller rates")


def advise(cases, labels, backbone: str = "efficientnet-lite0", weights="pretrained", mode: str = "2.5d",
           slices: int = 3, axis: int = 2, modality="auto", lr: float = 2e-3, max_slices: int = 32,
           epochs: int = 16) -> Advice:
    """Measure data size and domain distance and recommend a strategy (nothing is trained).

    Example:
        >>> dl = load_datalist("dataset.json")                         # doctest: +SKIP
        >>> advise(dl.load_cases(), dl.labels).strategy                 # doctest: +SKIP
        'gradual:2+discriminative:0.5'
    """
    from MedTransferLib.data.preprocessing import make_preprocessing
    from MedTransferLib.data.sampling import bn_inputs_2d, bn_inputs_3d
    from MedTransferLib.data.slabs import to_slices_first, with_channels
    from MedTransferLib.package.sources import build_encoder, source_kind

    size = data_size(cases, labels, axis)
    if source_kind(backbone) != "encoder" or weights in (None, "none", "random"):
        strategy, lr_, reason = recommend(size["slices_with_structures"], None, False, lr, epochs)
        return Advice(strategy, lr_, reason, size, {})
    three_d = mode == "3d"
    channels = cases[0].channels
    encoder = build_encoder(backbone, weights, channels * (1 if three_d else slices), 3 if three_d else 2)
    prep = make_preprocessing(modality, cases[0], encoder.pretrain_mean, encoder.pretrain_std)

    def batches():
        for case in cases:
            image = to_slices_first(with_channels(prep.standardise(case.image)), axis)
            if three_d:
                yield from bn_inputs_3d(image, (64, 64, 64), prep, count=4)
            else:
                yield from bn_inputs_2d(image, slices, prep, max_slices=max_slices)

    try:
        measured = bn_distance(encoder, batches())
    except MedTransferError as exc:
        strategy, lr_, reason = recommend(size["slices_with_structures"], None, False, lr)
        return Advice(strategy, lr_, f"{reason} ({exc})", size, {})
    domain = {"distance": round(measured["distance"], 4), "layers": measured["layers"],
              "per_stage": _stage_distances(encoder, measured["per_layer"]),
              "measure": "mean over BN layers and channels of |Δμ|/σ_src + |log σ_tgt/σ_src|",
              "similar_below": SIMILAR_DOMAIN}
    if math.isnan(measured["distance"]):
        raise MedTransferError("the domain distance came out undefined (NaN); check the images")
    strategy, lr_, reason = recommend(size["slices_with_structures"], measured["distance"], True, lr, epochs)
    return Advice(strategy, lr_, reason, {**size, "little_below": LITTLE_DATA}, domain)
