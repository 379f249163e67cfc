"""Export a model package for use outside MedTransfer: TorchScript (``torch.jit.trace``) plus a
``labels.json`` with everything a consumer needs to feed it and read its output (labels or
classes, intensity preprocessing, slicing, window/size). ONNX is not written yet: torch's
exporter needs the ``onnx`` package, which MedTransfer does not depend on."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import MedTransferError
from .fileutil import atomic_path, write_json
from .package import ModelPackage


def example_input(pkg: ModelPackage) -> torch.Tensor:
    cfg = pkg.manifest["model"]
    c = int(cfg["in_channels"])
    if pkg.task == "classification":
        size = int(pkg.manifest["inference"]["size"])
        return torch.zeros((1, c) + (size,) * int(cfg.get("spatial_dims", 2)))
    if pkg.mode == "3d":
        return torch.zeros((1, c) + tuple(int(p) for p in pkg.manifest["inference"]["patch"]))
    return torch.zeros(1, c, 128, 128)


def export_package(package, out) -> dict[str, Path]:
    """Write ``model.torchscript.pt`` and ``labels.json`` into ``out``; returns their paths."""
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    model = pkg.build_model("cpu").eval()
    x = torch.randn_like(example_input(pkg))
    with torch.no_grad():
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
        except Exception as exc:  # a network torch cannot trace
            raise MedTransferError(f"model '{pkg.path}' could not be exported to TorchScript "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        if not torch.allclose(traced(x), model(x), atol=1e-4, rtol=1e-4):
            raise MedTransferError(f"model '{pkg.path}': the TorchScript export does not reproduce the "
                                   f"model's output; use the model package itself")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    script = out / "model.torchscript.pt"
    with atomic_path(script) as tmp:
        traced.save(str(tmp))
    m = pkg.manifest
    meta = {"task": pkg.task, "mode": pkg.mode, "labels": m["labels"], "classes": m.get("classes"),
            "preprocessing": m["preprocessing"], "slicing": m["slicing"], "inference": m.get("inference", {}),
            "input": {"shape_example": list(x.shape), "channels": int(m["model"]["in_channels"]),
                      "note": "standardise with 'preprocessing', then map to target_mean/target_std; "
                              "2.5D input = k adjacent slices (modality-major) as channels, "
                              "spatial sizes multiples of 32"},
            "output": ("class logits" if pkg.task == "classification" else
                       "per-class logits; argmax index i > 0 is labels[i-1]"),
            "source_package": {"path": str(pkg.path), "fingerprint": m["fingerprint"]}}
    write_json(out / "labels.json", meta)
    return {"torchscript": script, "labels": out / "labels.json"}
