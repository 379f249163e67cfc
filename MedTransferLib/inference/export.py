"""Export a model package for use outside MedTransfer: TorchScript (``torch.jit.trace``), ONNX
(torch's TorchScript-based exporter, dynamic batch and spatial sizes) and a ``labels.json`` with
everything a consumer needs to feed it and read its output (labels or classes, intensity
preprocessing, slicing, window/size).

ONNX needs the optional ``onnx`` package (``pip install onnx``; in Slicer the module offers to
install it). Each export is checked against the package's own network on a second input size
(ONNX with ``onnxruntime`` when it is installed) and refused, with the reason, when it does not
reproduce it — e.g. a network whose shapes torch's tracer cannot make dynamic."""

from __future__ import annotations

from pathlib import Path

import torch

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import atomic_path, make_folder, write_json
from MedTransferLib.package.store import ModelPackage


def example_input(pkg: ModelPackage) -> torch.Tensor:
    cfg = pkg.manifest.model
    c = int(cfg["in_channels"])
    if pkg.task == "classification":
        size = pkg.manifest.inference.size
        return torch.zeros((1, c) + (size,) * int(cfg.get("spatial_dims", 2)))
    if pkg.mode == "3d":
        return torch.zeros((1, c) + tuple(pkg.manifest.inference.patch))
    return torch.zeros(1, c, 128, 128)


def _second_input(x: torch.Tensor) -> torch.Tensor:
    """Another batch and spatial size than the trace example (multiples of 32 stay multiples)."""
    shape = [2, x.shape[1]] + [int(d) + 32 if i == 0 else int(d) for i, d in enumerate(x.shape[2:])]
    return torch.randn(shape)


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, where: str) -> Path:
    """Write ``model`` as ONNX with dynamic batch and spatial axes; check it reproduces the model."""
    import warnings

    try:
        import onnx
    except ImportError:
        raise MedTransferError("ONNX export needs the 'onnx' package: pip install onnx (TorchScript "
                               "export works without it)") from None
    spatial = {i + 2: f"d{i}" for i in range(x.dim() - 2)}
    axes = {"image": {0: "batch", **spatial}, "logits": {0: "batch"}}
    if x.dim() > 2 and model(x).dim() == x.dim():   # segmentation: logits keep the input's size
        axes["logits"].update(spatial)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["image"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=17)
            onnx.checker.check_model(str(tmp))
        except Exception as exc:
            raise MedTransferError(f"{where} could not be exported to ONNX ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:160]}); use the TorchScript export") from None
        try:
            import onnxruntime
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None:
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            for probe in (x, _second_input(x)):
                got = torch.from_numpy(session.run(None, {"image": probe.numpy()})[0])
                if not torch.allclose(got, model(probe), atol=1e-3, rtol=1e-3):
                    raise MedTransferError(f"{where}: the ONNX export does not reproduce the model at input "
                                           f"size {list(probe.shape)}; use the TorchScript export")
    return path


def export_package(package, out, formats=("torchscript", "onnx")) -> dict[str, Path]:
    """Write ``model.torchscript.pt``, ``model.onnx`` (as asked in ``formats``) and
    ``labels.json`` into ``out``; returns their paths."""
    unknown = set(formats) - {"torchscript", "onnx"}
    if unknown or not formats:
        raise MedTransferError(f"export formats {sorted(unknown) or '(none)'} unknown; use torchscript and/or onnx")
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    model = pkg.build_model("cpu").eval()
    x = torch.randn_like(example_input(pkg))
    out = make_folder(out)
    written = {}
    if "onnx" in formats:
        with torch.no_grad():
            written["onnx"] = export_onnx(model, x, out / "model.onnx", f"model '{pkg.path}'")
    if "torchscript" in formats:
        written["torchscript"] = _export_torchscript(pkg, model, x, out / "model.torchscript.pt")
    _write_labels(pkg, x, out / "labels.json")
    return {**written, "labels": out / "labels.json"}


def _export_torchscript(pkg, model, x, script: Path) -> Path:
    with torch.no_grad():
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
        except Exception as exc:  # a network torch cannot trace
            raise MedTransferError(f"model '{pkg.path}' could not be exported to TorchScript "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        if not torch.allclose(traced(x), model(x), atol=1e-4, rtol=1e-4):
            raise MedTransferError(f"model '{pkg.path}': the TorchScript export does not reproduce the "
                                   f"model's output; use the model package itself")
    with atomic_path(script) as tmp:
        traced.save(str(tmp))
    return script


def _write_labels(pkg, x, path: Path) -> None:
    m = pkg.manifest.to_json()
    meta = {"task": pkg.task, "mode": pkg.mode, "labels": m["labels"], "classes": m.get("classes"),
            "preprocessing": m["preprocessing"], "slicing": m["slicing"], "inference": m["inference"],
            "input": {"shape_example": list(x.shape), "channels": int(pkg.manifest.model["in_channels"]),
                      "note": "standardise with 'preprocessing', then map to target_mean/target_std; "
                              "2.5D input = k adjacent slices (modality-major) as channels, "
                              "spatial sizes multiples of 32"},
            "output": ("class logits" if pkg.task == "classification" else
                       "per-class logits; argmax index i > 0 is labels[i-1]"),
            "source_package": {"path": str(pkg.path), "fingerprint": pkg.manifest.fingerprint}}
    write_json(path, meta)
