"""Which slice to label next: the unlabelled slice where the current model is least sure.

A slice's uncertainty is the expected number of its voxels the model labels wrongly, by its own
probabilities: the sum over voxels of ``1 − max_c p_c`` (0 where it is certain, growing with
the structures' uncertain boundary). Slices next to one already labelled teach little that
their neighbour does not: a suggestion keeps ``min_gap`` slices away from labelled ones and from
the other suggestions. bench/interactive.py measures this choice against evenly spaced and
random slices (bench/RESULTS.md).
"""

from __future__ import annotations

import numpy as np

MIN_GAP = 3


def slice_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``(S, C, H, W)`` softmax probabilities → ``(S,)`` expected wrongly labelled voxels per slice."""
    return (1.0 - probabilities.max(axis=1)).reshape(len(probabilities), -1).sum(axis=1)


def suggest_slices(uncertainty, labelled, n: int = 1, min_gap: int = MIN_GAP) -> list[int]:
    """Up to ``n`` slices, most uncertain first, each at least ``min_gap`` slices from a labelled
    slice and from each other. ``uncertainty``: per slice (an array, or a dict of the slices
    scored so far); slices with no score are never suggested."""
    scores = dict(enumerate(uncertainty)) if not isinstance(uncertainty, dict) else dict(uncertainty)
    taken = [int(s) for s in labelled]
    picked: list[int] = []
    for s, score in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(picked) == n:
            break
        if not score > 0:
            break
        if all(abs(s - t) >= min_gap for t in taken):
            picked.append(int(s))
            taken.append(int(s))
    return picked


def uncertainty_of(package, case, device: str = "auto", chunk: int = 16) -> np.ndarray:
    """Each slice's uncertainty (along the model's slice axis) under a 2.5D segmentation model."""
    import torch

    from MedTransferLib.core.device import resolve_device
    from MedTransferLib.core.errors import MedTransferError
    from MedTransferLib.data.slabs import to_slices_first
    from MedTransferLib.inference.windows import predict_slices
    from MedTransferLib.package.store import ModelPackage

    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    if pkg.task != "segmentation" or pkg.mode != "2.5d":
        raise MedTransferError(f"suggesting slices needs a 2.5D segmentation model; '{pkg.path}' is a "
                               f"{pkg.mode} {pkg.task} model")
    dev = resolve_device(device)
    model = pkg.build_model(dev)
    prep = pkg.preprocessing
    image = np.ascontiguousarray(to_slices_first(prep.standardise(case.image), pkg.axis))
    n = image.shape[-3]
    out = np.empty(n, np.float64)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            part = list(range(i, min(n, i + chunk)))
            out[part] = slice_uncertainty(predict_slices(model, image, pkg.slices, prep, dev, part,
                                                         probabilities=True))
    return out
