"""Pretrained encoder + U-Net decoder (MONAI's ``UNetDecoder`` and ``SegmentationHead``)."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import build_encoder

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class SegmentationNet(nn.Module):
    """``encoder`` (five feature maps) → U-Net decoder with skips → per-class logits.

    Example:
        >>> net = SegmentationNet.from_config({"backbone": "resnet18", "in_channels": 3,
        ...                                    "num_classes": 3}, weights=None)
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, encoder: nn.Module, num_classes: int, in_channels: int,
                 decoder_channels=DECODER_CHANNELS):
        super().__init__()
        from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder

        self.encoder = encoder
        self.decoder = UNetDecoder(
            spatial_dims=2, encoder_channels=(in_channels, *encoder.channels),
            decoder_channels=tuple(decoder_channels), act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}), dropout=0.0, bias=False,
            upsample="nontrainable", pre_conv=None, interp_mode="nearest", align_corners=None,
            is_pad=True)
        self.head = SegmentationHead(2, decoder_channels[-1], num_classes, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x), 4))

    @classmethod
    def from_config(cls, config: dict, weights: str | None = None) -> "SegmentationNet":
        encoder = build_encoder(config["backbone"], weights, int(config["in_channels"]))
        return cls(encoder, int(config["num_classes"]), int(config["in_channels"]),
                   config.get("decoder_channels", DECODER_CHANNELS))
