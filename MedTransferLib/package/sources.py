"""A trained MedTransfer model package as the start of a new training (``--backbone package:DIR``),
and the backbone names that may be one: registry names and MONAI bundles go to
:mod:`MedTransferLib.models.backbones`."""

from __future__ import annotations

from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.models import backbones
from MedTransferLib.models.backbones.sources import load_fitting, network_from_def
from MedTransferLib.models.backbones.weights import load_strict


def _package(path: str):
    from MedTransferLib.package.store import ModelPackage

    return ModelPackage.load(path)


def package_model_config(path: str) -> dict:
    return dict(_package(path).manifest.model)


def encoder_from_package(path: str):
    """The encoder of a trained package, with its trained weights (its decoder/head are dropped)."""
    from MedTransferLib.models.backbones import build_encoder

    pkg = _package(path)
    cfg = pkg.manifest.model
    if cfg.get("kind", "encoder") != "encoder":
        raise MedTransferError(f"model '{path}' is a complete {cfg['backbone']} network, not an "
                               f"encoder; it can only start a {cfg['backbone']} model")
    enc = build_encoder(cfg["backbone"], None, int(cfg["in_channels"]), int(cfg.get("spatial_dims", 2)),
                        cfg.get("stem", "mean"))
    state = {k[len("encoder."):]: v for k, v in pkg.state_dict().items() if k.startswith("encoder.")}
    load_strict(enc, state, f"model package '{path}'")
    return enc


def network_from_package(path: str, in_channels: int, num_classes: int) -> nn.Module:
    """A complete network trained before, re-headed for ``num_classes``: every weight that still
    fits is kept, the output layer (and a stem for other channels) is re-initialised."""
    from MedTransferLib.models.backbones import build_network

    pkg = _package(path)
    cfg = pkg.manifest.model
    if cfg.get("kind", "encoder") != "network":
        raise MedTransferError(f"model '{path}' is an encoder model; use it as an encoder source")
    net = build_network(cfg["backbone"], None, in_channels, num_classes) if "network_def" not in cfg \
        else network_from_def(cfg["network_def"], in_channels, num_classes)
    net.transfer_report = load_fitting(net, pkg.state_dict(), f"model package '{path}'")
    net.architecture = cfg["backbone"]
    if "network_def" in cfg:
        net.network_def = cfg["network_def"]
    return net


def is_source(name: str) -> bool:
    """A backbone name that is not a registry name: ``package:DIR`` or ``bundle:DIR``."""
    return name.startswith(("package:", "bundle:"))


def source_kind(name: str) -> str:
    """'encoder' or 'network' for a registered name, ``package:DIR`` or ``bundle:DIR``."""
    if name.startswith("package:"):
        return package_model_config(name[len("package:"):]).get("kind", "encoder")
    return backbones.source_kind(name)


def build_encoder(name: str, weights: str | None = "pretrained", in_channels: int = 3,
                  spatial_dims: int | None = None, stem: str = "mean"):
    """:func:`MedTransferLib.models.backbones.build_encoder`, and the encoder of a trained package
    for ``package:DIR``."""
    if name.startswith("package:"):
        enc = encoder_from_package(name[len("package:"):])
        return backbones.adapt_encoder(enc, name, spatial_dims, in_channels, stem)
    return backbones.build_encoder(name, weights, in_channels, spatial_dims, stem)


def build_network(name: str, weights: str | None, in_channels: int, num_classes: int) -> nn.Module:
    """:func:`MedTransferLib.models.backbones.build_network`, and a trained package's whole network
    (re-headed) for ``package:DIR``."""
    if name.startswith("package:"):
        return network_from_package(name[len("package:"):], in_channels, num_classes)
    return backbones.build_network(name, weights, in_channels, num_classes)
