"""Where a training run starts: a pretrained source (a backbone's encoder, a whole 3D network, a
MONAI bundle, an earlier package's encoder) with a new decoder and head, or — with ``--from`` — an
earlier model of the same task, whole."""

from __future__ import annotations

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.models.segmentation import SegmentationNet
from MedTransferLib.package.sources import build_encoder, build_network, source_kind
from MedTransferLib.training.config import TrainConfig


def build_for_training(config: TrainConfig, in_channels: int, num_classes: int):
    """The network to train and its ``Manifest.model`` config (from which a package rebuilds
    it without the pretrained source), plus the pretraining input statistics as ``_pretrain_*``."""
    dims = 3 if config.mode == "3d" else 2
    kind = source_kind(config.backbone)
    if kind == "network":
        if dims != 3:
            raise MedTransferError(f"{config.backbone} is a 3D network; add --mode 3d")
        net = build_network(config.backbone, config.weights, in_channels, num_classes)
        cfg = {"backbone": net.architecture, "kind": "network", "spatial_dims": 3,
               "in_channels": in_channels, "num_classes": num_classes,
               "_pretrain_mean": [0.0], "_pretrain_std": [1.0]}
        if getattr(net, "network_def", None) is not None:
            cfg["network_def"] = net.network_def
        return net, cfg
    encoder = build_encoder(config.backbone, config.weights, in_channels, dims, config.stem)
    model = SegmentationNet(encoder, num_classes, in_channels, spatial_dims=dims)
    cfg = {"backbone": encoder.architecture, "kind": "encoder", "spatial_dims": dims,
           "in_channels": in_channels, "num_classes": num_classes, "stem": config.stem,
           "decoder_channels": list(model.decoder_channels),
           "_pretrain_mean": list(encoder.pretrain_mean), "_pretrain_std": list(encoder.pretrain_std)}
    return model, cfg


def continued(config, labels, channels):
    """The package ``--from`` names, checked to continue this task: the same structures (value
    and name), mode, slices and images per case. Anything else is a new task: start it with
    ``--backbone package:DIR``, which keeps every weight that fits and makes a new output layer."""
    from MedTransferLib.package.store import ModelPackage

    pkg = ModelPackage.load(config.init_from)
    where = f"--from {config.init_from}"
    if pkg.task != "segmentation":
        raise MedTransferError(f"{where} is a {pkg.task} model; --from continues a segmentation model")
    theirs, ours = [(lab.value, lab.name) for lab in pkg.labels], [(lab.value, lab.name) for lab in labels]
    if theirs != ours:
        new, gone = ([f"{v} '{n}'" for v, n in a if (v, n) not in b] for a, b in ((ours, theirs), (theirs, ours)))
        diff = "; ".join(f"{what} {', '.join(labs)}" for what, labs in (("this data adds", new), ("lacks", gone))
                         if labs)
        raise MedTransferError(f"{where} learnt other structures ({diff}): --from continues the same "
                               f"structures; for new or renamed ones start a new model from this one with "
                               f"--backbone package:{pkg.path} (every weight that fits is kept, the output "
                               f"layer is new)")
    settings = {"mode": (pkg.mode, config.mode), "channels": (pkg.manifest.slicing.channels, channels)}
    if pkg.mode == "2.5d":
        settings["slices"] = (pkg.slices, config.slices)
    wrong = {k: v for k, v in settings.items() if v[0] != v[1]}
    if wrong:
        raise MedTransferError(f"{where} was trained with " + ", ".join(f"{k} {a}" for k, (a, _) in wrong.items())
                               + "; continue it with the same settings (" + ", ".join(
                                   f"{k} {b} given" for k, (_, b) in wrong.items()) + ")")
    return pkg
