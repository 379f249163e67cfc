"""A pretrained source that is not a registry name: a MONAI model-zoo bundle (``bundle:DIR``), and
loading weights that only partly fit (a new head for new labels). A MedTransfer model package as a
source (``package:DIR``) is :mod:`MedTransferLib.package.sources`."""

from __future__ import annotations

from torch import nn

from MedTransferLib.core.errors import MedTransferError


def load_fitting(net: nn.Module, state: dict, source: str) -> dict:
    """Load every tensor of ``state`` whose name and shape fit ``net``; the rest of ``net`` (a new
    output layer for other labels, a stem for other channels) keeps its fresh initialisation.

    Returns ``{"loaded": n, "reinitialised": [names], "unused": [names]}``; refuses when almost
    nothing fits (wrong architecture).
    """
    own = net.state_dict()
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    reinit = sorted(k for k in own if k not in fits)
    unused = sorted(k for k in state if k not in fits)
    if len(fits) < 0.5 * len(own):
        raise MedTransferError(f"weights from {source} do not fit this network: only {len(fits)} of "
                               f"{len(own)} tensors match (e.g. missing {', '.join(reinit[:3])}; "
                               f"unexpected {', '.join(unused[:3])}); check the network definition")
    net.load_state_dict(fits, strict=False)
    return {"loaded": len(fits), "reinitialised": reinit, "unused": unused}


# ---- MONAI bundles ---------------------------------------------------------------------------

def _check_safe(node, where: str) -> None:
    """A bundle's network definition may only instantiate MONAI networks from plain values: no
    ``$`` expressions (they run Python) and no targets outside ``monai.networks``."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            import monai.networks.nets as nets

            name = str(target)
            base = name.rsplit(".", 1)[-1]
            if not (name == base or name.startswith("monai.networks.nets.")) or not hasattr(nets, base):
                raise MedTransferError(f"{where}: network target '{name}' is not a MONAI network "
                                       f"(monai.networks.nets); only those are instantiated")
        for k, v in node.items():
            if k in ("_requires_", "_disabled_", "_mode_"):
                raise MedTransferError(f"{where}: '{k}' is not allowed in a network definition")
            _check_safe(v, where)
    elif isinstance(node, list):
        for v in node:
            _check_safe(v, where)
    elif isinstance(node, str) and node.startswith(("$", "%")):
        raise MedTransferError(f"{where}: the network definition uses an expression or macro "
                               f"('{node[:40]}'); MedTransfer only instantiates plain definitions")


def _resolve_refs(node, config: dict, where: str, depth: int = 0):
    """Replace ``@name`` references by the referenced plain values (no evaluation)."""
    if depth > 20:
        raise MedTransferError(f"{where}: references nest too deeply")
    if isinstance(node, dict):
        return {k: _resolve_refs(v, config, where, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, config, where, depth) for v in node]
    if isinstance(node, str) and node.startswith("@"):
        key = node[1:].replace("::", "#")
        value = config
        for part in key.split("#"):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise MedTransferError(f"{where}: reference '{node}' is not defined in the bundle config")
        return _resolve_refs(value, config, where, depth + 1)
    return node


OUT_CHANNEL_KEYS = ("out_channels", "num_classes", "n_classes", "output_channels")
IN_CHANNEL_KEYS = ("in_channels", "n_input_channels")


def network_from_def(network_def: dict, in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate a plain MONAI network definition with this task's channels and classes."""
    from monai.bundle import ConfigParser

    _check_safe(network_def, "network definition")
    d = dict(network_def)
    if int(d.get("spatial_dims", d.get("dimensions", 3))) != 3:
        raise MedTransferError(f"the bundle's network ({d.get('_target_')}) is "
                               f"{d.get('spatial_dims', d.get('dimensions'))}D; MedTransfer starts 3D "
                               f"models from bundles (--mode 3d)")
    for keys, value in ((OUT_CHANNEL_KEYS, num_classes), (IN_CHANNEL_KEYS, in_channels)):
        for k in keys:
            if k in d:
                d[k] = value
                break
        else:
            raise MedTransferError(f"the bundle's network ({d.get('_target_')}) has none of "
                                   f"{keys}; MedTransfer cannot set its channels")
    net = ConfigParser({"network_def": d}).get_parsed_content("network_def", instantiate=True)
    if not isinstance(net, nn.Module):
        raise MedTransferError("the bundle's network definition did not build a torch module")
    from MedTransferLib.models.backbones.monai3d import WholeNetwork

    whole = WholeNetwork(net, [], [], _divisor(network_def))
    whole.network_def = network_def
    return whole


def _divisor(network_def: dict) -> int:
    strides = network_def.get("strides")
    if isinstance(strides, list) and strides and all(isinstance(s, int) for s in strides):
        m = 1
        for s in strides:
            m *= s
        return m
    return 32


def network_from_bundle(path: str, in_channels: int, num_classes: int) -> nn.Module:
    """A MONAI bundle as the starting point: its ``network_def`` re-built for this task's labels,
    its trained weights (``models/model.pt`` or ``.safetensors``) kept wherever they still fit.

    ``path`` is a bundle folder, or a model-zoo name (downloaded with ``monai.bundle.download``
    into MONAI's cache when online).
    """
    import json
    from pathlib import Path

    root = Path(path)
    if not root.is_dir():
        root = _download_bundle(path)
    where = f"bundle '{root}'"
    config = None
    for name in ("inference.json", "train.json"):
        f = root / "configs" / name
        if f.is_file():
            try:
                config = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise MedTransferError(f"{where}: configs/{name} is not valid JSON ({exc})") from None
            break
    if config is None:
        raise MedTransferError(f"{where} has no configs/inference.json or configs/train.json "
                               f"(YAML bundle configs are not read); is it a MONAI bundle folder?")
    if "network_def" not in config:
        raise MedTransferError(f"{where}: the config has no 'network_def'")
    network_def = _resolve_refs(config["network_def"], config, where)
    weights = next((root / "models" / n for n in ("model.safetensors", "model.pt")
                    if (root / "models" / n).is_file()), None)
    if weights is None:
        raise MedTransferError(f"{where} has no models/model.pt or models/model.safetensors")
    from MedTransferLib.models.backbones.weights import read_state_dict

    net = network_from_def(network_def, in_channels, num_classes)
    inner = {f"net.{k}": v for k, v in read_state_dict(weights).items()}
    net.transfer_report = load_fitting(net, inner, where)
    net.architecture = f"bundle:{root.name}"
    return net


def _download_bundle(name: str):
    from pathlib import Path

    try:
        import torch
        from monai.bundle import download

        target = Path(torch.hub.get_dir()) / "bundle"
        download(name=name, bundle_dir=str(target), progress=False)
        return target / name
    except Exception as exc:
        raise MedTransferError(f"bundle '{name}' is not a folder here and could not be downloaded "
                               f"from the MONAI model zoo ({type(exc).__name__}); download it with "
                               f"'python -m monai.bundle download {name}' and pass its folder") from None
