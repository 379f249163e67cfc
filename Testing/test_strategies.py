"""Point 5: encoder + U-Net decoder; `frozen` keeps the encoder bit-identical, `finetune` trains all."""

import json

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.models.segmentation import SegmentationNet
from MedTransferLib.training.losses import loss_function
from MedTransferLib.training.strategies import get_strategy


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


# ---- every strategy after real optimisation steps on real data (issue 4) -----------------------

LR = 2e-3


def _stage_keys(net):
    """State-dict keys (parameters and buffers) of each encoder stage, shallow → deep."""
    name_of = {id(m): n for n, m in net.named_modules()}
    state = net.state_dict()
    out = []
    for stage in net.stages():
        mods = [stage] if id(stage) in name_of else list(stage.children())
        prefixes = [name_of[id(m)] + "." for m in mods]
        out.append({k for k in state if k.startswith(tuple(prefixes))})
    return out


@pytest.fixture(scope="module")
def reference():
    """The pretrained network as it is before any training (ImageNet Lite0 encoder)."""
    torch.manual_seed(0)
    net = SegmentationNet.from_config({"backbone": "efficientnet-lite0", "in_channels": 3, "num_classes": 9},
                                      weights="pretrained")
    return net, {k: v.clone() for k, v in net.state_dict().items()}, _stage_keys(net)


def _run(colin_crop, tmp_path, strategy, epochs=1, steps=2):
    from safetensors.torch import load_file

    from MedTransferLib.core.progress import Reporter
    from MedTransferLib.package.store import WEIGHTS

    events = []
    run = mt.train(colin_crop["datalist"], tmp_path / strategy.replace(":", "_"), strategy=strategy,
                   epochs=epochs, steps_per_epoch=steps, batch_size=2, patch=64, val_fraction=0, lr=LR,
                   reporter=Reporter(sink=events.append, stream=None, bar=False))
    manifest = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
    return load_file(str(run.package / WEIGHTS)), events, manifest


def _changed(before, after, keys):
    return {k for k in keys if not torch.equal(before[k], after[k]) and after[k].dtype.is_floating_point}


def _float(keys, state):
    return {k for k in keys if state[k].dtype.is_floating_point}


def test_partial_trains_only_the_deepest_stages(reference, colin_crop, tmp_path):
    _, before, stages = reference
    after, events, manifest = _run(colin_crop, tmp_path, "partial:2")
    for i, keys in enumerate(stages):
        changed = _changed(before, after, keys)
        if i < 3:
            assert not changed, f"stage {i} should be frozen (weights and BN statistics)"
        else:
            assert len(changed) > 0.9 * len(_float(keys, before)), f"stage {i} should train"
    start = events[0]
    assert [g["lr"] for g in start["param_groups"]] == [LR, LR]
    assert manifest["strategy"]["strategy"] == "partial:2" and manifest["strategy"]["params"] == {"stages": 2}
    assert 0 < start["trainable_parameters"] < start["total_parameters"]


def test_discriminative_gives_each_stage_its_layer_wise_rate(reference, colin_crop, tmp_path):
    _, before, stages = reference
    after, events, manifest = _run(colin_crop, tmp_path, "discriminative:0.5")
    groups = events[0]["param_groups"]
    assert [g["name"] for g in groups] == [f"stage {i}" for i in range(5)] + ["decoder+head"]
    assert [g["lr"] for g in groups] == pytest.approx([LR * 0.5 ** (5 - i) for i in range(5)] + [LR])
    assert all(_changed(before, after, keys) for keys in stages)   # every stage trains
    assert events[0]["trainable_parameters"] == events[0]["total_parameters"]


def test_gradual_unfreezes_one_stage_per_epoch_from_the_top(reference, colin_crop, tmp_path):
    _, before, stages = reference
    after, events, manifest = _run(colin_crop, tmp_path, "gradual:1+discriminative:0.5", epochs=3)
    notes = [e["message"] for e in events if e["event"] == "note" and "unfreezes" in e["message"]]
    assert [n.split(":")[0] for n in notes] == ["epoch 2", "epoch 3"]
    assert "stage 4 unfreezes" in notes[0] and "stage 3 unfreezes" in notes[1]
    assert f"lr {LR * 0.5:.2e}" in notes[0] and f"lr {LR * 0.25:.2e}" in notes[1]
    assert manifest["strategy"]["unfreeze_schedule"] == {"2": 4, "3": 3, "4": 2, "5": 1, "6": 0}
    for i, keys in enumerate(stages):
        assert bool(_changed(before, after, keys)) == (i >= 3), f"stage {i}"
    assert events[0]["param_groups"][0]["name"] == "decoder+head" and len(events[0]["param_groups"]) == 1


def test_bn_only_trains_batchnorm_affine_and_statistics_not_convolutions(reference, colin_crop, tmp_path):
    net, before, stages = reference
    after, events, _ = _run(colin_crop, tmp_path, "bn-only")
    enc = set().union(*stages)
    bn_names = {n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    is_bn = lambda k: k.rsplit(".", 1)[0] in bn_names  # noqa: E731
    convs = {k for k in enc if not is_bn(k)}
    affine = {k for k in enc if is_bn(k) and k.endswith((".weight", ".bias"))}
    stats = {k for k in enc if is_bn(k) and k.endswith(("running_mean", "running_var"))}
    assert convs and not _changed(before, after, convs)
    assert len(_changed(before, after, affine)) > 0.9 * len(affine)
    assert len(_changed(before, after, stats)) > 0.9 * len(stats)   # re-estimated on target data
    assert [g["name"] for g in events[0]["param_groups"]] == ["encoder BatchNorm γ/β", "decoder+head"]


def test_adabn_re_estimates_statistics_and_keeps_every_encoder_weight(reference, colin_crop, tmp_path):
    net, before, stages = reference
    after, events, _ = _run(colin_crop, tmp_path, "adabn")
    enc = set().union(*stages)
    stats = {k for k in enc if k.endswith(("running_mean", "running_var"))}
    weights = {k for k in enc if k.endswith((".weight", ".bias"))}
    assert not _changed(before, after, weights)
    assert len(_changed(before, after, stats)) > 0.9 * len(stats)
    assert any("AdaBN: re-estimated" in e.get("message", "") for e in events)
    # then fixed while the decoder trains: in training mode the encoder's BN layers stay in eval
    s = get_strategy("adabn")
    s.param_groups(net, LR)
    s.train_mode(net)
    assert all(not m.training for st in net.stages() for m in st.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_strategies_that_keep_weights_refuse_random_init(blob_datalist, tmp_path):
    for name in ("frozen", "partial:2", "bn-only", "adabn", "gradual"):
        with pytest.raises(mt.MedTransferError, match="would stay random"):
            mt.train(blob_datalist, tmp_path / "x", backbone="resnet18", weights=None, strategy=name)


def test_strategy_names_parse_and_bad_ones_are_named():
    assert get_strategy("gradual:3+discriminative:0.25").spec() == "gradual:3+discriminative:0.25"
    assert get_strategy("adabn+finetune").adapt_bn_first
    with pytest.raises(mt.MedTransferError, match="malformed"):
        get_strategy("partial:two")
    with pytest.raises(mt.MedTransferError, match="unknown strategy"):
        get_strategy("gradual+frozen")


def test_predict_with_adapt_bn_uses_the_images_statistics_and_leaves_the_package(colin_crop, tmp_path):
    from conftest import digest

    run = mt.train(colin_crop["datalist"], tmp_path / "run", epochs=1, steps_per_epoch=3, batch_size=2,
                   patch=64, val_fraction=0)
    case = mt.read_case(colin_crop["image"])
    # another scanner: a nonlinear intensity response
    shifted = mt.Case(np.sqrt(case.image - case.image.min()) * 10, case.geometry, None, "other_site")
    before = digest(*sorted(run.package.iterdir()))
    plain = mt.predict(run.package, shifted).label
    adapted = mt.predict(run.package, shifted, adapt_bn=True).label
    assert not np.array_equal(plain, adapted)
    assert digest(*sorted(run.package.iterdir())) == before
    assert np.array_equal(mt.predict(run.package, shifted).label, plain)   # nothing persisted


def test_finetune_and_frozen_on_real_data(reference, colin_crop, tmp_path):
    _, before, stages = reference
    after, events, _ = _run(colin_crop, tmp_path, "finetune")
    for keys in stages:
        assert len(_changed(before, after, keys)) > 0.9 * len(_float(keys, before))
    assert [(g["name"], g["lr"]) for g in events[0]["param_groups"]] == [("all", LR)]
    after, events, _ = _run(colin_crop, tmp_path, "frozen")
    assert not any(_changed(before, after, keys) for keys in stages)      # weights and BN statistics
    assert [(g["name"], g["lr"]) for g in events[0]["param_groups"]] == [("decoder+head", LR)]
    decoder = {k for k in after if k.startswith(("decoder.", "head.")) and after[k].dtype.is_floating_point}
    assert len(_changed(before, after, decoder)) > 0.9 * len(decoder)    # while the decoder trains


def test_adabn_statistics_are_the_plain_average_over_all_batches():
    """AdaBN's re-estimated BatchNorm statistics, against numpy: the running mean is the mean of
    the batches' channel means and the running variance the mean of their unbiased variances
    (PyTorch's cumulative average, momentum=None) — every batch counts the same. A moving average
    (momentum 0.1) or statistics from the last batch only give other numbers here, since the
    batches differ a lot. Other layers run in eval mode; weights are untouched; the momentum and
    training mode come back."""
    import torch
    from torch import nn

    from MedTransferLib.shift.adabn import adapt_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Dropout(0.9))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))       # the BN layer sees the input itself
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    rng = np.random.default_rng(1)
    batches = [torch.from_numpy(rng.normal(loc, scale, size=(n, 2, 5, 6)).astype(np.float32))
               for loc, scale, n in ((0.0, 1.0, 3), (10.0, 2.0, 1), (-4.0, 0.5, 5))]
    model.train()
    assert adapt_bn(model, batches) == 1
    per_batch = [b.double().numpy().transpose(1, 0, 2, 3).reshape(2, -1) for b in batches]
    mean = np.mean([x.mean(axis=1) for x in per_batch], axis=0)
    var = np.mean([x.var(axis=1, ddof=1) for x in per_batch], axis=0)
    bn = model[1]
    assert np.allclose(bn.running_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
    assert np.allclose(bn.running_var.numpy(), var, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.1 and model.training
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(mt.MedTransferError, match="no images"):
        adapt_bn(model, [])
    model.eval()
    adapt_bn(model, batches[:1])
    assert not model.training and not model[1].training                # eval mode comes back
    assert adapt_bn(nn.Sequential(nn.Conv2d(1, 1, 1)), batches) == 0   # nothing to re-estimate
