"""PNG overlays of a label map on slices (SimpleITK writes the PNG; no plotting library)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedTransferLib.core.case import Geometry
from MedTransferLib.core.files import atomic_path


def _display_slice(volume: np.ndarray, k: int, geometry: Geometry) -> np.ndarray:
    """Axial slice ``k`` oriented radiologically: anterior up, patient right on the left."""
    sl = volume[k]  # rows j, columns i
    ras = geometry.ijk_to_ras()[:3, :3]
    if ras[1, 1] > 0:   # j runs towards anterior → put anterior at the top
        sl = sl[::-1]
    if ras[0, 0] > 0:   # i runs towards patient right → right on the viewer's left
        sl = sl[:, ::-1]
    return sl


def overlay_png(path, image: np.ndarray, label: np.ndarray, geometry: Geometry, labels, slices,
                reference: np.ndarray | None = None, scale: int = 2) -> Path:
    """Tile the given axial slices: image with filled prediction (and reference outline)."""
    import SimpleITK as sitk

    lo, hi = np.percentile(image, (1, 99.5))
    tiles = []
    for k in slices:
        grey = np.clip((_display_slice(image, k, geometry) - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        lab = _display_slice(label, k, geometry)
        ref = _display_slice(reference, k, geometry) if reference is not None else None
        for spec in labels:
            colour = np.asarray(spec.color)
            m = lab == spec.value
            rgb[m] = 0.45 * rgb[m] + 0.55 * colour
            if ref is not None:
                r = ref == spec.value
                edge = r & ~(np.roll(r, 1, 0) & np.roll(r, -1, 0) & np.roll(r, 1, 1) & np.roll(r, -1, 1))
                rgb[edge] = 1.0
        rgb = np.kron(rgb, np.ones((scale, scale, 1)))
        tiles.append(rgb)
        tiles.append(np.zeros((rgb.shape[0], 4, 3)))
    mosaic = (np.concatenate(tiles[:-1], axis=1) * 255).astype(np.uint8)
    img = sitk.GetImageFromArray(mosaic, isVector=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp))
    return path
