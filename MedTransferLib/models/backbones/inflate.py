"""2D → 3D inflation (I3D, Carreira & Zisserman 2017): the only fully offline way to pretrained 3D
weights.

Every ``Conv2d`` with a k×k kernel becomes a ``Conv3d`` with a k×k×k kernel whose weights are the
2D kernel repeated k times along the new axis and divided by k, so a volume whose slices are all
equal gives every slice the 2D network's response (away from the ends, where zero padding differs).
BatchNorm, pooling and SE layers become their 3D versions with the same statistics. Written here
because neither MONAI nor torchvision inflates a model; ACS convolutions (``acsconv``) were
considered, but that package is unmaintained since 2021 and needs its own model classes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from MedTransferLib.core.errors import MedTransferError

_BN = (nn.BatchNorm2d,)


def _triple(v):
    return (v[0],) + tuple(v) if isinstance(v, tuple) else (v, v, v)


def _inflate_conv(conv: nn.Conv2d) -> nn.Conv3d:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise MedTransferError(f"cannot inflate {conv}: only zero-padded convolutions are supported")
    new = nn.Conv3d(conv.in_channels, conv.out_channels, _triple(conv.kernel_size), _triple(conv.stride),
                    _triple(conv.padding), _triple(conv.dilation), conv.groups, conv.bias is not None)
    depth = conv.kernel_size[0]
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, :, None].repeat(1, 1, depth, 1, 1) / depth)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    new = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    return new


def _inflate_module(m: nn.Module) -> nn.Module | None:
    if isinstance(m, nn.Conv2d):
        return _inflate_conv(m)
    if isinstance(m, nn.BatchNorm2d):
        return _inflate_bn(m)
    if isinstance(m, nn.MaxPool2d):
        return nn.MaxPool3d(_triple(m.kernel_size), _triple(m.stride), _triple(m.padding),
                            _triple(m.dilation), ceil_mode=m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        return nn.AvgPool3d(_triple(m.kernel_size), _triple(m.stride), _triple(m.padding),
                            m.ceil_mode, m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if m.output_size not in (1, (1, 1)):
            raise MedTransferError(f"cannot inflate {m}: only global pooling is supported")
        return nn.AdaptiveAvgPool3d(1)
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__ in ("LayerNorm2d", "Permute", "CNBlock"):
        raise MedTransferError(f"cannot inflate {type(m).__name__}: the network permutes 2D "
                               f"channel layouts; pick a convolutional backbone with BatchNorm")
    return None


def inflate(encoder: nn.Module) -> nn.Module:
    """A 3D copy of a 2D encoder (the original is left untouched)."""
    enc = copy.deepcopy(encoder)

    def visit(parent: nn.Module):
        for name, child in list(parent.named_children()):
            new = _inflate_module(child)
            if new is None:
                visit(child)
            elif name.isdigit():  # inside a Sequential / ModuleList
                parent[int(name)] = new
            else:
                setattr(parent, name, new)

    visit(enc)
    enc.spatial_dims = 3
    enc.inflated = True
    return enc
