"""Point 5: encoder + U-Net decoder; `frozen` keeps the encoder bit-identical, `finetune` trains all."""

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.model import SegmentationNet
from MedTransferLib.strategies import get_strategy
from MedTransferLib.trainer import loss_function


def _steps(strategy_name, backbone="efficientnet-lite0", steps=3):
    torch.manual_seed(0)
    net = SegmentationNet.from_config({"backbone": backbone, "in_channels": 3, "num_classes": 3},
                                      weights="imagenet" if backbone == "efficientnet-lite0" else None)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    strategy = get_strategy(strategy_name)
    opt = torch.optim.AdamW(strategy.param_groups(net, 1e-2))
    loss_fn = loss_function()
    rng = torch.Generator().manual_seed(0)
    for _ in range(steps):
        strategy.train_mode(net)
        x = torch.randn(4, 3, 64, 64, generator=rng) * 2 + 1  # shifted statistics: BN would move
        y = torch.randint(0, 3, (4, 64, 64), generator=rng)
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, before, strategy


def test_frozen_keeps_encoder_weights_and_bn_statistics_bit_identical():
    net, before, strategy = _steps("frozen")
    after = net.state_dict()
    enc = [k for k in after if k.startswith("encoder.")]
    dec = [k for k in after if not k.startswith("encoder.") and after[k].dtype.is_floating_point]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)  # incl. running_mean/var
    assert sum(not torch.equal(before[k], after[k]) for k in dec) > 0.9 * len(dec)
    info = strategy.describe(net)
    assert 0 < info["trainable_parameters"] < info["total_parameters"]


def test_finetune_trains_every_layer():
    net, before, strategy = _steps("finetune")
    after = net.state_dict()
    weights = [k for k in after if k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in weights)
    info = strategy.describe(net)
    assert info["trainable_parameters"] == info["total_parameters"]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(mt.MedTransferError, match="did you mean 'frozen'"):
        get_strategy("frozn")


def test_decoder_returns_full_resolution_logits_for_any_padded_size():
    net = SegmentationNet.from_config({"backbone": "resnet18", "in_channels": 5, "num_classes": 4})
    assert net(torch.zeros(2, 5, 96, 64)).shape == (2, 4, 96, 64)
