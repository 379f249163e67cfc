"""Speed changes that must not change results (issue 8): the training loss against its one-hot
definition, value and gradient; the fused AdamW against torch's default AdamW; augmentation on
the GPU against the CPU. The CUDA cases run where a GPU is (bench/gpu_check.sh runs them on a lent
one, with ``--noconftest`` since the GPU image has no SimpleITK); elsewhere they are skipped."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MedTransferLib.core.case import IGNORE
from MedTransferLib.training.losses import loss_function


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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


@pytest.mark.filterwarnings("error")   # e.g. torch's deprecated implicit softmax dimension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 5, 12, 10), (2, 9, 6, 8, 7)])
@pytest.mark.parametrize("case", ["all classes", "a class absent, unlabelled voxels", "background only",
                                  "a class on one voxel"])
def test_fast_loss_equals_the_one_hot_definition(shape, case, dtype):
    g = torch.Generator().manual_seed(len(shape) * 7 + len(case))
    logits = (torch.randn(shape, generator=g) * 3).to(dtype)
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    if case != "all classes":
        target[target == 2] = 0
        target[:, :2] = IGNORE
    if case == "background only":
        target[(target != IGNORE)] = 0
    if case == "a class on one voxel":   # counted, cross-entropy averaged and Dice scored from 1 voxel on
        target[target == 1] = 0
        target.view(-1)[-1] = 1
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


@pytest.mark.parametrize("device", DEVICES)
def test_training_uses_fused_adamw_with_the_default_update(device):
    from MedTransferLib.training.optim import adamw

    def trained(make_optimizer):
        torch.manual_seed(0)
        # no bias before the BatchNorm: its gradient is rounding noise, which Adam scales to full steps
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                  torch.nn.Conv2d(4, 2, 1)).to(device)
        head, body = list(net[2].parameters()), list(net[:2].parameters())
        opt = make_optimizer([{"params": body, "lr": 1e-3}, {"params": head, "lr": 1e-2}])
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(2, 3, 9, 9, generator=g), torch.randint(0, 2, (2, 7, 7), generator=g)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return opt, torch.cat([p.detach().flatten() for p in net.parameters()])

    fused, ours = trained(lambda groups: adamw(groups, lr=1e-3, weight_decay=1e-2))
    default, reference = trained(lambda groups: torch.optim.AdamW(groups, lr=1e-3, weight_decay=1e-2))
    assert all(group["fused"] for group in fused.param_groups)
    assert not any(group["fused"] for group in default.param_groups)
    moved = (reference - trained(lambda groups: torch.optim.SGD(groups, lr=0.0))[1]).abs().max()
    assert moved > 1e-3                                   # the comparison below is not vacuous
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_moments_loaded_contiguous_take_a_channels_last_weights_layout_so_fused_steps_stay_right(device):
    """Saved moments come back contiguous; torch's fused AdamW assumes they share the weight's
    layout. Restored through match_layouts, the resumed step equals the uninterrupted one."""
    from MedTransferLib.training.optim import adamw, match_layouts

    g = torch.Generator().manual_seed(3)
    start = torch.randn(4, 3, 3, 3, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(4, 3, 3, 3, generator=g).to(device).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]

    def step(opt, w, grad):
        w.grad = grad.clone(memory_format=torch.preserve_format)
        opt.step()

    whole = start.clone(memory_format=torch.preserve_format).requires_grad_()
    opt = adamw([{"params": [whole]}], lr=1e-2)
    for grad in grads:
        step(opt, whole, grad)

    results = {}
    for relayout in (False, True):
        w = start.clone(memory_format=torch.preserve_format).requires_grad_()
        first = adamw([{"params": [w]}], lr=1e-2)
        step(first, w, grads[0])
        saved = first.state_dict()
        again = adamw([{"params": [w]}], lr=1e-2)
        again.load_state_dict({"state": {0: {k: v.contiguous().clone() for k, v in saved["state"][0].items()}},
                               "param_groups": saved["param_groups"]})
        if relayout:
            match_layouts(again)
        try:
            step(again, w, grads[1])
        except RuntimeError as exc:   # "... must have same dtype, device, and layout"
            results[relayout] = exc
            continue
        results[relayout] = w.detach()
    assert all(group["fused"] for group in opt.param_groups)
    # the hazard is real: silently wrong steps on torch 2.14.1's CPU kernel, a refusal that would
    # stop a resumed run on the CUDA kernel (torch 2.11, H100); should this fail, torch fixed it
    assert isinstance(results[False], RuntimeError) if device == "cuda" else \
        not torch.equal(results[False], whole.detach())
    assert torch.equal(results[True], whole.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("shape", [(2, 1, 24, 32, 32), (6, 3, 40, 48)])
def test_augmentation_on_the_gpu_is_the_cpus(shape):
    """Training augments a batch where it trains; on a GPU the same draws give the same rotation,
    scale, intensity change and label map as on the CPU (the noise comes from the device's own
    generator, so it is switched off here)."""
    from MedTransferLib.core.case import IGNORE
    from MedTransferLib.data.augment import augment

    g = torch.Generator().manual_seed(5)
    images = torch.randn(shape, generator=g)
    targets = torch.randint(0, 4, (shape[0],) + shape[2:], generator=g)
    out = {dev: augment(images.to(dev), targets.to(dev), np.random.default_rng(7), noise=0.0)
           for dev in ("cpu", "cuda")}
    torch.testing.assert_close(out["cuda"][0].cpu(), out["cpu"][0], rtol=1e-4, atol=1e-4)
    same = (out["cuda"][1].cpu() == out["cpu"][1]).float().mean().item()
    assert same > 0.999                     # nearest-neighbour ties may round apart at a few voxels
    assert (out["cpu"][1] == IGNORE).any() and not torch.equal(out["cpu"][0], images)   # it did transform


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_batches_come_in_order_and_exactly_as_many_as_steps(device, monkeypatch):
    """On a GPU the next batch is made in a thread while the card trains: still exactly ``n``
    calls per epoch in order (the random generators end the epoch where they would without it),
    and an error making a batch reaches the training loop. The thread's path runs here without
    a GPU: only the CUDA device index it sets is stood in for."""
    from MedTransferLib.training.loop import batches

    if device == "cuda" and not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    calls, threads = [], set()

    def next_batch():
        import threading

        threads.add(threading.current_thread().name)
        calls.append(len(calls))
        return calls[-1]

    assert list(batches(next_batch, 5, torch.device(device))) == [0, 1, 2, 3, 4]
    assert calls == [0, 1, 2, 3, 4]
    assert any(name.startswith("medtransfer-batches") for name in threads) == (device == "cuda")

    def broken():
        raise ValueError("no labelled voxel")

    with pytest.raises(ValueError, match="no labelled voxel"):
        list(batches(broken, 3, torch.device(device)))
