"""Device choice: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from .errors import MedTransferError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MedTransferError(f"device '{name}' is not understood; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedTransferError("device 'cuda' was asked for but no CUDA GPU is available; use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MedTransferError("device 'mps' was asked for but is not available; use --device auto or cpu")
    return dev


def autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)
