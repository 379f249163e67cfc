"""Speed changes that must not change results (issue 8): the training loss against its one-hot
definition, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from MedTransferLib.case import IGNORE
from MedTransferLib.trainer import loss_function


def one_hot_loss(logits, target, smooth=1.0):
    """The loss as written before it was made faster: class-balanced cross-entropy + batch soft
    Dice over the foreground classes present, with an explicit one-hot volume."""
    valid = target != IGNORE
    per_voxel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    safe = torch.where(valid, target, 0)
    counts = torch.bincount(safe[valid], minlength=logits.shape[1]).to(logits.dtype)
    sums = torch.zeros(logits.shape[1], dtype=logits.dtype).index_add_(0, safe[valid], per_voxel[valid])
    ce = (sums[counts > 0] / counts[counts > 0]).mean()
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = F.one_hot(safe, logits.shape[1])[..., 1:].movedim(-1, 1).to(probs.dtype)
    mask = valid[:, None].to(probs.dtype)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot * mask).sum(dims)
    denom = (probs * mask).sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    if not present.any():
        return ce
    return ce + (1 - (2 * inter + smooth) / (denom + smooth))[present].mean()


@pytest.mark.parametrize("shape", [(4, 5, 12, 10), (2, 9, 6, 8, 7)])
@pytest.mark.parametrize("case", ["all classes", "a class absent, unlabelled voxels", "background only"])
def test_fast_loss_equals_the_one_hot_definition(shape, case):
    g = torch.Generator().manual_seed(len(shape) * 7 + len(case))
    logits = torch.randn(shape, generator=g) * 3
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    if case != "all classes":
        target[target == 2] = 0
        target[:, :2] = IGNORE
    if case == "background only":
        target[(target != IGNORE)] = 0
    grads, values = [], []
    for fn in (loss_function(), one_hot_loss):
        x = logits.clone().requires_grad_()
        value = fn(x, target)
        value.backward()
        values.append(value.item())
        grads.append(x.grad)
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0
    if case != "all classes":   # unlabelled voxels get no gradient at all
        assert grads[0][:, :, :2].abs().max() == 0
