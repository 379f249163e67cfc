"""Each transfer strategy on a tiny three-stage network, against what it must do by definition:
which parameters train, at which learning rate, in which group, which BatchNorm layers keep their
statistics, when gradual unfreezing lets a stage join, and how names parse. Milliseconds per
test, so the mutation runs (bench/mutation.py, group strategies) can afford them; the same
strategies on real data and real training steps are in test_strategies.py."""

import numpy as np
import pytest
import torch
from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.shift.adabn import adapt_bn
from MedTransferLib.training.strategies import (
    AdaBN,
    BNOnly,
    Discriminative,
    FineTune,
    Frozen,
    Gradual,
    Partial,
    get_strategy,
)


class Tiny(nn.Module):
    """Three encoder stages (conv + BatchNorm each) and a head."""

    def __init__(self, bn_affine=True):
        super().__init__()
        self.s0 = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, affine=bn_affine))
        self.s1 = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, affine=bn_affine))
        self.s2 = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=bn_affine))
        self.head = nn.Conv2d(4, 2, 1)

    def stages(self):
        return [self.s0, self.s1, self.s2]

    def forward(self, x):
        return self.head(self.s2(self.s1(self.s0(x))))


def ids(params):
    return {id(p) for p in params}


def stage_params(net, *indices):
    return ids(p for i in indices for p in net.stages()[i].parameters())


def trainable(net):
    return ids(p for p in net.parameters() if p.requires_grad)


def bn_training(net):
    return [net.stages()[i][1].training for i in range(3)]


def test_finetune_trains_everything_in_one_group():
    net = Tiny()
    net.requires_grad_(False)
    [g] = FineTune().param_groups(net, 0.01)
    assert g["name"] == "all" and g["lr"] == 0.01 and ids(g["params"]) == ids(net.parameters())
    assert trainable(net) == ids(net.parameters())
    FineTune().train_mode(net)
    assert bn_training(net) == [True, True, True]
    assert FineTune().spec() == "finetune" and not FineTune().needs_pretrained


def test_frozen_trains_only_the_head_and_keeps_encoder_statistics():
    net = Tiny()
    s = Frozen()
    [g] = s.param_groups(net, 0.01)
    assert g["name"] == "decoder+head" and g["lr"] == 0.01 and ids(g["params"]) == ids(net.head.parameters())
    assert trainable(net) == ids(net.head.parameters())
    s.train_mode(net)
    assert bn_training(net) == [False, False, False] and net.head.training
    assert s.needs_pretrained and not s.adapt_bn_first
    with pytest.raises(MedTransferError, match="no pretrained encoder stages"):
        s.param_groups(nn.Conv2d(1, 1, 1), 0.01)


def test_partial_trains_the_deepest_n_stages():
    net = Tiny()
    s = Partial(2)
    groups = s.param_groups(net, 0.02)
    assert [g["name"] for g in groups] == ["encoder (deepest 2 stages)", "decoder+head"]
    assert [g["lr"] for g in groups] == [0.02, 0.02]
    assert ids(groups[0]["params"]) == stage_params(net, 1, 2)
    assert trainable(net) == stage_params(net, 1, 2) | ids(net.head.parameters())
    s.train_mode(net)
    assert bn_training(net) == [False, True, True]
    assert s.spec() == "partial:2" and s.params() == {"stages": 2}
    assert Partial(3).param_groups(Tiny(), 0.1)[0]["params"] and Partial(1).spec() == "partial:1"
    with pytest.raises(MedTransferError, match="more stages than the encoder has"):
        Partial(4).param_groups(Tiny(), 0.1)
    with pytest.raises(MedTransferError, match="N ≥ 1"):
        Partial(0)


def test_discriminative_rates_halve_from_the_head_down():
    net = Tiny()
    s = Discriminative(0.5)
    groups = s.param_groups(net, 0.08)
    assert [g["name"] for g in groups] == ["stage 0", "stage 1", "stage 2", "decoder+head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.04, 0.08])   # lr × 0.5^(3 − i)
    for i in range(3):
        assert ids(groups[i]["params"]) == stage_params(net, i)
    assert trainable(net) == ids(net.parameters())
    assert s.spec() == "discriminative:0.5" and s.params() == {"decay": 0.5} and not s.needs_pretrained
    assert Discriminative(1.0).stage_lr(0.1, 0, 3) == pytest.approx(0.1)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(MedTransferError, match="decay D in"):
            Discriminative(bad)


def test_gradual_unfreezes_one_stage_every_e_epochs_from_the_deepest():
    net = Tiny()
    s = Gradual(2)
    assert s.frozen_modules(net) == net.stages()          # before anything: all of the encoder frozen
    [g] = s.param_groups(net, 0.04)
    assert g["name"] == "decoder+head" and g["lr"] == 0.04 and trainable(net) == ids(net.head.parameters())
    assert s.schedule(3) == {3: 2, 5: 1, 7: 0}
    s.train_mode(net)
    assert bn_training(net) == [False, False, False]
    joined = {}
    for epoch in range(1, 9):
        new = s.on_epoch(epoch, net)
        if new:
            [grp] = new
            joined[epoch] = grp
    assert sorted(joined) == [3, 5, 7]
    assert [joined[e]["name"] for e in (3, 5, 7)] == ["stage 2", "stage 1", "stage 0"]
    assert all(joined[e]["lr"] == 0.04 for e in joined)
    assert ids(joined[5]["params"]) == stage_params(net, 1)
    assert trainable(net) == ids(net.parameters()) and s.unfrozen == 3
    s.train_mode(net)
    assert bn_training(net) == [True, True, True]
    assert s.describe(net)["unfreeze_schedule"] == {"3": 2, "5": 1, "7": 0}
    assert s.spec() == "gradual:2" and s.params() == {"every_epochs": 2}
    with pytest.raises(MedTransferError, match="E ≥ 1"):
        Gradual(0)


def test_gradual_with_discriminative_rates_and_a_fresh_start():
    net = Tiny()
    s = Gradual(1, Discriminative(0.5))
    s.param_groups(net, 0.08)
    assert s.schedule(3) == {2: 2, 3: 1, 4: 0}
    lrs = {e: s.on_epoch(e, net) for e in (1, 2, 3, 4)}
    assert lrs[1] == [] and [g["lr"] for e in (2, 3, 4) for g in lrs[e]] == pytest.approx([0.04, 0.02, 0.01])
    s.param_groups(Tiny(), 0.08)                       # a new run starts frozen again
    assert s.unfrozen == 0
    assert s.spec() == "gradual:1+discriminative:0.5" and s.params() == {"every_epochs": 1, "decay": 0.5}


def test_bn_only_trains_the_encoders_batchnorm_affine_and_the_head():
    net = Tiny()
    s = BNOnly()
    groups = s.param_groups(net, 0.03)
    bn = [p for st in net.stages() for p in (st[1].weight, st[1].bias)]
    assert [g["name"] for g in groups] == ["encoder BatchNorm γ/β", "decoder+head"]
    assert ids(groups[0]["params"]) == ids(bn) and [g["lr"] for g in groups] == [0.03, 0.03]
    assert trainable(net) == ids(bn) | ids(net.head.parameters())
    s.train_mode(net)
    assert bn_training(net) == [True, True, True]                 # statistics re-estimated
    with pytest.raises(MedTransferError, match="no BatchNorm layers"):
        s.param_groups(Tiny(bn_affine=False), 0.03)


def test_defaults_are_partial_2_gradual_2_and_decay_one_half():
    assert Partial().n == 2 and Gradual().every == 2 and Discriminative().decay == 0.5


def test_parameters_shared_by_stages_are_counted_once():
    net = Tiny()
    net.stages = lambda: [net.s0, nn.Sequential(net.s0, net.s1), net.s2]     # stage 1 contains stage 0
    groups = Discriminative(0.5).param_groups(net, 0.1)
    every = [id(p) for g in groups for p in g["params"]]
    within = [id(p) for p in groups[1]["params"]]
    assert len(within) == len(set(within)) == len(list(net.s0.parameters())) + len(list(net.s1.parameters()))
    assert len(set(every)) == len(list(net.parameters()))
    net.stages = lambda: [net.s2, nn.Sequential(net.s0, net.s1), net.s0]    # the deepest two overlap
    [enc, _head] = Partial(2).param_groups(net, 0.1)
    got = [id(p) for p in enc["params"]]
    assert len(got) == len(set(got)) == len(list(net.s0.parameters())) + len(list(net.s1.parameters()))


def test_adabn_is_frozen_after_re_estimating_statistics():
    s = AdaBN()
    assert isinstance(s, Frozen) and s.adapt_bn_first and s.spec() == "adabn"


def test_describe_counts_trainable_parameters():
    net = Tiny()
    Frozen().param_groups(net, 0.1)
    d = Frozen().describe(net)
    head = sum(p.numel() for p in net.head.parameters())
    assert d == {"strategy": "frozen", "params": {}, "trainable_parameters": head,
                 "total_parameters": sum(p.numel() for p in net.parameters())}


@pytest.mark.parametrize("spec, cls, extra", [
    ("finetune", FineTune, {}), ("frozen", Frozen, {}), ("bn-only", BNOnly, {}), ("adabn", AdaBN, {}),
    ("partial", Partial, {"n": 2}), ("partial:3", Partial, {"n": 3}),
    ("gradual", Gradual, {"every": 2}), ("gradual:4", Gradual, {"every": 4}),
    ("discriminative", Discriminative, {"decay": 0.5}), ("discriminative:0.25", Discriminative, {"decay": 0.25}),
    (" frozen ", Frozen, {})])
def test_names_parse(spec, cls, extra):
    s = get_strategy(spec)
    assert type(s) is cls and not s.adapt_bn_first or cls is AdaBN
    for k, v in extra.items():
        assert getattr(s, k) == v


def test_combined_names_parse_and_bad_ones_are_named():
    s = get_strategy("gradual:3+discriminative:0.25")
    assert isinstance(s, Gradual) and s.every == 3 and s.disc.decay == 0.25
    s = get_strategy("discriminative+gradual")
    assert isinstance(s, Gradual) and s.every == 2 and s.disc.decay == 0.5
    a = get_strategy("adabn+partial:1")
    assert isinstance(a, Partial) and a.adapt_bn_first and a.spec() == "adabn+partial:1"
    assert get_strategy("adabn+adabn").spec() == "adabn"
    assert get_strategy("frozen").adapt_bn_first is False
    for typo, meant in (("frozn", "frozen"), ("partal:2", "partial"), ("gradul", "gradual"),
                        ("discriminativ:0.5", "discriminative"), ("partal:123456789012", "partial")):
        with pytest.raises(MedTransferError, match=f"did you mean '{meant}'"):
            get_strategy(typo)
    with pytest.raises(MedTransferError) as info:
        get_strategy("zzz")
    assert str(info.value).startswith("unknown strategy 'zzz'; choose one of finetune, frozen")
    with pytest.raises(MedTransferError, match="malformed"):
        get_strategy("partial:two")
    for bad in ("frozen:2", "finetune+frozen", "gradual+partial", "gradual+discriminative+frozen"):
        with pytest.raises(MedTransferError, match="unknown strategy"):
            get_strategy(bad)


def test_adabn_re_estimates_only_the_given_modules():
    net = Tiny()
    before = net.s2[1].running_mean.clone()
    x = [torch.randn(4, 1, 3, 3) + 5]
    assert adapt_bn(net, x, modules=[net.s0]) == 1
    assert not torch.equal(net.s0[1].running_mean, torch.zeros(2)) and torch.equal(net.s2[1].running_mean, before)
    assert np.isclose(float(net.s0[1].momentum), 0.1)


def test_a_parameter_shared_by_two_stages_trains_once():
    """Stages that share a module (as some backbones' stage lists do) must not put its parameters
    into the optimizer twice: torch refuses a parameter in two groups, and one group would step it
    twice."""
    net = Tiny()
    net.s2.add_module("shared", net.s1[0])      # s1's convolution is also part of s2
    [enc, head] = Partial(2).param_groups(net, 0.01)
    params = enc["params"]
    assert len(params) == len(ids(params)) == len(ids(list(net.s1.parameters()) + list(net.s2.parameters())))
    torch.optim.AdamW([enc, head], lr=0.01)     # raises on a parameter listed twice
