"""Issue 3: every registered backbone builds and runs in its declared modes, loads weights from a
local file through the users' code path, refuses weights of another architecture, inflates to 3D
faithfully, adapts its stem to any channel count; packages and MONAI bundles start new tasks."""

import json

import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.models.backbones import (
    BACKBONES,
    adapt_stem,
    build_encoder,
    build_network,
)
from MedTransferLib.models.backbones.inflate import inflate

ENCODERS_2D = [n for n, i in BACKBONES.items() if i.kind == "encoder" and i.dims == 2]
ENCODERS_3D = [n for n, i in BACKBONES.items() if i.kind == "encoder" and i.dims == 3]
NETWORKS = [n for n, i in BACKBONES.items() if i.kind == "network"]


@pytest.mark.parametrize("name", ENCODERS_2D)
def test_every_2d_encoder_runs_in_2_5d_with_any_slice_count_and_inflated_in_3d(name):
    info = BACKBONES[name]
    enc = build_encoder(name, weights=None, in_channels=5).eval()
    with torch.no_grad():
        feats = enc(torch.zeros(1, 5, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert tuple(f.shape[1] for f in feats) == tuple(enc.channels)
    assert enc.stem.in_channels == 5 and len(enc.stages()) == 5
    assert sum(p.numel() for p in enc.parameters()) > 1e6
    if info.inflatable:
        enc3 = build_encoder(name, weights=None, in_channels=1, spatial_dims=3).eval()
        with torch.no_grad():
            feats = enc3(torch.zeros(1, 1, 32, 32, 32))
        assert [tuple(f.shape[2:]) for f in feats][-1] == (1, 1, 1) and enc3.spatial_dims == 3
    else:
        with pytest.raises(mt.MedTransferError, match="cannot inflate"):
            build_encoder(name, weights=None, in_channels=1, spatial_dims=3)


@pytest.mark.parametrize("name", ENCODERS_3D + NETWORKS)
def test_every_3d_backbone_runs_on_a_volume(name):
    with torch.no_grad():
        if name in NETWORKS:
            net = build_network(name, None, in_channels=1, num_classes=3).eval()
            assert net(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 3, 64, 64, 64)
        else:
            enc = build_encoder(name, weights=None, in_channels=1).eval()
            feats = enc(torch.zeros(1, 1, 32, 32, 32))
            assert tuple(f.shape[1] for f in feats) == tuple(enc.channels) and feats[0].shape[2] == 16
    with pytest.raises(mt.MedTransferError, match="3D"):
        mt.TrainConfig(backbone=name, mode="2.5d").check()


TORCHVISION = [n for n, i in BACKBONES.items() if i.source.startswith("torchvision")]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbones_load_the_published_file_layout(tmp_path, name):
    """A local copy of the torchvision download (same keys, DenseNet's legacy names included)
    goes through the loader users take online, strictly."""
    import re

    import torchvision

    head = "fc" if name.startswith("resnet") else "classifier"
    torch.manual_seed(0)
    src = getattr(torchvision.models, name)(weights=None)
    state = src.state_dict()
    if name == "densenet121":  # the published file predates torchvision's module names
        state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])", r"\1.\2", k): v for k, v in state.items()
                 if not k.endswith("num_batches_tracked")}
        assert any(".norm.1." in k for k in state)
    torch.save(state, tmp_path / "w.pth")
    enc = build_encoder(name, weights=str(tmp_path / "w.pth"))
    for tensor in (enc.stem.weight, list(enc.stages()[-1].parameters())[-1]):  # first and deepest
        assert any(torch.equal(tensor, p) for p in src.parameters() if p.shape == tensor.shape)
    del state[next(k for k in state if not k.startswith(head))]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(mt.MedTransferError, match="1 missing"):
        build_encoder(name, weights=str(tmp_path / "broken.pth"))


def _medicalnet_file(path, depth):
    from MedTransferLib.models.backbones.monai3d import medicalnet_resnet

    torch.manual_seed(depth)
    net = medicalnet_resnet(depth)
    # the published files: {"state_dict": {"module.conv1.weight": ...}} saved by DataParallel
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net


@pytest.mark.parametrize("depth", [10, 18, pytest.param(34, marks=pytest.mark.slow),
                                   pytest.param(50, marks=pytest.mark.slow)])   # the deep ones take seconds to build
def test_medicalnet_weights_load_from_a_local_file_and_wrong_depths_are_named(tmp_path, depth):
    path = tmp_path / f"resnet_{depth}_23dataset.pth"
    src = _medicalnet_file(path, depth)
    enc = build_encoder(f"medicalnet-resnet{depth}", weights=str(path), in_channels=1)
    assert torch.equal(enc.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    assert torch.equal(enc.conv1.weight, src.conv1.weight)
    assert enc.pretrain_mean == (0.0,)   # MedicalNet trained on z-scored volumes, not ImageNet
    other = {10: 18, 18: 34, 34: 50, 50: 10}[depth]
    with pytest.raises(mt.MedTransferError, match=r"do not fit.*(missing|unexpected|wrong shape).*layer"):
        build_encoder(f"medicalnet-resnet{other}", weights=str(path))


def test_swinunetr_self_supervised_weights_load_through_monai_load_from(tmp_path):
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    src = SwinUNETR(in_channels=1, out_channels=2, feature_size=48)
    rename = lambda k: k.replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2")  # noqa: E731
    # the layout of the published model_swinvit.pt
    torch.save({"state_dict": {f"module.{rename(k)}": v for k, v in src.swinViT.state_dict().items()}},
               tmp_path / "model_swinvit.pt")
    net = build_network("swinunetr", str(tmp_path / "model_swinvit.pt"), in_channels=1, num_classes=4)
    assert torch.equal(net.net.swinViT.layers3[0].blocks[1].attn.qkv.weight,
                       src.swinViT.layers3[0].blocks[1].attn.qkv.weight)
    torch.save({"state_dict": {"module.patch_embed.proj.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(mt.MedTransferError, match="SwinUNETR"):
        build_network("swinunetr", str(tmp_path / "bad.pt"), in_channels=1, num_classes=4)
    with pytest.raises(mt.MedTransferError, match="no pretrained weights"):
        build_network("segresnet", "pretrained", 1, 2)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-lite0"])
def test_inflated_network_reproduces_the_2d_response_on_a_volume_of_equal_slices(name):
    """I3D inflation: every slice of a volume made of one repeated image gets the 2D network's
    features (checked where zero padding along depth cannot reach: the centre slices)."""
    torch.manual_seed(0)
    enc2 = build_encoder(name, weights=None).eval()
    enc3 = inflate(enc2).eval()
    image = torch.randn(1, 3, 64, 64)
    volume = image[:, :, None].repeat(1, 1, 96, 1, 1)
    with torch.no_grad():
        f2, f3 = enc2(image), enc3(volume)
    for level in (0, 1, 2):   # strides 2, 4, 8: receptive fields well inside 96 slices
        centre = f3[level].shape[2] // 2
        assert torch.allclose(f3[level][:, :, centre], f2[level], atol=1e-4, rtol=1e-3), level
    assert not torch.allclose(f3[0][:, :, 0], f2[0], atol=1e-4)   # the ends do differ (padding)
    assert isinstance(enc2.stem, torch.nn.Conv2d)                  # the 2D original is untouched


def test_stem_repeat_keeps_colour_filters_for_stacked_modalities():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    rgb = torch.rand(1, 3, 12, 12)
    six = adapt_stem(conv, 6, "repeat")
    # T1 as RGB and T2 as RGB: equal modalities give the RGB response
    assert torch.allclose(six(torch.cat([rgb, rgb], 1)), conv(rgb), atol=1e-5)
    mean = adapt_stem(conv, 6, "mean")
    assert not torch.allclose(mean(torch.cat([rgb, rgb], 1)), conv(rgb), atol=1e-3)
    conv3d = inflate(torch.nn.Sequential(conv))[0]
    assert adapt_stem(conv3d, 2).weight.shape == (8, 2, 3, 3, 3)
    with pytest.raises(mt.MedTransferError, match="stem adaptation"):
        adapt_stem(conv, 2, "sum")


@pytest.mark.slow   # builds every registered network
def test_backbones_command_lists_every_entry_with_parameters(capsys):
    from MedTransferLib.app.cli import main

    assert main(["backbones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(BACKBONES)
    by = {r["name"]: r for r in rows}
    assert by["efficientnet-lite0"]["weights"] == "imagenet: available offline"
    assert by["segresnet"]["weights"] == "from scratch" and by["medicalnet-resnet18"]["modes"] == "3d"
    assert 11e6 < by["resnet18"]["parameters"] < 12e6
