"""MSD/MONAI-style datalists (``dataset.json``) → label definitions and cases.

Format (paths relative to the datalist's folder)::

    {"labels": {"0": "background", "1": "Hippocampus_L"},
     "colors": {"1": [0.9, 0.6, 0.0]},                      # optional, RGB in 0..1
     "terminology": {"1": "Segmentation category and type - …"},  # optional, Slicer terminology
     "modality": "MR",                                       # optional: MR | CT
     "training": [{"image": "ch2.nii.gz", "label": "lab.nii.gz",
                   "labelled_slices": [0, 10, 20], "slice_axis": 2,     # both optional
                   "site": "hospital A"}]}                             # optional (label audit)

``labelled_slices`` marks sparse labelling: every other slice along ``slice_axis`` (voxel axis,
0=i, 1=j, 2=k) is unlabelled. A label map may also hold 255 for "not labelled".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from MedTransferLib.core.case import IGNORE, Case
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label, default_color
from MedTransferLib.data.io import read_case

_FIX = "see the datalist format in the README"


@dataclass
class Entry:
    image: Path | list[Path]   # a list: co-registered images, one channel each
    label: Path | None = None
    labelled_slices: list[int] | None = None
    slice_axis: int = 2
    case_id: str = ""
    site: str = ""             # optional: where the case (and its labels) came from (label audit)


@dataclass
class Datalist:
    labels: list[Label]
    training: list[Entry]
    modality: str | tuple = "auto"   # or one per image channel
    path: Path | None = None
    test: list[Entry] = field(default_factory=list)

    def stored_voxels(self) -> tuple[int, int, int]:
        """``(image values, label voxels, channels)`` of the training cases from their files'
        headers (:func:`~MedTransferLib.data.io.stored_voxels`), counting only what the headers
        tell; nothing is read."""
        from MedTransferLib.data.io import stored_voxels

        values = labels = channels = 0
        for e in self.training:
            sizes = [stored_voxels(p) for p in (e.image if isinstance(e.image, list) else [e.image])]
            known = [s for s in sizes if s is not None]
            values += sum(v * c for v, c in known)
            labels += known[0][0] if known else 0   # a training entry always has a label map
            channels = channels or sum(c for _, c in known)
        return values, labels, max(1, channels)

    def load_cases(self, entries: list[Entry] | None = None) -> list[Case]:
        values = [lab.value for lab in self.labels]
        return [read_case(e.image, e.label, e.case_id, e.labelled_slices, e.slice_axis, values)
                for e in (self.training if entries is None else entries)]


def _err(path, msg):
    return MedTransferError(f"datalist '{path}': {msg}; {_FIX}")


def _parse_labels(raw, path) -> list[Label]:
    if not isinstance(raw, dict) or not raw:
        raise _err(path, "'labels' must be an object mapping label values to names, e.g. "
                         "{\"0\": \"background\", \"1\": \"liver\"}")
    labels = []
    for key, name in raw.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise _err(path, f"label key {key!r} is not an integer label value") from None
        if not isinstance(name, str) or not name.strip():
            raise _err(path, f"label {value} needs a non-empty name")
        if value < 0 or value == IGNORE or value > 65535:
            raise _err(path, f"label value {value} is not allowed (0..65535, 255 means unlabelled)")
        if value != 0:
            labels.append((value, name.strip()))
    if not labels:
        raise _err(path, "'labels' names no structure besides background (0)")
    return sorted(labels)


def _parse_entry(raw, root: Path, path, i: int, section: str, need_label: bool) -> Entry:
    where = f"{section}[{i}]"
    if isinstance(raw, str):
        raw = {"image": raw}
    if not isinstance(raw, dict) or "image" not in raw:
        raise _err(path, f"{where} must be an object with an 'image' path")
    if need_label and not raw.get("label"):
        raise _err(path, f"{where} has no 'label'")

    def resolve(p, key):
        if not isinstance(p, str) or not p:
            raise _err(path, f"{where}.{key} must be a path string")
        return resolve_within(p, root, f"{path}: {where}.{key}")

    axis = raw.get("slice_axis", 2)
    if axis not in (0, 1, 2):
        raise _err(path, f"{where}.slice_axis must be 0, 1 or 2 (voxel axis i, j or k)")
    slices = raw.get("labelled_slices")
    if slices is not None and (not isinstance(slices, list)
                               or not all(isinstance(s, int) and not isinstance(s, bool) for s in slices)):
        raise _err(path, f"{where}.labelled_slices must be a list of slice indices")
    if isinstance(raw["image"], list):   # several co-registered images: one channel each
        if not raw["image"]:
            raise _err(path, f"{where}.image is an empty list")
        image = [resolve(p, "image") for p in raw["image"]]
        first = image[0]
    else:
        image = first = resolve(raw["image"], "image")
    return Entry(image, resolve(raw["label"], "label") if raw.get("label") else None, slices, axis,
                 str(raw.get("id") or first.name.split(".")[0]), str(raw.get("site") or ""))


def resolve_within(p, root: Path, where: str) -> Path:
    """A datalist path: absolute paths are taken as written (the user typed them); relative ones
    must stay inside the datalist's folder — a datalist from elsewhere cannot reach ``../../``."""
    q = Path(p).expanduser()
    if q.is_absolute():
        return q
    resolved = (root / q).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise MedTransferError(f"{where}: '{p}' points outside the datalist's folder; move the file "
                               f"under {root} or write its absolute path")
    return root / q


def parse_modality(raw, path="datalist"):
    """'MR' | 'CT' | 'auto', or a tuple with one per image channel (a list, or MSD's
    ``{"0": "FLAIR", "1": "T1w"}``). Any MR sequence name or PET means intensity-normalised
    ('MR' preset); only CT has absolute units."""
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0)]
    if isinstance(raw, list):
        mods = tuple(parse_modality(m, path) for m in raw)
        if "auto" in mods:
            raise _err(path, "per-channel modalities must each be named (MR sequence, CT or PET)")
        return mods[0] if len(mods) == 1 else mods
    name = str(raw).strip().upper()
    if name in ("CT",):
        return "CT"
    if name in ("AUTO", ""):
        return "auto"
    if name in ("MR", "MRI", "PET", "PT") or name.startswith(("T1", "T2", "FLAIR", "DWI", "ADC", "PD")):
        return "MR"
    raise _err(path, f"'modality' must be MR (or an MR sequence name), CT, PET or auto, not {raw!r}")


def load_datalist(path) -> Datalist:
    """Read and validate a ``dataset.json``.

    Example:
        >>> dl = load_datalist("dataset.json")  # doctest: +SKIP
        >>> cases = dl.load_cases()             # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise MedTransferError(f"datalist '{path}' does not exist; give the path to a dataset.json "
                               f"(run 'medtransfer sampledata' for an example)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _err(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _err(path, "must be a JSON object with 'labels' and 'training'")
    labels_raw = _parse_labels(data.get("labels"), path)
    colors = data.get("colors") or {}
    if not isinstance(colors, dict):
        raise _err(path, "'colors' must map label values to [r, g, b]")
    terminology = data.get("terminology") or {}
    if not isinstance(terminology, dict) or not all(isinstance(v, str) for v in terminology.values()):
        raise _err(path, "'terminology' must map label values to Slicer terminology strings")
    labels = []
    for i, (value, name) in enumerate(labels_raw):
        c = colors.get(str(value))
        if c is not None:
            if (not isinstance(c, list) or len(c) != 3
                    or not all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in c)):
                raise _err(path, f"colors[{value}] must be [r, g, b] with values in 0..1")
            color = tuple(float(x) for x in c)
        else:
            color = default_color(i)
        labels.append(Label(value, name, color, terminology.get(str(value), "")))
    modality = parse_modality(data.get("modality", "auto"), path)
    training = data.get("training")
    if not isinstance(training, list) or not training:
        raise _err(path, "'training' must be a non-empty list of {\"image\", \"label\"} entries")
    root = path.parent
    entries = [_parse_entry(e, root, path, i, "training", True) for i, e in enumerate(training)]
    ids = [e.case_id for e in entries]
    for i, e in enumerate(entries):
        if ids.count(e.case_id) > 1:
            e.case_id = f"{e.case_id}_{i}"
    test = [_parse_entry(e, root, path, i, "test", False) for i, e in enumerate(data.get("test") or [])]
    return Datalist(labels, entries, modality, path, test)
