"""Loading weight files safely: safetensors, or ``torch.load(weights_only=True)`` — never pickle."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from MedTransferLib.core.errors import MedTransferError


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a PyTorch checkpoint, refusing arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"weights file '{path}' does not exist; give a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise MedTransferError(f"weights file '{path}' is not a valid safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        raise MedTransferError(f"weights file '{path}' was refused: it is not a plain tensor "
                               f"checkpoint (only weights are loaded, never code; "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedTransferError(f"weights file '{path}' holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; every key must match in name and shape.

    Keys starting with ``ignore_prefixes`` (a classifier head we replace) may be present or not,
    of any shape; they are not loaded.
    """
    own = model.state_dict()
    skip = lambda k: k.startswith(ignore_prefixes) if ignore_prefixes else False  # noqa: E731
    # BatchNorm's step counter is absent from older published files and never used by us
    missing = sorted(k for k in own if k not in state and not skip(k)
                     and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own and not skip(k))
    mismatched = sorted(f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape and not skip(k))
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:3])})")
        raise MedTransferError(f"weights from {source} do not fit this architecture: "
                               f"{'; '.join(parts)}; pick the backbone these weights were made for")
    model.load_state_dict({k: v for k, v in state.items() if k in own and not skip(k)}, strict=False)
