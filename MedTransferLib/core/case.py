"""The ``Case``: one image with its exact geometry, an optional label map and its metadata.

Every module speaks ``Case``; only :mod:`MedTransferLib.data.io` and :mod:`MedTransferLib.slicer.mrml` know where
cases come from. Arrays are in SimpleITK/numpy order ``(k, j, i)``; geometry follows ITK (LPS
world coordinates, ``spacing``/``origin`` in ``(i, j, k)`` order, ``direction`` a row-major 3×3
whose columns are the i, j, k axes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255  # label value meaning "not labelled" in sparse label maps


def _mm(values) -> tuple:
    """Values as a user reads them in a message: plain numbers to 4 decimals (not numpy reprs)."""
    return tuple(round(float(v), 4) for v in values)


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D image: ``size`` (i, j, k), spacing in mm, LPS origin and direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix mapping voxel indices (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction, float).reshape(3, 3) * np.asarray(self.spacing, float)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4×4 matrix mapping voxel indices to RAS millimetres (Slicer's world)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray, size) -> "Geometry":
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, float)
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing
        return cls(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in lps[:3, 3]), tuple(float(d) for d in direction.ravel()))

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def matches(self, other: "Geometry", tol: float = 1e-4) -> list[str]:
        """The ways ``other`` differs from this grid (empty when they are the same grid)."""
        problems = []
        if tuple(self.size) != tuple(other.size):
            problems.append(f"size {tuple(other.size)} vs {tuple(self.size)}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = max(1.0, float(np.abs(a).max()))
            if not np.allclose(a, b, atol=tol * scale, rtol=0):
                problems.append(f"{name} {_mm(b)} vs {_mm(a)}")
        return problems


@dataclass
class Case:
    """An image (float32, ``(k, j, i)``, or ``(C, k, j, i)`` for C co-registered images such as
    T1 + T2), its geometry and, for training, a label map.

    ``label`` holds the datalist's label values, with :data:`IGNORE` (255) where nothing is
    labelled; ``labelled`` is derived from it.
    """

    image: np.ndarray
    geometry: Geometry
    label: np.ndarray | None = None
    case_id: str = "case"
    meta: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return 1 if self.image.ndim == 3 else int(self.image.shape[0])

    @property
    def labelled(self) -> np.ndarray | None:
        return None if self.label is None else self.label != IGNORE

    def labelled_slices(self, axis: int) -> list[int]:
        """Indices along voxel axis ``axis`` (0=i, 1=j, 2=k) that carry any label."""
        if self.label is None:
            return []
        arr_axis = 2 - axis
        other = tuple(a for a in range(3) if a != arr_axis)
        return [int(s) for s in np.nonzero((self.label != IGNORE).any(axis=other))[0]]
