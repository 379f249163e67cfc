"""Model packages: a directory with ``model.safetensors`` and ``manifest.json``.

No pickle anywhere: a model directory is untrusted input. The manifest carries a SHA-256 of the
weights and a fingerprint of its own content, so a package whose labels, preprocessing or
weights were changed after training is refused with a clear message.

Loading and verifying a package needs no torch (only its weights do): the Slicer panel reads
labels and summaries this way before PyTorch is installed, and in its own process.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import MedTransferError
from .fileutil import replace_dir, sha256_file, write_json
from .labels import Label
from .preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

FORMAT = "medtransfer-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


def fingerprint(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def array_fingerprint(*arrays) -> str:
    """SHA-256 over arrays' shapes, dtypes and bytes: identifies training inputs without paths."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_package(path, model: torch.nn.Module, manifest: dict, extras: dict | None = None) -> Path:
    """Write weights + manifest into ``path`` atomically (a temp dir renamed into place).
    ``extras``: further tensor files (``{file name: {key: tensor}}``, safetensors, e.g. the
    OOD reference statistics), checksummed in the manifest like the weights."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        files = {}
        for name, tensors in (extras or {}).items():
            if "/" in name or "\\" in name or not name.endswith(".safetensors") or name == WEIGHTS:
                raise ValueError(f"bad extra file name {name!r}")
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
            files[name] = sha256_file(tmp / name)
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                        weights={"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS)},
                        **({"files": files} if files else {}))
        manifest["fingerprint"] = fingerprint(manifest)
        write_json(tmp / MANIFEST, manifest)  # written last: no manifest = incomplete
        replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


@dataclass
class ModelPackage:
    """A loaded, verified model package.

    Example:
        >>> pkg = ModelPackage.load("runs/demo/model")  # doctest: +SKIP
        >>> net = pkg.build_model()                      # doctest: +SKIP
    """

    path: Path
    manifest: dict

    @property
    def labels(self) -> list[Label]:
        return [Label.from_dict(d) for d in self.manifest["labels"]]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def axis(self) -> int:
        return int(self.manifest["slicing"]["axis"])

    @property
    def slices(self) -> int:
        return int(self.manifest["slicing"]["slices"])

    @classmethod
    def load(cls, path) -> "ModelPackage":
        path = Path(path)
        if (path / "model" / MANIFEST).is_file() and not (path / MANIFEST).exists():
            path = path / "model"  # a run directory: its model is in model/
        elif (path / "model.old" / MANIFEST).is_file() and not (path / MANIFEST).exists():
            path = path / "model.old"   # a crash between replace_dir's two renames: the previous one
        elif not path.exists() and (path.with_name(path.name + ".old") / MANIFEST).is_file():
            path = path.with_name(path.name + ".old")
        where = f"model '{path}'"
        if not path.is_dir():
            raise MedTransferError(f"{where} does not exist; give the folder written by "
                                   f"'medtransfer train --out'")
        if not (path / MANIFEST).is_file():
            raise MedTransferError(f"{where} has no {MANIFEST} (incomplete or not a MedTransfer "
                                   f"model); train again or copy the whole folder")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedTransferError(f"{where}: {MANIFEST} is not valid JSON ({exc}); the file is "
                                   f"damaged — copy the model again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise MedTransferError(f"{where}: {MANIFEST} is not a MedTransfer manifest")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise MedTransferError(f"{where} has format version {version}, newer than this "
                                   f"MedTransfer reads ({FORMAT_VERSION}); update MedTransfer")
        if manifest.get("fingerprint") != fingerprint(manifest):
            raise MedTransferError(f"{where}: {MANIFEST} was changed after training (fingerprint "
                                   f"mismatch: labels, preprocessing or settings edited); use the "
                                   f"original package")
        weights = path / WEIGHTS
        if not weights.is_file():
            raise MedTransferError(f"{where} has no {WEIGHTS}; copy the whole folder")
        if sha256_file(weights) != manifest.get("weights", {}).get("sha256"):
            raise MedTransferError(f"{where}: {WEIGHTS} does not match the manifest's checksum "
                                   f"(replaced or damaged); use the original package")
        files = manifest.get("files", {})
        if not isinstance(files, dict):
            raise MedTransferError(f"{where}: {MANIFEST} has a garbled 'files' entry")
        for name, digest in files.items():
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise MedTransferError(f"{where}: {MANIFEST} names a file '{name}' outside the package; refused")
            if not (path / name).is_file() or sha256_file(path / name) != digest:
                raise MedTransferError(f"{where}: {name} is missing or does not match the manifest's "
                                       f"checksum; copy the whole folder again")
        pkg = cls(path, manifest)
        try:
            pkg.labels, pkg.preprocessing, pkg.axis, pkg.slices  # noqa: B018 — validate now
            manifest["model"]["backbone"]
            if pkg.mode not in ("2.5d", "3d"):
                raise ValueError(f"mode {pkg.mode!r}")
            if pkg.task not in ("segmentation", "classification"):
                raise ValueError(f"task {pkg.task!r}")
            if pkg.task == "classification":
                int(manifest["inference"]["size"]), list(manifest["classes"])
            elif pkg.mode == "3d":
                [int(p) for p in manifest["inference"]["patch"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise MedTransferError(f"{where}: {MANIFEST} lacks or garbles {exc}") from None
        return pkg

    @property
    def mode(self) -> str:
        return self.manifest.get("mode", "2.5d")

    @property
    def task(self) -> str:
        return self.manifest.get("task", "segmentation")

    def _load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path / name))
        except (SafetensorError, OSError, ValueError) as exc:
            raise MedTransferError(f"model '{self.path}': {name} is not a valid safetensors file ({exc}); "
                                   f"the package is damaged or not a MedTransfer model — train it again or "
                                   f"use an intact copy") from None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._load_tensors(WEIGHTS)

    def extra(self, name: str) -> dict[str, torch.Tensor]:
        """A verified extra tensor file of the package (empty if the package has none)."""
        return self._load_tensors(name) if name in self.manifest.get("files", {}) else {}

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        from .backbones.weights import load_strict
        from .model import build_model

        net = build_model(self.manifest["model"], weights=None)
        load_strict(net, self.state_dict(), f"model '{self.path}'")
        return net.to(device).eval()

    def summary(self) -> dict:
        """What a user wants to know before applying a model: what it segments or classifies,
        how it was built and trained, on how much data, and how well it validated."""
        m = self.manifest
        strategy = m.get("strategy", {})
        training = m.get("training", {})
        inputs = m.get("provenance", {}).get("inputs", [])
        metrics = m.get("metrics", {})
        return {
            "task": self.task, "mode": self.mode,
            "structures" if self.task == "segmentation" else "classes":
                [lab.name for lab in self.labels] if self.task == "segmentation" else list(m.get("classes", [])),
            "backbone": m["model"].get("backbone"), "weights": training.get("weights"),
            "strategy": strategy.get("name") or training.get("strategy"),
            "strategy_reason": (strategy.get("advice") or {}).get("reason", ""),
            "modality": self.preprocessing.modality,
            "cases": len(inputs), "labelled_slices": sum(int(i.get("labelled_slices") or 0) for i in inputs),
            "epochs_run": metrics.get("epochs_run"),
            # the run's validation score: Dice (segmentation) or balanced accuracy (classification)
            "validation": next(((k[len("best_val_"):], v) for k, v in metrics.items()
                                if k.startswith("best_val_") and v is not None), None),
            "complete": bool(m.get("complete", True)), "fingerprint": m.get("fingerprint", "")[:12],
        }

    def describe(self) -> str:
        """:meth:`summary` as the few lines the Slicer panel and ``medtransfer info`` show."""
        s = self.summary()
        what = ", ".join(s.get("structures") or s.get("classes") or [])
        lines = [f"{s['task']} ({s['mode']}): {what}",
                 f"backbone {s['backbone']} (weights: {s['weights']}), strategy {s['strategy']}",
                 f"trained on {s['cases']} case(s), {s['labelled_slices']} labelled slices, "
                 f"modality {s['modality']}, {s['epochs_run']} epochs"]
        if s["strategy_reason"]:
            lines.append(f"why this strategy: {s['strategy_reason']}")
        if s["validation"]:
            name, score = s["validation"]
            lines.append(f"best validation {name.replace('_', ' ')}: {score:.3f}")
        else:
            lines.append("no validation score (too few labelled slices to hold some out)")
        if not s["complete"]:
            lines.append("checkpoint of an unfinished run")
        return "\n".join(lines)

    def copy_to(self, dest) -> "ModelPackage":
        """Save a copy of this package at ``dest`` (a new or replaced folder, written atomically
        and verified before it replaces anything)."""
        dest = Path(dest)
        if dest.resolve() == self.path.resolve():
            return self
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for name in (WEIGHTS, MANIFEST, *self.manifest.get("files", {})):
                shutil.copy2(self.path / name, tmp / name)
            ModelPackage.load(tmp)   # the copy verifies before it goes in place
            replace_dir(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return ModelPackage.load(dest)
