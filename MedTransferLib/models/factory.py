"""A network from its configuration (what a model package's manifest stores)."""

from __future__ import annotations

from torch import nn

from MedTransferLib.models.backbones import build_network
from MedTransferLib.models.segmentation import SegmentationNet


def build_model(config: dict, weights: str | None = None) -> nn.Module:
    """The network a model config describes (``manifest['model']``), with ``weights`` for its
    encoder or network ('pretrained', a file, or None when a package's weights follow)."""
    if config.get("head") == "linear":   # classification
        from MedTransferLib.models.classification import build_classifier

        return build_classifier(config, weights)
    if "network_def" in config:   # from a MONAI bundle: rebuilt from the stored definition
        from MedTransferLib.models.backbones.sources import network_from_def

        return network_from_def(config["network_def"], int(config["in_channels"]),
                                int(config["num_classes"]))
    if config.get("kind", "encoder") == "network":
        return build_network(config["backbone"], weights, int(config["in_channels"]),
                             int(config["num_classes"]))
    return SegmentationNet.from_config(config, weights)
