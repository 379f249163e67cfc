"""Classification datalists: one class per case (``label``) or per slice (``slice_labels``),
as dataset.json or a CSV of image,label rows."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from MedTransferLib.core.case import Case
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label, default_color
from MedTransferLib.data.datalist import resolve_within

if TYPE_CHECKING:
    pass


_FIX = "see 'Classification' in the README"


@dataclass
class ClassEntry:
    image: Path | list[Path]                    # a list: co-registered images, one channel each
    label: int | None = None                    # per-volume class index
    slice_labels: dict[int, int] | None = None  # per-slice class indices
    slice_axis: int = 2
    case_id: str = ""


@dataclass
class ClassDatalist:
    classes: list[str]
    training: list[ClassEntry]
    test: list[ClassEntry] = field(default_factory=list)
    modality: str | tuple = "auto"
    path: Path | None = None

    def labels(self) -> list[Label]:
        return [Label(i, name, default_color(i)) for i, name in enumerate(self.classes)]

    def load_cases(self, entries=None) -> list[tuple[Case, ClassEntry]]:
        from MedTransferLib.data.io import read_case

        return [(read_case(e.image, None, e.case_id), e) for e in (self.training if entries is None else entries)]


def is_classification(path) -> bool:
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("task") == "classification"


def _class_index(value, classes: list[str], where: str, path) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value.strip() not in classes:
        value = int(value)
    if isinstance(value, int):
        if 0 <= value < len(classes):
            return value
        raise MedTransferError(f"datalist '{path}': {where} class {value} is out of range "
                               f"(0..{len(classes) - 1}); {_FIX}")
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    raise MedTransferError(f"datalist '{path}': {where} label {value!r} is not one of the classes "
                           f"{classes}; {_FIX}")


def load_class_datalist(path) -> ClassDatalist:
    """Read a classification ``dataset.json`` or CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"datalist '{path}' does not exist; give a classification dataset.json or CSV")
    root = path.parent
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    classes = data.get("classes")
    if isinstance(classes, dict):
        classes = [classes[k] for k in sorted(classes, key=int)]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise MedTransferError(f"datalist '{path}': 'classes' must list at least two class names, "
                               f"e.g. [\"normal\", \"lesion\"]; {_FIX}")
    from MedTransferLib.data.datalist import parse_modality

    modality = parse_modality(data.get("modality", "auto"), path)

    def entries(section, need):
        out = []
        for i, raw in enumerate(data.get(section) or []):
            where = f"{section}[{i}]"
            raw_image = raw.get("image") if isinstance(raw, dict) else None
            names = raw_image if isinstance(raw_image, list) else [raw_image]
            if not names or not all(isinstance(n, str) and n for n in names):
                raise MedTransferError(f"datalist '{path}': {where} needs an 'image' path (or a list "
                                       f"of co-registered images); {_FIX}")
            paths = [resolve_within(n, root, f"{path}: {section}[{i}].image") for n in names]
            image = paths if isinstance(raw_image, list) else paths[0]
            label = slices = None
            if raw.get("slice_labels") is not None:
                sl = raw["slice_labels"]
                if not isinstance(sl, dict) or not sl:
                    raise MedTransferError(f"datalist '{path}': {where}.slice_labels must map slice "
                                           f"indices to classes; {_FIX}")
                try:
                    slices = {int(k): _class_index(v, classes, f"{where}.slice_labels[{k}]", path)
                              for k, v in sl.items()}
                except ValueError:
                    raise MedTransferError(f"datalist '{path}': {where}.slice_labels keys must be "
                                           f"slice indices") from None
            elif "label" in raw:
                label = _class_index(raw["label"], classes, where, path)
            elif need:
                raise MedTransferError(f"datalist '{path}': {where} has neither 'label' nor "
                                       f"'slice_labels'; {_FIX}")
            axis = raw.get("slice_axis", 2)
            if axis not in (0, 1, 2):
                raise MedTransferError(f"datalist '{path}': {where}.slice_axis must be 0, 1 or 2")
            out.append(ClassEntry(image, label, slices, axis, str(raw.get("id") or paths[0].name.split(".")[0])))
        return out

    training = entries("training", True)
    if not training:
        raise MedTransferError(f"datalist '{path}': 'training' lists no case; {_FIX}")
    return ClassDatalist([str(c) for c in classes], training, entries("test", False), modality, path)


def _load_csv(path: Path) -> ClassDatalist:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise MedTransferError(f"CSV '{path}' needs the columns image,label (per volume) or "
                               f"image,slice,label (per slice); {_FIX}")
    raw_labels = [r["label"].strip() for r in rows]
    numeric = all(v.lstrip("-").isdigit() for v in raw_labels)
    classes = ([f"class_{i}" for i in range(max(int(v) for v in raw_labels) + 1)] if numeric
               else sorted(set(raw_labels)))
    if len(classes) < 2:
        raise MedTransferError(f"CSV '{path}' has a single class; classification needs two or more")
    by_image: dict[str, ClassEntry] = {}
    for i, r in enumerate(rows):
        img = resolve_within(r["image"], path.parent, f"{path}: row {r.get('image')}")
        cls = _class_index(int(raw_labels[i]) if numeric else raw_labels[i], classes, f"row {i + 2}", path)
        e = by_image.setdefault(str(img), ClassEntry(img, None, None, 2, img.name.split(".")[0]))
        if r.get("slice", "").strip():
            e.slice_labels = {**(e.slice_labels or {}), int(r["slice"]): cls}
        else:
            e.label = cls
    return ClassDatalist(classes, list(by_image.values()), [], "auto", path)
