"""Device choice: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os

import torch

from MedTransferLib.core.errors import MedTransferError


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


def available_devices() -> list[dict]:
    """The device choices to offer a user: ``auto``, ``cpu`` and each GPU with its name and
    memory (what the Slicer panel's device list shows). ``auto`` says what it resolves to."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"key": f"cuda:{i}", "label": f"GPU {i}: {props.name} ({props.total_memory / 2**30:.0f} GB)",
                         "memory_gb": round(props.total_memory / 2**30, 1)})
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        gpus.append({"key": "mps", "label": "Apple GPU (MPS)", "memory_gb": None})
    auto = resolve_device("auto")
    chosen = gpus[0]["label"] if gpus else "CPU"
    return ([{"key": "auto", "label": f"auto ({chosen})", "resolves_to": str(auto), "memory_gb": None}]
            + gpus + [{"key": "cpu", "label": f"CPU ({os.cpu_count()} cores)", "memory_gb": None}])


def memory_format(device: torch.device, spatial_dims: int):
    """Channels-last where it pays: CUDA, and CPU too (oneDNN convolutions; measured with
    bench/micro.py --only formats: bench/NOTES.md). None elsewhere (MPS)."""
    if device.type not in ("cuda", "cpu"):
        return None
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
