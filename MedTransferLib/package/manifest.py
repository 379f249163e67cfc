"""The model package's manifest, typed: what a package is (task, mode, labels or classes,
preprocessing, network config, slicing, inference settings) and how it came to be (strategy,
training settings, provenance, history, metrics, calibration, shift references).

``format_version`` is the manifest's major version. A reader refuses a larger one (the model was
made by a newer MedTransfer that may mean something else by a field); fields it does not know
from the same major version (added later, optional by rule) are kept in ``extra`` and written back
unchanged, so re-saving a package never drops them.

Example:
    >>> m = Manifest.from_json(json.loads(Path("runs/a/model/manifest.json").read_text()))  # doctest: +SKIP
    >>> m.slicing.axis, m.labels[0].name, m.inference.patch                                  # doctest: +SKIP
"""

from __future__ import annotations

import json  # noqa: F401  (the docstring's example)
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path  # noqa: F401  (the docstring's example)

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label
from MedTransferLib.data.preprocessing import Preprocessing

FORMAT = "medtransfer-model"
FORMAT_VERSION = 1
TASKS = ("segmentation", "classification")
MODES = ("2.5d", "3d")


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def check_format(d, where: str = "manifest") -> int:
    """The manifest's major version, once it is known to be a MedTransfer manifest this
    MedTransfer can read."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise MedTransferError(f"{where} is not a MedTransfer manifest")
    version = d.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise MedTransferError(f"{where} has format version {version}, newer than this "
                               f"MedTransfer reads ({FORMAT_VERSION}); update MedTransfer")
    return version


@dataclass
class Slicing:
    """Along which axis the network reads the volume, how many neighbouring slices it sees (2.5D;
    1 in 3D) and how many images (channels) a case has."""

    axis: int
    slices: int
    channels: int = 1
    orientation: str = ""   # the voxel order the network reads (data/orientation.py); "": as stored

    @classmethod
    def from_json(cls, d: dict) -> "Slicing":
        order = str(d.get("orientation", ""))
        if order and (set(order) - set("LRAPIS") or sorted(order.translate(str.maketrans("RAI", "LPS"))) != list("LPS")):
            raise ValueError(f"slicing orientation {order!r}")
        return cls(int(d["axis"]), int(d["slices"]), int(d.get("channels", 1)), order)


@dataclass
class Inference:
    """How prediction runs: 3D sliding-window ``patch`` and ``overlap``; a classifier's input
    ``size`` and how it aggregates slices. Unset fields are left out of the JSON."""

    patch: list[int] | None = None
    overlap: float | None = None
    size: int | None = None
    aggregation: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> "Inference":
        return cls(patch=[int(p) for p in d["patch"]] if d.get("patch") is not None else None,
                   overlap=float(d["overlap"]) if d.get("overlap") is not None else None,
                   size=int(d["size"]) if d.get("size") is not None else None,
                   aggregation=d.get("aggregation"))

    def to_json(self) -> dict:
        return _drop_none(asdict(self))


@dataclass
class Manifest:
    task: str
    mode: str
    labels: list[Label]
    preprocessing: Preprocessing
    model: dict                       # the network's config; models.factory.build_model rebuilds it
    slicing: Slicing
    inference: Inference = field(default_factory=Inference)
    classes: list[str] | None = None  # classification only
    strategy: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    complete: bool = True             # False: a checkpoint of an unfinished run
    calibration: dict | None = None   # classification: temperature, confusion, source prior
    shift: dict = field(default_factory=dict)   # the references the shift tools compare with
    weights: dict | None = None       # set when saved: {"file", "sha256"}
    files: dict[str, str] = field(default_factory=dict)   # further tensor files → SHA-256
    fingerprint: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest") -> "Manifest":
        """Read and check a manifest's JSON object; every problem is a :class:`MedTransferError`
        naming ``where``."""
        version = check_format(d, where)
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            m = cls(task=d.get("task", "segmentation"), mode=d.get("mode", "2.5d"),
                    labels=[Label.from_dict(x) for x in d["labels"]],
                    preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                    model=dict(d["model"]), slicing=Slicing.from_json(d["slicing"]),
                    inference=Inference.from_json(d.get("inference", {})),
                    classes=list(d["classes"]) if d.get("classes") is not None else None,
                    **{k: d[k] for k in ("strategy", "training", "provenance", "history", "metrics",
                                         "complete", "calibration", "shift", "weights", "files",
                                         "fingerprint") if k in d},
                    format_version=version, extra={k: v for k, v in d.items() if k not in known | {"format"}})
            m.model["backbone"]  # noqa: B018 — every network config names its backbone
            if m.task not in TASKS:
                raise ValueError(f"task {m.task!r}")
            if m.mode not in MODES:
                raise ValueError(f"mode {m.mode!r}")
            if not isinstance(m.files, dict):
                raise ValueError("'files'")
            if m.task == "classification" and (m.inference.size is None or not m.classes):
                raise KeyError("inference size or classes")
            if m.task == "segmentation" and m.mode == "3d" and m.inference.patch is None:
                raise KeyError("inference patch")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MedTransferError(f"{where} lacks or garbles {exc}") from None
        return m

    def to_json(self) -> dict:
        """The JSON object :meth:`from_json` reads back to an equal manifest."""
        d = {"task": self.task, "mode": self.mode, "labels": [lab.to_dict() for lab in self.labels],
             "preprocessing": self.preprocessing.to_dict(), "model": self.model,
             "slicing": asdict(self.slicing), "inference": self.inference.to_json(),
             "classes": self.classes, "strategy": self.strategy, "training": self.training,
             "provenance": self.provenance, "history": self.history, "metrics": self.metrics,
             "complete": self.complete, "calibration": self.calibration, "shift": self.shift,
             "format": FORMAT, "format_version": self.format_version, "weights": self.weights,
             "files": self.files or None, "fingerprint": self.fingerprint or None}
        return {**self.extra, **_drop_none(d)}
