"""MedTransfer's segmentation network: a pretrained encoder with a U-Net decoder."""

from __future__ import annotations

import torch
from torch import nn

from MedTransferLib.models.backbones import build_encoder

# The decoder's widths, deep → full resolution, in 2.5D and 3D. Half the 256-128-64-32-16 of most
# 2D U-Nets: the decoder's high-resolution stages are most of a 2.5D step's arithmetic; on 2 CPU
# cores a step is 1.5-1.6x faster and the sample task's default training 2.1x (its first epochs
# train the decoder alone), for the same Dice (bench/RESULTS.md, *A narrower decoder*). A package
# keeps the widths it was trained with (``decoder_channels`` in its config).
DECODER_CHANNELS = (128, 64, 32, 16, 8)


class SegmentationNet(nn.Module):
    """``encoder`` (five feature maps) → U-Net decoder with skips → per-class logits.

    Example:
        >>> net = SegmentationNet.from_config({"backbone": "resnet18", "in_channels": 3,
        ...                                    "num_classes": 3}, weights=None)
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """

    multiple = 32  # five stride-2 stages: input sizes must be divisible by 32

    def __init__(self, encoder: nn.Module, num_classes: int, in_channels: int,
                 decoder_channels=None, spatial_dims: int = 2):
        super().__init__()
        from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder

        self.decoder_channels = tuple(DECODER_CHANNELS if decoder_channels is None else decoder_channels)
        self.spatial_dims = spatial_dims
        self.encoder = encoder
        self.decoder = UNetDecoder(
            spatial_dims=spatial_dims, encoder_channels=(in_channels, *encoder.channels),
            decoder_channels=self.decoder_channels, act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}), dropout=0.0, bias=False,
            upsample="nontrainable", pre_conv=None, interp_mode="nearest", align_corners=None,
            is_pad=True)
        self.head = SegmentationHead(spatial_dims, self.decoder_channels[-1], num_classes, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x), 4))

    def stages(self) -> list[nn.Module]:
        return self.encoder.stages()

    @classmethod
    def from_config(cls, config: dict, weights: str | None = None) -> "SegmentationNet":
        dims = int(config.get("spatial_dims", 2))
        encoder = build_encoder(config["backbone"], weights, int(config["in_channels"]), dims,
                                config.get("stem", "mean"))
        return cls(encoder, int(config["num_classes"]), int(config["in_channels"]),
                   config.get("decoder_channels"), dims)
