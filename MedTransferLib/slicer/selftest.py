"""The module's self-test, run by Slicer's ctest (``MedTransferTest``) and by hand from the
Reload & Test button.

It installs nothing (Slicer answers every confirmation with "yes" in testing mode, so a test
that could install would do so silently). It always checks what needs no PyTorch — the panel's
training list on MRHead with a structure painted on a few slices, the segments and labelled
slices it counts, the dependency report, and that the installer refuses to run in testing
mode. With the dependencies installed it also trains a tiny model in the background child
process, applies it, and checks the segmentation and tables; without them it says that those
checks were skipped and why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

import numpy as np

from MedTransferLib.core.errors import MedTransferError

EVERY = 12   # paint every 12th axial slice


def paint_bright_structure(volume):
    """A segmentation of ``volume`` with one segment, 'bright', painted on every 12th slice only
    (the brightest tenth of each of those slices), the way a user paints a few slices."""
    import slicer

    from MedTransferLib.core.labels import Label
    from MedTransferLib.slicer import bridge

    arr = slicer.util.arrayFromVolume(volume)
    mask = np.zeros(arr.shape, np.uint8)
    for k in range(0, arr.shape[0], EVERY):
        mask[k][arr[k] > np.percentile(arr[k], 90)] = 1
    geometry = bridge.node_geometry(volume)
    return bridge.label_to_segmentation_node(volume.GetScene(), mask, geometry, [Label(1, "bright", (1.0, 0.8, 0.1))],
                                             "bright structure", reference_volume=volume), mask


def run(test, logic, sample=None) -> dict:
    """Run the checks on ``test`` (a unittest.TestCase); returns what ran, for the harness."""
    import slicer

    if sample is None:
        import SampleData

        sample = SampleData.downloadSample
    ran = {"torch_free": False, "trained": False, "skipped": ""}
    volume = sample("MRHead")
    before = slicer.util.arrayFromVolume(volume).copy()
    seg, mask = paint_bright_structure(volume)
    pairs = logic.newTrainingList()
    test.assertEqual(pairs.add_all(slicer.mrmlScene), [])
    test.assertEqual(pairs.pairs(), [(volume, seg)])
    test.assertEqual(pairs.segments(), (["bright"], {}))
    painted = int(mask.any(axis=(1, 2)).sum())
    row = pairs.table(["bright"], "ignore")[0]
    test.assertEqual(row["labelled"], f"{painted} / {mask.shape[0]}")
    ran["torch_free"] = True

    missing = logic.missingDependencies()
    if missing:
        test.assertIn("Missing", logic.dependencyStatus())
        with test.assertRaises(MedTransferError):   # testing mode: never installs by itself
            logic.ensureDependencies(askUser=True)
        ran["skipped"] = ("dependencies not installed (" + ", ".join(n.name for n in missing)
                          + "): training and prediction checks skipped")
        logging.warning("MedTransfer self-test: " + ran["skipped"])
        return ran

    out = tempfile.mkdtemp(prefix="MedTransferSelfTest-")
    try:
        task = logic.trainInBackground(pairs.pairs(), ["bright"], out, epochs=1, steps_per_epoch=2,
                                       weights="none", strategy="finetune", batch_size=2)
        test.assertEqual(task.wait(timeout=900), "finished", task.error)
        table, _chart = logic.learningCurve(task.progress.history)
        test.assertEqual(table.GetTable().GetNumberOfRows(), 1)
        [(segmentation, volumes, metrics)] = logic.predict([volume], task.package, seg)
        test.assertEqual(logic.segmentNames(segmentation), ["bright"])
        test.assertEqual(volumes.GetTable().GetNumberOfRows(), 1)
        test.assertIsNotNone(metrics)
        test.assertIn("bright", logic.describeModel(task.package))
        test.assertEqual(slicer.util.arrayFromVolume(volume).tobytes(), before.tobytes())   # input untouched
    finally:
        shutil.rmtree(out, ignore_errors=True)   # the run and its model: nothing left behind
    ran["trained"] = True
    logging.info("MedTransfer self-test passed")
    return ran
