"""Reading images and label maps (NIfTI, NRRD, MHA, DICOM series) into :class:`Case`, and writing
label maps back in the input's exact geometry. SimpleITK does the file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedTransferLib.core.case import IGNORE, Case, Geometry
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.files import atomic_path

SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, or a folder holding one DICOM series"
WRITTEN = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")   # what a volume is written as


def check_volume_name(path, what: str = "--out") -> None:
    """Refuse, before any work, a volume output whose name gives no format to write."""
    if not str(path).endswith(WRITTEN):   # ITK reads the format from the lower-case ending
        raise MedTransferError(f"{what} '{path}': a volume is written as {', '.join(WRITTEN)}; end the "
                               f"file name with one of those")


def _sitk():
    import SimpleITK as sitk

    return sitk


def geometry_of(img) -> Geometry:
    return Geometry(tuple(int(s) for s in img.GetSize()), tuple(float(s) for s in img.GetSpacing()),
                    tuple(float(o) for o in img.GetOrigin()), tuple(float(d) for d in img.GetDirection()))


def _read_sitk(path: Path, what: str):
    sitk = _sitk()
    if not path.exists():
        raise MedTransferError(f"{what} '{path}' does not exist; check the path (relative paths in a "
                               f"datalist are relative to the datalist's folder)")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise MedTransferError(f"{what} '{path}' is a folder with no DICOM series; give a "
                                       f"file ({SUPPORTED})")
            if len(series) > 1:
                raise MedTransferError(f"{what} '{path}' holds {len(series)} DICOM series; put each "
                                       f"series in its own folder")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except MedTransferError:
        raise
    except RuntimeError as exc:
        raise MedTransferError(f"{what} '{path}' could not be read (truncated, corrupt or not an "
                               f"image? {_itk_reason(str(exc))}); re-export it as {SUPPORTED}") from None


def _itk_reason(text: str) -> str:
    """What an ITK read error says, for a user: its ``ERROR:`` line without the C++ source
    location and object address, and its last line (the reader's own words) if that adds to it."""
    import re

    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    error = next((line for line in lines if "ERROR:" in line), "")
    reason = re.sub(r"\(0x[0-9a-fA-F]+\)", "", error.split("ERROR:", 1)[1]).strip() if error else ""
    last = lines[-1] if lines else ""
    if last and last != error and "ERROR:" not in last:
        reason = f"{reason} … {last}" if reason else last
    return reason[:240] or "no reason given"


def _nifti_truncated(path: Path) -> str | None:
    """Why a .nii/.nii.gz file is shorter than its header says, or None.

    ITK reads a truncated NIfTI without complaint (missing voxels become zeros), so the data
    length is checked against the header here.
    """
    import gzip
    import struct

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            if len(head) < 348:
                return "header is incomplete"
            for endian in "<>":
                size = struct.unpack(endian + "i", head[:4])[0]
                if size == 348:
                    dims = struct.unpack(endian + "8h", head[40:56])
                    bitpix = struct.unpack(endian + "h", head[72:74])[0]
                    offset = int(struct.unpack(endian + "f", head[108:112])[0])
                    break
                if size == 540:
                    bitpix = struct.unpack(endian + "h", head[14:16])[0]
                    dims = struct.unpack(endian + "8q", head[16:80])
                    offset = struct.unpack(endian + "q", head[168:176])[0]
                    break
            else:
                return None  # not a NIfTI header we know: let ITK judge
            n = int(np.prod([max(1, d) for d in dims[1:1 + max(1, min(7, dims[0]))]]))
            needed = offset + n * bitpix // 8
            have = len(head)
            while have < needed:
                block = f.read(min(1 << 22, needed - have))
                if not block:
                    break
                have += len(block)
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        return f"compressed stream is broken ({type(exc).__name__})"
    return None if have >= needed else f"holds {have} of {needed} bytes"


MAX_CHANNELS = 8   # a 4D file with more volumes is a time series, not channels


def read_image(path, what: str = "image") -> tuple[np.ndarray, Geometry]:
    """Read a 3D scalar image; return ``(array (k, j, i), geometry)``.

    Example:
        >>> arr, geo = read_image("ch2.nii.gz")  # doctest: +SKIP
    """
    path = Path(path)
    img = _read_sitk(path, what)
    _check_stream(path, what)
    return _checked(path, what, img)


def read_channels(path, what: str = "image") -> list[tuple[np.ndarray, Geometry]]:
    """Read a 3D image, or a 4D file whose 4th axis holds co-registered channels (the Medical
    Segmentation Decathlon's layout: FLAIR, T1w, T1gd, T2w of one case in one NIfTI), as a list
    of ``(array (k, j, i), geometry)``, one per channel."""
    path = Path(path)
    img = _read_sitk(path, what)
    _check_stream(path, what)
    if img.GetDimension() != 4 or img.GetNumberOfComponentsPerPixel() != 1:
        return [_checked(path, what, img)]
    x, y, z, n = img.GetSize()
    if n > MAX_CHANNELS:
        raise MedTransferError(f"{what} '{path}' is a 4D image of size {img.GetSize()}: {n} volumes are "
                               f"a series, not channels (at most {MAX_CHANNELS}); give the 3D volume to "
                               f"use, or one file per channel")
    sitk = _sitk()
    volumes = [sitk.Extract(img, [x, y, z, 0], [0, 0, 0, c]) for c in range(n)]   # 3D, scalar, not empty
    return [(sitk.GetArrayFromImage(v), geometry_of(v)) for v in volumes]


def stored_voxels(path) -> tuple[int, int] | None:
    """``(voxels per channel, channels)`` of an image file from its header alone (a 4D file's
    volumes are channels, :func:`read_channels`), or None where the header cannot tell (a DICOM
    folder, an unreadable file: reading it later says why)."""
    path = Path(path)
    if not path.is_file():
        return None
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = [int(s) for s in reader.GetSize()]
    channels = reader.GetNumberOfComponents() * (size[3] if len(size) == 4 else 1)
    return int(np.prod(size[:3])), channels


def _check_stream(path: Path, what: str) -> None:
    if path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        why = _nifti_truncated(path)
        if why:
            raise MedTransferError(f"{what} '{path}' could not be read: the file is truncated or "
                                   f"corrupt ({why}); copy or export it again")


def _checked(path: Path, what: str, img) -> tuple[np.ndarray, Geometry]:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MedTransferError(f"{what} '{path}' has {img.GetNumberOfComponentsPerPixel()} "
                               f"components per voxel (colour or vector image); give one scalar "
                               f"3D volume per file")
    if img.GetDimension() != 3:
        kind = "2D" if img.GetDimension() == 2 else f"{img.GetDimension()}D"
        fix = ("stack the slices into a 3D volume" if img.GetDimension() == 2
               else "split it into 3D volumes (one per time point or channel)")
        raise MedTransferError(f"{what} '{path}' is a {kind} image of size {img.GetSize()}; "
                               f"MedTransfer needs a 3D volume: {fix}")
    if min(img.GetSize()) < 1:
        raise MedTransferError(f"{what} '{path}' is empty (size {img.GetSize()})")
    return _sitk().GetArrayFromImage(img), geometry_of(img)


def read_case(image, label=None, case_id: str | None = None, labelled_slices=None,
              slice_axis: int = 2, label_values=None) -> Case:
    """Read an image (and optionally its label map) into a :class:`Case`.

    ``image`` may be a list of files on one voxel grid (T1 + T2, CT + PET), or a 4D file of
    channels (:func:`read_channels`): the case then holds a ``(C, k, j, i)`` array, one channel per
    file or per volume of the 4D file, in that order.

    ``labelled_slices``: indices along voxel axis ``slice_axis`` that were labelled; every other
    slice becomes :data:`IGNORE`. ``label_values``: the values the label map may hold (others are
    an error); 0 is background and 255 means unlabelled.

    Example:
        >>> case = read_case("ch2.nii.gz", "labels.nii.gz", labelled_slices=[50, 60])  # doctest: +SKIP
    """
    paths = list(image) if isinstance(image, (list, tuple)) else [image]
    if not paths:
        raise MedTransferError("no image given")
    channels, geo = [], None
    for path, (arr, g) in ((p, c) for p in paths for c in read_channels(p, "image")):
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.number):
            raise MedTransferError(f"image '{path}' has non-numeric voxels ({arr.dtype})")
        finite = np.isfinite(arr)
        if not finite.all():
            raise MedTransferError(f"image '{path}' has {int((~finite).sum())} NaN/Inf voxels; fix or "
                                   f"mask them before use (e.g. replace with the background value)")
        if geo is None:
            geo = g
        elif geo.matches(g):
            raise MedTransferError(f"image '{path}' is not on the voxel grid of '{paths[0]}' "
                                   f"({'; '.join(geo.matches(g))}); the images of one case (T1 + T2, "
                                   f"CT + PET) must share a grid: resample them onto the first "
                                   f"(Slicer: Resample Scalar/Vector/DWI Volume)")
        with np.errstate(over="ignore"):
            arr32 = arr.astype(np.float32, copy=False)
        if arr32.dtype != arr.dtype and not np.isfinite(arr32).all():
            raise MedTransferError(f"image '{path}' has values beyond the float32 range (±3.4e38; here "
                                   f"{float(np.min(arr)):.3g} … {float(np.max(arr)):.3g}); rescale it to "
                                   f"physical units (HU, or a normal MR range) before use")
        channels.append(arr32)
    image = paths[0]
    case = Case(channels[0] if len(channels) == 1 else np.stack(channels), geo, None,
                case_id or Path(str(image)).name.split(".")[0],
                {"image_path": str(image) if len(paths) == 1 else [str(p) for p in paths]})
    if label is None:
        return case
    lab, lgeo = read_image(label, "label map")
    problems = geo.matches(lgeo)
    if problems:
        raise MedTransferError(f"label map '{label}' is not on the image's voxel grid ("
                               f"{'; '.join(problems)} for label vs image '{image}'); resample the "
                               f"label onto the image (Slicer: Resample Image (BRAINS) with "
                               f"nearest neighbour, or export the segmentation with the image as "
                               f"reference)")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise MedTransferError(f"label map '{label}' has non-integer values; save it as an "
                                   f"integer label map")
    lab = lab.astype(np.int64)
    if label_values is not None:
        allowed = set(int(v) for v in label_values) | {0, IGNORE}
        present = set(np.unique(lab).tolist())
        extra = sorted(present - allowed)
        if extra:
            raise MedTransferError(f"label map '{label}' holds values {extra[:10]} that the "
                                   f"datalist's 'labels' do not name (named: {sorted(allowed - {IGNORE})}); "
                                   f"add them to 'labels' or relabel them to 0")
    if labelled_slices is not None:
        idx = [int(s) for s in labelled_slices]
        n = geo.size[slice_axis]
        bad = [s for s in idx if not 0 <= s < n]
        if bad:
            raise MedTransferError(f"labelled_slices {bad[:5]} for '{label}' are outside 0..{n - 1} "
                                   f"along voxel axis {slice_axis}; give slice indices (from 0) "
                                   f"along the entry's 'slice_axis' (default 2)")
        keep = np.zeros(n, bool)
        keep[idx] = True
        shape = [1, 1, 1]
        shape[2 - slice_axis] = n
        lab = np.where(keep.reshape(shape), lab, IGNORE)
    case.label = lab.astype(np.uint8 if lab.max() <= 255 else np.int32, copy=False)
    case.meta["label_path"] = str(label)
    return case


def write_label(path, label: np.ndarray, geometry: Geometry) -> Path:
    """Write a label map in ``geometry`` (atomically); the format follows the file name."""
    check_volume_name(path, "label map")
    sitk = _sitk()
    dtype = np.uint8 if label.max(initial=0) <= 255 else np.uint16
    img = sitk.GetImageFromArray(np.ascontiguousarray(label.astype(dtype)))
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), True)
    return path


def write_image(path, image: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write a scalar volume in ``geometry`` (atomically; ``compress=False`` for exchange files
    another process reads at once, where gzip costs more than the disk it saves)."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(image))
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)
    return Path(path)
