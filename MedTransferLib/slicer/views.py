"""Slice views ↔ a volume's voxels: which voxel axis a view steps along, which slice it shows,
and moving it to a slice.

Views show the scene's world coordinates (RAS); a volume placed under a transform in the
Transforms module (registered, not hardened) keeps its voxels in its own RAS and is shown where
the transform puts it. Every mapping here goes through that transform (Slicer's
``vtkMRMLTransformNode.GetTransformBetweenNodes``; linear or not), so a transformed volume is
painted, counted and shown on the slices the user sees."""

from __future__ import annotations

import numpy as np


def _between(source, target):
    """``vtkGeneralTransform`` from ``source``'s coordinates to ``target``'s (transform nodes;
    None is the world)."""
    import slicer
    import vtk

    out = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source, target, out)
    return out


def world_to_volume(volume_node):
    """The transform from world RAS to ``volume_node``'s own RAS (identity without a transform)."""
    return _between(None, volume_node.GetParentTransformNode())


def volume_to_world(volume_node):
    return _between(volume_node.GetParentTransformNode(), None)


def view_axis(volume_node, slice_node=None) -> int:
    """The voxel axis of ``volume_node`` a slice view steps along: the one closest to the view's
    normal (taken into the volume's own RAS at the view's centre). ``slice_node`` None: the Red
    view's, or, in a scene without one, the patient's superior axis (the Red view's default).
    Painting in the Red view paints slices along this axis whatever the volume's voxel order: k
    for a volume stored axially, another axis for one stored sagittally or coronally."""
    import vtk

    if slice_node is None and volume_node.GetScene() is not None:
        slice_node = volume_node.GetScene().GetSingletonNode("Red", "vtkMRMLSliceNode")
    if slice_node is None:
        origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    else:
        m = slice_node.GetSliceToRAS()
        origin = [m.GetElement(r, 3) for r in range(3)]
        normal = [m.GetElement(r, 2) for r in range(3)]
    to_volume = world_to_volume(volume_node)
    a = np.array(to_volume.TransformPoint(origin))
    b = np.array(to_volume.TransformPoint([o + n for o, n in zip(origin, normal)]))
    direction = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(direction)
    columns = np.array([[direction.GetElement(r, c) for c in range(3)] for r in range(3)])
    return int(np.argmax(np.abs(columns.T @ (b - a))))


def slice_index_in_view(volume_node, slice_node, axis: int | None = None) -> int:
    """The index along voxel ``axis`` of ``volume_node`` (None: :func:`view_axis`) of the slice a
    slice view shows (its plane's origin, from world RAS to the volume's IJK)."""
    import vtk

    axis = view_axis(volume_node, slice_node) if axis is None else axis
    origin = [slice_node.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    m = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(m)
    ijk = m.MultiplyPoint(list(world_to_volume(volume_node).TransformPoint(origin)) + [1.0])
    return int(round(ijk[axis]))


def show_slice(volume_node, slice_node, k: int, axis: int | None = None) -> None:
    """Move a slice view to slice ``k`` (along voxel ``axis``; None: :func:`view_axis`) of
    ``volume_node``, through the middle of the volume's other two axes."""
    import vtk

    axis = view_axis(volume_node, slice_node) if axis is None else axis
    dims = volume_node.GetImageData().GetDimensions()
    ijk = [(d - 1) / 2.0 for d in dims] + [1.0]
    ijk[axis] = float(k)
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    slice_node.JumpSliceByOffsetting(*volume_to_world(volume_node).TransformPoint(m.MultiplyPoint(ijk)[:3]))
