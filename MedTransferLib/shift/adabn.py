"""AdaBN: BatchNorm statistics re-estimated on target images, weights untouched."""

from __future__ import annotations

import torch
from torch import nn

from MedTransferLib.core.errors import MedTransferError

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def adapt_bn(model: nn.Module, inputs, modules=None) -> int:
    """AdaBN: re-estimate the running statistics of the BatchNorm layers in ``modules`` (default:
    the whole model) as the plain average over forward passes of ``inputs`` (an iterable of
    input batches), leaving every weight untouched; all other layers run in eval mode. Returns
    the number of layers re-estimated."""
    roots = [model] if modules is None else list(modules)
    layers = [m for r in roots for m in r.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if not layers:
        return 0
    was_training = model.training
    saved = [(m, m.momentum) for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None          # cumulative average over all batches
        m.train()
    seen = 0
    with torch.no_grad():   # (a context, not a decorator: mutmut skips decorated functions)
        for x in inputs:
            model(x)
            seen += 1
    if seen == 0:
        raise MedTransferError("AdaBN got no images to re-estimate BatchNorm statistics from")
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)
    if not was_training:
        model.eval()
    return len(layers)
