"""Classification network: a pretrained encoder with a pooled linear head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    pass


class ClassificationNet(nn.Module):
    """Encoder → global average pooling of the deepest features → dropout → linear head."""

    multiple = 32

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.spatial_dims = encoder.spatial_dims
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.channels[-1], num_classes)

    def forward(self, x):
        f = self.encoder(x)[-1]
        return self.head(self.dropout(torch.flatten(f.mean(dim=tuple(range(2, f.ndim))), 1)))

    def stages(self):
        return self.encoder.stages()


def build_classifier(config: dict, weights=None) -> ClassificationNet:
    from MedTransferLib.models.backbones import build_encoder

    enc = build_encoder(config["backbone"], weights, int(config["in_channels"]),
                        int(config.get("spatial_dims", 2)), config.get("stem", "mean"))
    return ClassificationNet(enc, int(config["num_classes"]))
