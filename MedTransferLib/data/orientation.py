"""Voxel order: one anatomy stored in different voxel orders reaches the network in one order.

The same head can be stored with voxel axis i running right to left or left to right, and with k
along the body or across it (a sagittal acquisition; a DICOM series loaded in Slicer against a
NIfTI written by a converter that flips rows). A network reads the voxel array, so to it such
volumes are mirrored or transposed images: a model trained on one order segmented the sample MRI
stored in another at a mean Dice of 0.001 (``bench/orientation.py``).

So a model keeps the voxel order it was trained in — the nearest axis-aligned orientation of its
first training case, as SimpleITK names it (a three-letter code such as ``LPS``: where each voxel
axis points from) — and every case in another order is brought into it before the network sees it,
in training and in prediction, by reversing and transposing its arrays: nothing is resampled,
every voxel is kept, and a prediction goes back into the case's own order and grid. An oblique
volume is brought to its nearest order; its obliquity stays.

SimpleITK's ``DICOMOrient`` does the same to an image; it is not used on the arrays because a
case's image may hold several channels and its label map the value that marks unlabelled voxels:
numpy reverses and transposes both in one pass, and the tests check the result against
``DICOMOrient``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from MedTransferLib.core.case import Case, Geometry


def orientation_code(geometry: Geometry) -> str:
    """The nearest axis-aligned orientation of a grid, as SimpleITK's three-letter code."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in geometry.direction])


@dataclass(frozen=True)
class Reorientation:
    """From a case's own voxel order (``source``) to a model's: voxel axis ``t`` of the new order
    is the source's axis ``axes[t]``, reversed where ``flips[t]``; ``geometry`` is the new grid
    (the same voxels in the same places)."""

    source: Geometry
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    geometry: Geometry

    def _order(self, lead: int) -> list[int]:
        # array axes are (..., k, j, i): new array axis 2 - t holds source voxel axis axes[t]
        return list(range(lead)) + [lead + 2 - self.axes[2 - p] for p in range(3)]

    def forward(self, array: np.ndarray) -> np.ndarray:
        """An array ``(..., k, j, i)`` in the source order, in the new one (a contiguous copy)."""
        lead = array.ndim - 3
        for t in range(3):
            if self.flips[t]:
                array = np.flip(array, lead + 2 - self.axes[t])
        return np.ascontiguousarray(np.transpose(array, self._order(lead)))

    def back(self, array: np.ndarray) -> np.ndarray:
        """An array in the new order, in the source order (a contiguous copy)."""
        lead = array.ndim - 3
        array = np.transpose(array, np.argsort(self._order(lead)))
        for t in range(3):
            if self.flips[t]:
                array = np.flip(array, lead + 2 - self.axes[t])
        return np.ascontiguousarray(array)

    def case(self, case: Case) -> Case:
        """``case`` in the new order: image and label map reordered, the same id."""
        return replace(case, image=self.forward(case.image), geometry=self.geometry,
                       label=None if case.label is None else self.forward(case.label))

    def slices_back(self, axis: int, slices) -> tuple[int, list[int]]:
        """Slices along the new order's voxel ``axis``: ``(source voxel axis, their indices there)``."""
        n = self.geometry.size[axis]
        return self.axes[axis], [n - 1 - s if self.flips[axis] else s for s in slices]

    def slices_forward(self, axis: int, slices) -> tuple[int, list[int]]:
        """Slices along the source's voxel ``axis``: ``(new voxel axis, their indices there)``;
        an index outside the volume stays outside it (for the check that names it)."""
        t = self.axes.index(axis)
        n = self.geometry.size[t]
        return t, [n - 1 - s if self.flips[t] and 0 <= s < n else s for s in slices]


def reorientation(geometry: Geometry, code: str) -> Reorientation | None:
    """How to bring a grid into the voxel order ``code``; None when it is in that order already."""
    import SimpleITK as sitk

    target = np.asarray(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code), float).reshape(3, 3)
    own = np.asarray(geometry.direction, float).reshape(3, 3)     # columns: voxel axes in LPS
    dots = own.T @ target                                          # [source axis, new axis]
    axes = max(itertools.permutations(range(3)), key=lambda p: sum(abs(dots[p[t], t]) for t in range(3)))
    flips = tuple(bool(dots[axes[t], t] < 0) for t in range(3))
    if axes == (0, 1, 2) and not any(flips):
        return None
    corner = np.zeros(3)        # the source voxel that becomes voxel (0, 0, 0)
    for t in range(3):
        corner[axes[t]] = geometry.size[axes[t]] - 1 if flips[t] else 0
    origin = geometry.ijk_to_lps() @ np.append(corner, 1.0)
    direction = np.stack([own[:, axes[t]] * (-1.0 if flips[t] else 1.0) for t in range(3)], axis=1)
    new = Geometry(tuple(int(geometry.size[a]) for a in axes), tuple(float(geometry.spacing[a]) for a in axes),
                   tuple(float(o) for o in origin[:3]), tuple(float(d) for d in direction.ravel()))
    return Reorientation(geometry, tuple(axes), flips, new)


def to_order(cases: list[Case], code: str) -> tuple[list[Case], list[Reorientation | None]]:
    """``cases`` in the voxel order ``code`` (those already in it unchanged), and each one's
    :class:`Reorientation` (None where unchanged). ``code`` empty: all unchanged (a model saved
    before models kept their order)."""
    turns = [reorientation(c.geometry, code) if code else None for c in cases]
    return [t.case(c) if t else c for c, t in zip(cases, turns)], turns
