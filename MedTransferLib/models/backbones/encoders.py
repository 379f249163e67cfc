"""The common encoder interface and its 2D implementations (torchvision and EfficientNet-Lite0).

Every encoder: ``forward(x)`` → five feature maps at strides 2, 4, 8, 16, 32 (the U-Net decoder's
skips; the deepest is where a classification head attaches); ``channels``; ``stages()`` — module
groups from shallow to deep, stem first (for freezing, gradual unfreezing and layer-wise learning
rates); ``stem`` — the first convolution; ``pretrain_mean``/``pretrain_std`` — the per-channel
statistics of the *normalised* inputs its weights were trained on (what preprocessing maps to).
"""

from __future__ import annotations

import torch
from torch import nn

from MedTransferLib.data.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_target_stats,
)

STEM_METHODS = ("mean", "repeat")


def adapt_stem(conv: nn.Module, in_channels: int, method: str = "mean") -> nn.Module:
    """Return ``conv`` (2D or 3D) rebuilt for ``in_channels`` inputs, keeping its pretrained response.

    - ``mean`` (default): every input channel gets the mean of the pretrained kernels, scaled by
      ``c/k`` — k equal channels (adjacent slices of a smooth volume, a grey image) give exactly
      the response the pretrained stem gives a grey image. For k=1 this is timm's "sum" rule.
    - ``repeat``: channel i gets pretrained kernel ``i mod c``, scaled by ``c/k`` — T1+T2 or CT+PET
      stacked as 6 channels see the RGB filters twice at half strength (pretrained colour
      contrasts are kept, e.g. between modalities).
    """
    if method not in STEM_METHODS:
        from MedTransferLib.core.errors import MedTransferError

        raise MedTransferError(f"stem adaptation '{method}' is unknown; use one of {STEM_METHODS}")
    if in_channels == conv.in_channels:
        return conv
    cls = type(conv)
    new = cls(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
              conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        scale = conv.in_channels / in_channels
        if method == "mean":
            new_w = w.mean(dim=1, keepdim=True).repeat_interleave(in_channels, dim=1)
        else:
            new_w = w[:, [i % conv.in_channels for i in range(in_channels)]]
        new.weight.copy_(new_w * scale)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class Encoder(nn.Module):
    """Base class: subclasses set ``channels``, ``_stem_path`` and implement ``forward``/``stages``."""

    spatial_dims = 2
    input_mean: tuple = IMAGENET_MEAN    # the normalisation the weights were trained with
    input_std: tuple = IMAGENET_STD
    _stem_path: str = ""                 # dotted path of the first convolution

    @property
    def pretrain_mean(self) -> tuple:
        return imagenet_target_stats(self.input_mean, self.input_std)[0]

    @property
    def pretrain_std(self) -> tuple:
        return imagenet_target_stats(self.input_mean, self.input_std)[1]

    @property
    def stem(self) -> nn.Module:
        return self.get_submodule(self._stem_path)

    @property
    def in_channels(self) -> int:
        return self.stem.in_channels

    def set_in_channels(self, k: int, method: str = "mean") -> "Encoder":
        parent, _, attr = self._stem_path.rpartition(".")
        owner = self.get_submodule(parent) if parent else self
        new = adapt_stem(self.stem, k, method)
        if isinstance(owner, nn.Sequential) and attr.isdigit():
            owner[int(attr)] = new
        else:
            setattr(owner, attr, new)
        return self

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError


class LiteEncoder(Encoder):
    input_mean = (127.0 / 255,) * 3   # the TF-trained Lite models' normalisation
    input_std = (128.0 / 255,) * 3
    _stem_path = "net._conv_stem"

    def __init__(self, net):
        super().__init__()
        net._conv_head = net._bn1 = net._fc = None  # classifier head: not part of the encoder
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                # TF's 0.99 decay (PyTorch momentum 0.01) re-estimates running statistics too
                # slowly for a short fine-tune: after 100 steps a third would still be ImageNet's.
                m.momentum = 0.1
        self.net = net
        self.channels = tuple(net.CHANNELS)

    def forward(self, x):
        return self.net.features(x)

    def stages(self) -> list[nn.Module]:
        # one group per feature level (stride 2 … 32); the stem belongs to the first
        n, ends = self.net, (-1,) + self.net.STAGE_ENDS
        groups = [nn.ModuleList(n._blocks[a + 1:b + 1]) for a, b in zip(ends[:-1], ends[1:])]
        groups[0] = nn.ModuleList([n._conv_stem, n._bn0, *groups[0]])
        return groups


class ResNetEncoder(Encoder):
    """torchvision ResNets, and MONAI's 3D ResNets (same layout; ``act`` instead of ``relu``)."""

    _stem_path = "conv1"

    def __init__(self, net):
        super().__init__()
        self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
        self.act = getattr(net, "act", None) or net.relu
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = tuple(self._infer_channels())

    def _infer_channels(self):
        widths = [self.conv1.out_channels]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            convs = [m for m in layer[-1].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
            widths.append(convs[-1].out_channels)
        return widths

    def forward(self, x):
        f1 = self.act(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]

    def stages(self) -> list[nn.Module]:
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]


class StagedEncoder(Encoder):
    """A torchvision ``features`` Sequential cut into five stages at strides 2 … 32.

    ``side_stem``: networks whose first layer already has stride 4 (ConvNeXt's 4×4 patchify stem)
    get a small stride-2 convolution block, trained from scratch, for the decoder's finest skip.
    """

    def __init__(self, stages: list[nn.Sequential], stem_path: str, side_stem: bool = False,
                 input_channels: int = 3):
        super().__init__()
        self.side = None
        if side_stem:
            self.side = nn.Sequential(nn.Conv2d(input_channels, 32, 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.body = nn.ModuleList(stages)
        self._stem_path = stem_path
        with torch.no_grad():
            was = self.training
            self.eval()
            self.channels = tuple(f.shape[1] for f in self(torch.zeros(1, input_channels, 64, 64)))
            self.train(was)

    def set_in_channels(self, k: int, method: str = "mean") -> "Encoder":
        super().set_in_channels(k, method)
        if self.side is not None:
            self.side[0] = adapt_stem(self.side[0], k, "mean")
        return self

    def forward(self, x):
        out, h = [], x
        if self.side is not None:
            out.append(self.side(x))
        for stage in self.body:
            h = stage(h)
            out.append(h)
        return out

    def stages(self) -> list[nn.Module]:
        return ([self.side] if self.side is not None else []) + list(self.body)


def _cut(features: nn.Sequential, spans) -> list[nn.Sequential]:
    children = list(features.children())
    return [nn.Sequential(*children[a:b]) for a, b in spans]


def staged_from_torchvision(name: str, net: nn.Module) -> StagedEncoder:
    """Cut a torchvision classifier's ``features`` into the five-stage interface."""
    f = net.features
    if name.startswith("efficientnet_b"):
        # 0 stem s2, 1 MBConv s2, 2 s4, 3 s8, 4-5 s16, 6-7 s32; 8 is the 1×1 classifier conv
        return StagedEncoder(_cut(f, [(0, 2), (2, 3), (3, 4), (4, 6), (6, 8)]), "body.0.0.0")
    if name == "mobilenet_v3_large":
        return StagedEncoder(_cut(f, [(0, 2), (2, 4), (4, 7), (7, 13), (13, 16)]), "body.0.0.0")
    if name == "convnext_tiny":
        # 0 patchify stem s4, 1 blocks, 2 down s8, 3, 4 down s16, 5, 6 down s32, 7
        return StagedEncoder(_cut(f, [(0, 2), (2, 4), (4, 6), (6, 8)]), "body.0.0.0", side_stem=True)
    if name == "densenet121":
        # conv0 norm0 relu0 | pool0 block1 | trans1 block2 | trans2 block3 | trans3 block4 norm5
        stages = _cut(f, [(0, 3), (3, 5), (5, 7), (7, 9), (9, 12)])
        stages[-1].append(nn.ReLU(inplace=True))  # torchvision applies this ReLU in forward()
        return StagedEncoder(stages, "body.0.0")
    raise KeyError(name)


def remap_densenet_keys(state: dict) -> dict:
    """torchvision's published DenseNet files name layers ``norm.1`` where the modules are
    ``norm1``; torchvision fixes this when it loads them itself, so do the same for local files."""
    import re

    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out
