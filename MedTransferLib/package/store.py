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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import atomic_dir, sha256_file, write_json
from MedTransferLib.core.labels import Label
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.package.manifest import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    Manifest,
    check_format,
)

if TYPE_CHECKING:
    import torch

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


def save_package(path, model: torch.nn.Module, manifest: Manifest, extras: dict | None = None) -> Path:
    """Write weights + manifest into ``path`` atomically (a temp dir renamed into place).
    ``extras``: further tensor files (``{file name: {key: tensor}}``, safetensors, e.g. the
    OOD reference statistics), checksummed in the manifest like the weights."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        files = {}
        for name, tensors in (extras or {}).items():
            if "/" in name or "\\" in name or not name.endswith(".safetensors") or name == WEIGHTS:
                raise ValueError(f"bad extra file name {name!r}")
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / name))
            files[name] = sha256_file(tmp / name)
        body = replace(manifest, format_version=FORMAT_VERSION, files=files, fingerprint="",
                       weights={"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS)}).to_json()
        write_json(tmp / MANIFEST, dict(body, fingerprint=fingerprint(body)))  # last: no manifest = incomplete
    return path


@dataclass
class ModelPackage:
    """A loaded, verified model package.

    Example:
        >>> pkg = ModelPackage.load("runs/demo/model")  # doctest: +SKIP
        >>> net = pkg.build_model()                      # doctest: +SKIP
    """

    path: Path
    manifest: Manifest

    @property
    def labels(self) -> list[Label]:
        return self.manifest.labels

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    @property
    def axis(self) -> int:
        return self.manifest.slicing.axis

    @property
    def slices(self) -> int:
        return self.manifest.slicing.slices

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
            what = "is a file, not a model folder" if path.exists() else "does not exist"
            raise MedTransferError(f"{where} {what}; give the folder written by "
                                   f"'medtransfer train --out'")
        if not (path / MANIFEST).is_file():
            raise MedTransferError(f"{where} has no {MANIFEST} (incomplete or not a MedTransfer "
                                   f"model); train again or copy the whole folder")
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MedTransferError(f"{where}: {MANIFEST} is not valid JSON ({exc}); the file is "
                                   f"damaged — copy the model again") from None
        check_format(manifest, f"{where}: {MANIFEST}")
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
        return cls(path, Manifest.from_json(manifest, f"{where}: {MANIFEST}"))

    @property
    def mode(self) -> str:
        return self.manifest.mode

    @property
    def task(self) -> str:
        return self.manifest.task

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
        return self._load_tensors(name) if name in self.manifest.files else {}

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        from MedTransferLib.models.backbones.weights import load_strict
        from MedTransferLib.models.factory import build_model

        net = build_model(self.manifest.model, weights=None)
        load_strict(net, self.state_dict(), f"model '{self.path}'")
        return net.to(device).eval()

    def summary(self) -> dict:
        """What a user wants to know before applying a model: what it segments or classifies,
        how it was built and trained, on how much data, and how well it validated."""
        m = self.manifest
        strategy, training, metrics = m.strategy, m.training, m.metrics
        inputs = m.provenance.get("inputs", [])
        return {
            "task": self.task, "mode": self.mode,
            "structures" if self.task == "segmentation" else "classes":
                [lab.name for lab in self.labels] if self.task == "segmentation" else list(m.classes or []),
            "backbone": m.model.get("backbone"), "weights": training.get("weights"),
            "strategy": strategy.get("name") or training.get("strategy"),
            "strategy_reason": (strategy.get("advice") or {}).get("reason", ""),
            "modality": self.preprocessing.modality,
            "cases": len(inputs), "labelled_slices": sum(int(i.get("labelled_slices") or 0) for i in inputs),
            "epochs_run": metrics.get("epochs_run"),
            # the run's validation score: Dice (segmentation) or balanced accuracy (classification)
            "validation": next(((k[len("best_val_"):], v) for k, v in metrics.items()
                                if k.startswith("best_val_") and v is not None), None),
            "complete": bool(m.complete), "fingerprint": m.fingerprint[:12],
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
        with atomic_dir(dest) as tmp:
            for name in (WEIGHTS, MANIFEST, *self.manifest.files):
                shutil.copy2(self.path / name, tmp / name)
            ModelPackage.load(tmp)   # the copy verifies before it goes in place
        return ModelPackage.load(dest)
