"""3D sources from MONAI: MedicalNet ResNets (an encoder for MedTransfer's U-Net decoder) and whole
segmentation networks (SegResNet and UNet from scratch, SwinUNETR with self-supervised weights)."""

from __future__ import annotations

from torch import nn

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.models.backbones.encoders import ResNetEncoder
from MedTransferLib.models.backbones.weights import load_strict, read_state_dict

MEDICALNET_DEPTHS = (10, 18, 34, 50)


class MedicalNetEncoder(ResNetEncoder):
    """MONAI's 3D ResNet with the MedicalNet layout (Chen et al. 2019: 23 CT/MR datasets).

    MedicalNet trained on volumes z-scored over the body, one channel: that is what preprocessing
    maps to (mean 0, std 1), not ImageNet statistics.
    """

    spatial_dims = 3
    pretrain_mean = (0.0,)
    pretrain_std = (1.0,)


def medicalnet_resnet(depth: int) -> nn.Module:
    from monai.networks.nets import resnet

    bias_downsample, shortcut = resnet.get_medicalnet_pretrained_resnet_args(depth)
    return getattr(resnet, f"resnet{depth}")(
        spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type=shortcut,
        bias_downsample=bias_downsample, conv1_t_size=7, conv1_t_stride=2)


def _medicalnet_online(depth: int) -> dict:
    from monai.networks.nets.resnet import get_pretrained_resnet_medicalnet

    try:
        return get_pretrained_resnet_medicalnet(depth, device="cpu", datasets23=True)
    except Exception as exc:  # no huggingface_hub, no network, HTTP errors ...
        raise MedTransferError(
            f"could not download the MedicalNet ResNet-{depth} weights from "
            f"huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth} ({type(exc).__name__}); "
            f"download resnet_{depth}_23dataset.pth there and pass it with --weights PATH") from None


def medicalnet_offline_file(depth: int):
    """Where ``medtransfer wheelhouse --weights medicalnet-resnetN`` puts the file (the torch hub
    cache's ``checkpoints``); read there before any download."""
    from MedTransferLib.core.environment import torch_hub_dir

    return torch_hub_dir() / "checkpoints" / f"resnet_{depth}_23dataset.pth"


def _medicalnet_state(depth: int) -> dict:
    local = medicalnet_offline_file(depth)
    return read_state_dict(local) if local.is_file() else _medicalnet_online(depth)


def build_medicalnet(depth: int, weights: str | None) -> MedicalNetEncoder:
    net = medicalnet_resnet(depth)
    if weights:
        state = _medicalnet_state(depth) if weights == "medicalnet" else read_state_dict(weights)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        load_strict(net, state, "MedicalNet (Hugging Face)" if weights == "medicalnet" else f"'{weights}'",
                    ignore_prefixes=("fc.",))
    return MedicalNetEncoder(net)


class WholeNetwork(nn.Module):
    """A complete MONAI segmentation network. ``encoder`` is its downsampling path (what
    feature extraction freezes); ``stages()`` groups it shallow → deep, the decoder last."""

    def __init__(self, net: nn.Module, encoder_parts: list[nn.Module], decoder_parts: list[nn.Module],
                 multiple: int):
        super().__init__()
        self.net = net
        self._encoder_parts = encoder_parts
        self._decoder_parts = decoder_parts
        self.multiple = multiple  # input sizes must be divisible by this
        self.spatial_dims = 3

    @property
    def encoder(self) -> nn.Module:
        return nn.ModuleList(self._encoder_parts)

    def stages(self) -> list[nn.Module]:
        return list(self._encoder_parts)

    def forward(self, x):
        return self.net(x)


def build_segresnet(in_channels: int, num_classes: int) -> WholeNetwork:
    from monai.networks.nets import SegResNet

    net = SegResNet(spatial_dims=3, init_filters=16, in_channels=in_channels, out_channels=num_classes,
                    blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    enc = [nn.ModuleList([net.convInit])] + list(net.down_layers)
    return WholeNetwork(net, enc, [net.up_layers, net.up_samples, net.conv_final], 8)


def build_unet(in_channels: int, num_classes: int) -> WholeNetwork:
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes,
               channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    # MONAI's UNet nests each level inside the previous one; its outermost down block is the stem
    return WholeNetwork(net, [net.model[0]], [net.model[2]], 16)


def build_swinunetr(in_channels: int, num_classes: int, weights: str | None) -> WholeNetwork:
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=48, spatial_dims=3)
    if weights:
        if weights == "ssl":
            raise MedTransferError(
                "SwinUNETR's self-supervised weights are a manual download (model_swinvit.pt from "
                "github.com/Project-MONAI/MONAI-extra-test-data/releases/tag/0.8.1); pass the file "
                "with --weights PATH")
        _swin_load_from(net, weights)
    vit = net.swinViT
    enc = [nn.ModuleList([vit.patch_embed]), vit.layers1, vit.layers2, vit.layers3, vit.layers4]
    dec = [m for n, m in net.named_children() if n != "swinViT"]
    return WholeNetwork(net, enc, dec, 32)


def _swin_load_from(net, path: str) -> None:
    """Self-supervised Swin weights through MONAI's own ``load_from`` (it reads the published
    file's ``module.``-prefixed keys); the file itself is opened without pickle."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MedTransferError(f"weights file '{path}' was refused: not a plain tensor checkpoint "
                               f"({type(exc).__name__})") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise MedTransferError(f"weights file '{path}' has no 'state_dict': not SwinUNETR "
                               f"self-supervised weights (model_swinvit.pt)")
    if "module.patch_embed.proj.weight" not in state:
        raise MedTransferError(f"weights file '{path}' is not SwinUNETR self-supervised weights: "
                               f"'module.patch_embed.proj.weight' is missing "
                               f"(keys start {sorted(state)[:3]})")
    try:
        net.load_from(ckpt)
    except (KeyError, RuntimeError) as exc:
        raise MedTransferError(f"weights file '{path}' does not fit SwinUNETR (feature size 48): "
                               f"{str(exc).splitlines()[0][:200]}") from None
