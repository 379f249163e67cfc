"""Screenshots/ from real results: the module's output nodes in an MRML scene, rendered offscreen
with VTK (no Slicer application needed).

- ``scene_prediction_3d.png``: the Colin27 T1 (an axial plane) with the predicted
  structures as 3D surfaces — the segmentation node ``slicer_bridge.predict_to_nodes`` creates
  (what Apply does), its closed-surface representation made by Slicer's segmentation converters.
- ``learning_curve.png``: the learning-curve table node and plot-chart series that
  ``slicer_bridge.learning_curve_nodes`` builds while training (what the Train panel shows),
  drawn with VTK's chart classes from that table.

Usage (after ``medtransfer demo --out runs/demo``, which trains the model it shows)::

    .venv/bin/python bench/screenshots.py --model runs/demo/model --out Screenshots
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slicer  # noqa: E402
import vtk  # noqa: E402

from MedTransferLib import read_case, sample_data  # noqa: E402
from MedTransferLib.package.store import ModelPackage  # noqa: E402
from MedTransferLib.slicer import bridge as sb  # noqa: E402


def _write_png(window, path: Path) -> None:
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    tmp = path.with_name(f"tmp-{path.name}")
    writer.SetFileName(str(tmp))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    tmp.replace(path)


def _slice_actor(volume_node, axis: int, index: int, window: float, level: float):
    """One plane of the volume (voxel axis 0=i, 1=j, 2=k) placed in RAS by its IJK→RAS matrix."""
    image = volume_node.GetImageData()
    extent = list(image.GetExtent())
    extent[2 * axis] = extent[2 * axis + 1] = index
    voi = vtk.vtkExtractVOI()   # the one plane, still in voxel coordinates
    voi.SetInputData(image)
    voi.SetVOI(*extent)
    wl = vtk.vtkImageMapToWindowLevelColors()
    wl.SetInputConnection(voi.GetOutputPort())
    wl.SetWindow(window)
    wl.SetLevel(level)
    wl.SetOutputFormatToRGB()
    wl.Update()
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputConnection(wl.GetOutputPort())
    actor.GetMapper().SliceFacesCameraOff()
    actor.GetMapper().SliceAtFocalPointOff()
    actor.GetMapper().SetOrientation(axis)
    actor.SetDisplayExtent(extent)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    actor.SetUserMatrix(matrix)
    return actor


def render_scene(volume_node, segmentation_node, path: Path, size=(1000, 800)) -> None:
    import numpy as np

    arr = sb.node_array(volume_node)
    lo, hi = np.percentile(arr, (1, 99.5))
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.09, 0.12)
    segmentation_node.CreateClosedSurfaceRepresentation()
    seg = segmentation_node.GetSegmentation()
    bounds = [1e9, -1e9] * 3
    for n in range(seg.GetNumberOfSegments()):
        segment_id = seg.GetNthSegmentID(n)
        poly = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(segment_id, poly)
        if poly.GetNumberOfPoints() == 0:
            continue
        b = poly.GetBounds()
        bounds = [min(bounds[i], b[i]) if i % 2 == 0 else max(bounds[i], b[i]) for i in range(6)]
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputData(poly)
        smooth.SetNumberOfIterations(15)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*seg.GetNthSegment(n).GetColor())
        actor.GetProperty().SetSpecular(0.3)
        renderer.AddActor(actor)
    centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    below = ras_to_ijk.MultiplyPoint((centre[0], centre[1], bounds[4] + 0.35 * (bounds[5] - bounds[4]), 1.0))
    # an axial plane through the lower third of the structures: the voxel axis closest to RAS z
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    axis_z = max(range(3), key=lambda a: abs(ijk_to_ras.GetElement(2, a)))
    renderer.AddActor(_slice_actor(volume_node, axis_z, int(round(below[axis_z])), hi - lo, (hi + lo) / 2))
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(centre[0] - 150, centre[1] + 170, centre[2] + 260)   # left-anterior-superior
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera(bounds)
    camera.Zoom(1.25)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    _write_png(window, path)


def render_learning_curve(table_node, chart_node, path: Path, size=(900, 500)) -> None:
    """Draw the chart node's series (columns of the learning-curve table node) with vtkChartXY."""
    view = vtk.vtkContextView()
    view.GetRenderer().SetBackground(1, 1, 1)
    view.GetRenderWindow().SetOffScreenRendering(1)
    view.GetRenderWindow().SetSize(*size)
    chart = vtk.vtkChartXY()
    view.GetScene().AddItem(chart)
    chart.SetShowLegend(True)
    chart.SetTitle(chart_node.GetTitle())
    chart.GetAxis(vtk.vtkAxis.BOTTOM).SetTitle(chart_node.GetXAxisTitle())
    chart.GetAxis(vtk.vtkAxis.LEFT).SetTitle(chart_node.GetYAxisTitle())
    table = table_node.GetTable()
    colours = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (213, 94, 0), (204, 121, 167)]
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(i)
        line = chart.AddPlot(vtk.vtkChart.LINE)
        line.SetInputData(table, series.GetXColumnName(), series.GetYColumnName())
        line.SetColor(*colours[i % len(colours)], 255)
        line.SetWidth(2.5)
        line.SetLabel(series.GetYColumnName().replace("_", " "))
        line.SetMarkerStyle(vtk.vtkPlotPoints.CIRCLE)
    _write_png(view.GetRenderWindow(), path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/demo/model")
    ap.add_argument("--out", default="Screenshots")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    package = ModelPackage.load(a.model)
    scene = slicer.vtkMRMLScene()
    sb.segmentations_logic(scene)
    image = Path(sample_data()).parent / "ch2.nii.gz"
    volume = sb.case_to_volume_node(scene, read_case(image), "Colin27 T1")
    seg, volumes, _ = sb.predict_to_nodes(volume, package)
    render_scene(volume, seg, out / "scene_prediction_3d.png")
    history = package.manifest.get("history") or []
    table, chart = sb.learning_curve_nodes(scene, history)
    render_learning_curve(table, chart, out / "learning_curve.png")
    print(f"wrote {out / 'scene_prediction_3d.png'} and {out / 'learning_curve.png'} "
          f"({len(history)} epochs, {len(sb.table_node_rows(volumes))} structures) in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main())
