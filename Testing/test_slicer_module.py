"""The Slicer module executed, not read (issue 16): MedTransfer/MedTransfer.py loaded as Slicer
loads it, its panel set up from MedTransfer.ui under a real Qt made to behave as PythonQt, real
MRML from slicer-core, real slicer.util, the real CLI in child processes started through a
PythonSlicer-like launcher. Testing/slicer_harness/README.md says what each stand-in follows and
what only a real Slicer can confirm.

Each test names a finding of the issue; each failed on the module as it was before the fix
(setup raised, Cancel left the interpreter running, exit/scene close broke the finish, Apply ran
torch in the GUI thread, selectors listed label maps, the learning rate took negative values,
two install dialogs in a row, ...).
"""

import os
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
pytest.importorskip("PyQt5")

from PyQt5 import QtCore  # noqa: E402
from slicer_harness.pythonqt import unwrap  # noqa: E402
from slicer_harness.scenes import all_gone, colin_pair, quick_training, tree_of  # noqa: E402

from MedTransferLib.slicer import bridge  # noqa: E402

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the PythonSlicer stand-in is a POSIX script")


def _task(h):
    return h.widget.panel.panel.task


def _busy(h):
    return h.widget.panel.panel.busy


def _nodes(scene, cls):
    col = scene.GetNodesByClass(cls)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def test_the_panel_starts_clean_lists_image_volumes_only_and_bounds_the_learning_rate(harness, colin_crop):
    h = harness
    h.load()
    h.enter()
    ui, p = h.ui, h.widget.logic.getParameterNode()
    volume, seg, labelmap, _ = colin_pair(h.scene, colin_crop)
    # paths: the model field is empty, not "."; runs go to a per-run folder under a real default
    assert ui.modelFolderPathLineEdit.currentPath == "" and p.modelFolder == ""
    assert Path(ui.outputFolderPathLineEdit.currentPath) == Path.home() / "MedTransfer" / "runs"
    # selectors: image volumes only, never the label map
    for name in ("pairVolumeSelector", "applyVolumesSelector"):
        listed = [unwrap(getattr(ui, name)).nodeFromIndex(i) for i in range(getattr(ui, name).nodeCount())]
        assert volume in listed and labelmap not in listed, name
    # the learning rate has a range: the spin box stops at it, and the parameter refuses what is outside
    assert ui.learningRateSpinBox.minimum == pytest.approx(1e-5) and ui.learningRateSpinBox.maximum == 1.0
    ui.learningRateSpinBox.value = -0.5
    assert p.learningRate == pytest.approx(1e-5)
    with pytest.raises(ValueError):
        p.learningRate = -0.5
    # nothing to do yet, and each disabled button says why
    assert not ui.trainButton.enabled and "Add a volume" in ui.trainButton.toolTip
    assert not ui.applyButton.enabled and not ui.cancelButton.enabled
    assert ui.setupStatusLabel.text == "Dependencies installed."


@pytest.mark.slow   # child processes
def test_a_new_users_path_add_all_train_cancel_train_apply_and_the_tables(harness, colin_crop):
    h = harness
    h.load()
    h.enter()
    ui = h.ui
    p = h.widget.logic.getParameterNode()
    volume, seg, _, painted = colin_pair(h.scene, colin_crop)
    before = bridge.node_array(volume).copy()

    h.click("addAllPairsButton")
    assert ui.pairsTableWidget.rowCount == 1
    assert unwrap(ui.pairsTableWidget).item(0, 2).text() == f"{len(painted)} / 36"
    assert list(p.segmentsToLearn) == ["Caudate_L", "Putamen_L"]
    ui.epochsSpinBox.value = 1

    # Train, then Cancel: the whole tree (launcher, interpreter) is gone within 5 s, no model
    quick_training(h.widget.logic, steps=500)
    h.click("trainButton")
    h.wait_for(lambda: _task(h).progress.step >= 1, 300, "the first training step")
    assert not ui.trainButton.enabled and ui.cancelButton.enabled
    tree = tree_of(_task(h).job.pid)
    assert len(tree) >= 2   # PythonSlicer and the interpreter it started
    run_dir = h.widget.panel.panel.last_run
    t0 = time.monotonic()
    h.click("cancelButton")
    h.wait_for(lambda: not _busy(h), 10, "the cancelled task to end")
    assert all_gone(tree, 5.0 - (time.monotonic() - t0)), "a process outlived Cancel by 5 s"
    assert _task(h).state == "cancelled" and "no model was written" in ui.statusLabel.text
    assert not (run_dir / "model").exists()

    # Train again: a model, its manifest, the learning curve shown in a plot layout
    quick_training(h.widget.logic, steps=2)
    h.click("trainButton")
    h.wait_for(lambda: not _busy(h), 600, "training")
    assert _task(h).state == "finished", _task(h).error
    assert ui.statusLabel.text.startswith("Model written to")
    assert Path(p.modelFolder).name == "model" and ui.modelFolderPathLineEdit.currentPath == p.modelFolder
    assert "Caudate_L, Putamen_L" in ui.manifestTextEdit.plainText
    [chart] = _nodes(h.scene, "vtkMRMLPlotChartNode")
    assert h.scene.GetFirstNodeByClass("vtkMRMLSelectionNode").GetActivePlotChartID() == chart.GetID()
    assert h.scene.GetFirstNodeByClass("vtkMRMLLayoutNode").GetViewArrangement() == \
        slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    assert chart.GetNumberOfPlotSeriesNodes() >= 1

    # Apply with a reference: a segmentation with the training segments, a volumes and a metrics table
    unwrap(ui.applyVolumesSelector).setCheckState(volume, QtCore.Qt.Checked)
    ui.referenceSegmentationSelector.setCurrentNode(seg)
    h.click("applyButton")
    h.wait_for(lambda: not _busy(h), 300, "Apply")
    assert _task(h).state == "finished", _task(h).error
    out = [s for s in _nodes(h.scene, "vtkMRMLSegmentationNode") if s.GetName() == "Colin MedTransfer"]
    assert len(out) == 1 and bridge.segment_names(out[0]) == ["Caudate_L", "Putamen_L"]
    tables = {t.GetName(): bridge.table_node_rows(t) for t in _nodes(h.scene, "vtkMRMLTableNode")}
    assert [r["structure"] for r in tables["Colin volumes"]] == ["Caudate_L", "Putamen_L"]
    assert {"dice", "hd95_mm"} <= set(tables["Colin metrics"][0])
    assert ui.statusLabel.text.startswith("Created Colin MedTransfer")
    # the volume is in the training list: its painted slices come back as painted (the default);
    # unchecked, the network alone (a 2-step network does not reproduce them)
    labels = bridge.labels_from_segments(seg, ["Caudate_L", "Putamen_L"])
    want = bridge.segmentation_to_label(seg, volume, labels)[painted]
    assert ui.guideCheckBox.checked and p.guideByPaintedSlices
    assert np.array_equal(bridge.segmentation_to_label(out[0], volume, labels)[painted], want)
    ui.guideCheckBox.checked = False
    assert not p.guideByPaintedSlices
    h.click("applyButton")
    h.wait_for(lambda: not _busy(h), 300, "Apply")
    alone = [s for s in _nodes(h.scene, "vtkMRMLSegmentationNode") if s.GetName() == "Colin MedTransfer"][-1]
    assert alone is not out[0]
    assert not np.array_equal(bridge.segmentation_to_label(alone, volume, labels)[painted], want)
    assert np.array_equal(bridge.node_array(volume), before)   # the input is never modified
    assert h.user.errors() == [] and h.user.questions() == []


@pytest.mark.slow   # child processes
def test_leaving_the_module_keeps_training_and_the_result_arrives(harness, colin_crop):
    h = harness
    h.load()
    h.enter()
    colin_pair(h.scene, colin_crop)
    quick_training(h.widget.logic, steps=3)
    h.ui.epochsSpinBox.value = 2
    h.click("addAllPairsButton")
    h.click("trainButton")
    h.exit()                                     # the user goes to another module
    h.wait_for(lambda: not _busy(h), 600, "training after leaving the module")
    p = h.widget.logic.getParameterNode()
    assert _task(h).state == "finished" and Path(p.modelFolder).name == "model"
    h.enter()                                    # and comes back: the model is there
    assert h.ui.modelFolderPathLineEdit.currentPath == p.modelFolder
    assert "Caudate_L" in h.ui.manifestTextEdit.plainText
    assert h.user.errors() == []


def _training(h, crop, steps=500, epochs=1, until=lambda task: task.progress.step >= 1):
    """The panel set up, a painted Colin27 pair added, and a training running (``until`` holds)."""
    h.load()
    h.enter()
    colin_pair(h.scene, crop)
    quick_training(h.widget.logic, steps=steps, extra=("--patience", "1000"))
    h.ui.epochsSpinBox.value = epochs
    h.click("addAllPairsButton")
    h.click("trainButton")
    h.wait_for(lambda: until(_task(h)), 300, "training to get going")


@pytest.mark.slow   # child processes
def test_coming_back_during_training_shows_the_running_job(harness, colin_crop):
    h = harness
    _training(h, colin_crop)
    h.exit()
    h.process(0.6)
    h.enter()
    h.process(0.6)
    assert not h.ui.trainButton.enabled and h.ui.cancelButton.enabled
    assert h.ui.statusLabel.text.startswith("Epoch ")
    h.click("cancelButton")
    h.wait_for(lambda: not _busy(h), 10)


@pytest.mark.slow   # child processes
def test_closing_the_scene_during_training_cancels_it_cleanly(harness, colin_crop):
    h = harness
    # short epochs, many of them: the learning-curve nodes exist when the scene goes
    _training(h, colin_crop, steps=2, epochs=1000, until=lambda task: len(task.progress.history) >= 1)
    h.wait_for(lambda: h.widget.panel.panel.curve[1] is not None, 10, "the learning curve")
    tree = tree_of(_task(h).job.pid)
    h.close_scene()
    h.wait_for(lambda: not _busy(h), 10, "the task to end after the scene closed")
    assert all_gone(tree, 5.0)
    h.process(1.5)                               # three more timer periods: no repeating errors
    assert _task(h).state == "cancelled" and h.user.errors() == []
    assert not h.widget.panel.timer.isActive()
    assert h.ui.pairsTableWidget.rowCount == 0


@pytest.mark.slow   # child processes
def test_module_cleanup_stops_the_timer_and_the_whole_tree(harness, colin_crop):
    h = harness
    _training(h, colin_crop)
    tree = tree_of(_task(h).job.pid)
    t0 = time.monotonic()
    h.widget.cleanup()                           # Slicer: module unloaded / application exit
    assert time.monotonic() - t0 < 6 and all_gone(tree, 1.0)
    assert not h.widget.panel.timer.isActive() and _task(h).state == "cancelled"


@pytest.mark.slow   # child processes
def test_apply_of_a_3d_model_runs_in_a_child_while_the_event_loop_keeps_ticking(harness, colin_crop, tmp_path):
    h = harness
    h.load()
    h.enter()
    volume, seg, _, _ = colin_pair(h.scene, colin_crop)
    task = h.widget.logic.trainInBackground([(volume, seg)], ["Caudate_L", "Putamen_L"], str(tmp_path / "run3d"),
                                            mode="3d", backbone="resnet18", weights="none", strategy="finetune",
                                            epochs=1, steps_per_epoch=1, batch_size=2, patch=32)
    assert task.wait(600) == "finished", task.error
    h.widget.logic.getParameterNode().modelFolder = task.package
    h.widget.logic.getParameterNode().mode = "3d"
    unwrap(h.ui.applyVolumesSelector).setCheckState(volume, QtCore.Qt.Checked)

    ticks = []
    clock = QtCore.QTimer()
    clock.setInterval(50)
    clock.timeout.connect(lambda: ticks.append(time.monotonic()))
    clock.start()
    t0 = time.monotonic()
    h.click("applyButton")
    h.wait_for(lambda: not _busy(h), 600, "the 3D prediction")
    elapsed = time.monotonic() - t0
    clock.stop()
    assert _task(h).state == "finished", _task(h).error
    assert "torch" not in _task(h).job.command()[0]
    rate = len(ticks) / elapsed
    gaps = np.diff([t0, *ticks])
    print(f"3D Apply: {elapsed:.1f} s, event loop at {rate:.1f} Hz, longest gap {gaps.max():.3f} s")
    assert elapsed > 1.0 and rate >= 5.0, f"the event loop ran at {rate:.1f} Hz (max gap {gaps.max():.2f} s)"
    assert [s.GetName() for s in _nodes(h.scene, "vtkMRMLSegmentationNode")].count("Colin MedTransfer") == 1


@pytest.mark.slow   # child processes
def test_advise_runs_in_a_child_and_fills_the_strategy(harness, colin_crop):
    h = harness
    h.load()
    h.enter()
    colin_pair(h.scene, colin_crop)
    h.click("addAllPairsButton")
    h.click("adviseButton")
    assert _task(h).kind == "advise" and _task(h).running     # started, not computed in the click
    h.wait_for(lambda: not _busy(h), 300, "the advisor")
    p = h.widget.logic.getParameterNode()
    assert _task(h).state == "finished", _task(h).error
    assert p.strategy == _task(h).outputs.strategy and p.strategy != "auto"
    assert h.ui.adviceLabel.text.startswith(p.strategy + ": ") and h.ui.strategyComboBox.currentText == p.strategy


@pytest.mark.slow   # child processes
def test_check_setup_runs_the_doctor_in_a_child_and_fills_devices_and_backbones(harness):
    h = harness
    h.load()
    h.enter()
    assert h.ui.backboneComboBox.count == 1           # before: the default only (no torch in Slicer)
    h.click("doctorButton")
    h.wait_for(lambda: not _busy(h), 300, "the setup check")
    assert _task(h).state == "finished", _task(h).error
    assert h.ui.backboneComboBox.count > 10 and h.ui.deviceComboBox.itemData(0) == "auto"
    assert h.ui.backboneComboBox.currentIndex == h.ui.backboneComboBox.findData("efficientnet-lite0")
    log = h.ui.logTextEdit.plainText
    assert "package monai" in log and "free disk" in log


# -- installing ------------------------------------------------------------------------------------------
def test_install_asks_once_installs_torch_through_the_extension_and_the_rest_with_constraints(make_harness):
    h = make_harness(absent={"torch", "torchvision", "monai", "einops"})
    h.load()
    h.enter()
    assert h.ui.setupStatusLabel.text.startswith("Missing: torch, torchvision, monai, einops")
    assert not h.ui.trainButton.enabled and h.ui.installButton.enabled
    from PyQt5.QtWidgets import QMessageBox

    h.user.answers.append(QMessageBox.Ok)
    h.click("installButton")
    assert len(h.user.questions()) == 1                       # one dialog, not two
    from slicer_harness.application import PyTorchUtilsLogic

    assert PyTorchUtilsLogic.calls == [{"askConfirmation": False, "backend": None, "torch": ">=2.0",
                                        "torchvision": ">=0.15"}]
    [(kind, reqs, constraints, opts)] = h.packaging.calls
    assert kind == "pip_ensure" and reqs == ["monai>=1.3", "einops>=0.6"] and opts["prompt_install"] is False
    from MedTransferLib.core.environment import installed_version

    for name in ("torch", "torchvision", "numpy", "SimpleITK"):   # pinned: never replaced
        assert f"{name}=={installed_version(name)}" in constraints.splitlines()
    assert h.ui.setupStatusLabel.text == "Dependencies installed." and not h.ui.installButton.enabled


def test_declining_the_install_installs_nothing(make_harness):
    from PyQt5.QtWidgets import QMessageBox
    from slicer_harness.application import PyTorchUtilsLogic

    h = make_harness(absent={"torch", "torchvision"})
    h.load()
    h.enter()
    h.user.answers.append(QMessageBox.Cancel)
    h.click("installButton")
    assert PyTorchUtilsLogic.calls == [] and h.packaging.calls == []
    assert "declined" in h.ui.statusLabel.text and h.ui.installButton.enabled


def test_cpu_only_asks_the_extension_for_the_cpu_build(make_harness):
    from PyQt5.QtWidgets import QMessageBox
    from slicer_harness.application import PyTorchUtilsLogic

    h = make_harness(absent={"torch", "torchvision"})
    h.load()
    h.ui.cpuOnlyCheckBox.checked = True
    h.user.answers.append(QMessageBox.Ok)
    h.click("installButton")
    assert [c["backend"] for c in PyTorchUtilsLogic.calls] == ["cpu"] and h.packaging.calls == []


def test_without_the_pytorch_extension_the_user_is_told_where_to_get_it(make_harness):
    h = make_harness(absent={"torch", "torchvision", "monai"}, pytorch_extension=False)
    h.load()
    h.enter()
    assert "install 'PyTorch' from the Extensions Manager" in h.ui.setupStatusLabel.text
    h.click("installButton")
    [error] = h.user.errors()
    assert "Extensions Manager" in error and "PyTorchUtils" not in error
    assert h.packaging.calls == []   # monai from PyPI would pull a torch build of its own: not installed either


def test_older_slicer_installs_through_pip_install_with_the_constraints(make_harness, monkeypatch):
    from PyQt5.QtWidgets import QMessageBox

    h = make_harness(absent={"monai"}, packaging=False)
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls.append(
        (list(args), Path(args[1]).read_text(encoding="utf-8"))))
    h.load()
    h.user.answers.append(QMessageBox.Ok)
    h.click("installButton")
    [(args, constraints)] = calls
    assert args[0] == "-c" and args[2:] == ["monai>=1.3"]
    assert "numpy==" in constraints and "SimpleITK==" in constraints and "torch==" in constraints


def test_a_package_installed_in_a_too_old_version_counts_as_missing(make_harness, monkeypatch):
    from MedTransferLib.core import environment

    h = make_harness()
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda n: "1.2.0" if n == "monai" else real(n))
    h.load()
    assert "Missing: monai" in h.ui.setupStatusLabel.text


def test_an_old_torch_is_named_and_never_replaced(make_harness, monkeypatch):
    from slicer_harness.application import PyTorchUtilsLogic

    from MedTransferLib.core import environment

    h = make_harness()
    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda n: "1.13.1" if n == "torch" else real(n))
    h.load()
    assert "PyTorch Utils module" in h.ui.setupStatusLabel.text
    h.click("installButton")
    assert "never replaces it" in h.user.errors()[0] and PyTorchUtilsLogic.calls == []


def test_install_from_folder_installs_offline_and_copies_the_weights(make_harness, tmp_path, monkeypatch):
    from PyQt5.QtWidgets import QMessageBox

    from MedTransferLib.core.files import write_json

    folder = tmp_path / "wheelhouse"
    (folder / "wheels").mkdir(parents=True)
    (folder / "weights" / "hub" / "checkpoints").mkdir(parents=True)
    (folder / "weights" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"weights")
    write_json(folder / "wheelhouse.json", {"format": "medtransfer-wheelhouse", "wheels": ["monai-1.6.1-py3-none-any.whl"],
                                            "weights": ["checkpoints/resnet18-f37072fd.pth"]})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    h = make_harness(absent={"monai"})
    h.load()
    h.user.folders.append(str(folder))
    h.user.answers.append(QMessageBox.Ok)
    h.click("installFromFolderButton")
    [(kind, args, constraints, _)] = h.packaging.calls
    assert kind == "pip_install" and args[:3] == ["--no-index", "--find-links", str(folder / "wheels")]
    assert args[3:] == ["monai>=1.3"] and "torch==" in constraints
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").read_bytes() == b"weights"
    assert "1 weight file(s) copied" in h.ui.statusLabel.text


# -- the self-test ---------------------------------------------------------------------------------------
def _self_test(h):
    """Slicer's ctest calls the module's runTest (MedTransferTest)."""
    import sys

    h.load()
    test = sys.modules["MedTransfer"].MedTransferTest()
    test.runTest()


def test_self_test_without_dependencies_installs_nothing_and_runs_the_checks_that_need_none(make_harness, caplog):
    from slicer_harness.application import PyTorchUtilsLogic

    h = make_harness(absent={"torch", "torchvision", "monai"}, testing=True)
    with caplog.at_level("INFO"):
        _self_test(h)
    assert "training and prediction checks skipped" in caplog.text and "self-test passed" not in caplog.text
    assert PyTorchUtilsLogic.calls == [] and h.packaging.calls == []


@pytest.mark.slow   # child processes
def test_self_test_with_dependencies_trains_applies_and_checks_the_segmentation(make_harness, caplog, tmp_path,
                                                                                monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    h = make_harness(testing=True)
    with caplog.at_level("INFO"):
        _self_test(h)
    assert "MedTransfer self-test passed" in caplog.text
    assert not list(tmp_path.glob("MedTransferSelfTest-*"))   # its run and model removed
    assert any(s.GetName() == "MRHead MedTransfer" for s in _nodes(h.scene, "vtkMRMLSegmentationNode"))


def test_mark_slice_empty_counts_the_slice_in_view_as_labelled(harness, colin_crop):
    h = harness
    h.load()
    h.enter()
    ui = h.ui
    volume, seg, _, painted = colin_pair(h.scene, colin_crop)
    h.click("addAllPairsButton")
    assert unwrap(ui.pairsTableWidget).item(0, 2).text() == f"{len(painted)} / 36"
    # the Red view, as Slicer's layout makes it, showing slice 1 (nothing painted there)
    red = slicer.vtkMRMLSliceNode()
    red.SetSingletonTag("Red")
    h.scene.AddNode(red)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    ras = ijk_to_ras.MultiplyPoint([3.0, 4.0, 1.0, 1.0])
    for r in range(3):
        red.GetSliceToRAS().SetElement(r, 3, ras[r])
    red.UpdateMatrices()
    assert 1 not in painted
    h.click("markEmptySliceButton")
    assert unwrap(ui.pairsTableWidget).item(0, 2).text() == f"{len(painted) + 1} / 36 (1 marked empty)"
    assert "slice 1 of 'Colin' marked as labelled" in ui.segmentsStatusLabel.text
    assert bridge.empty_slices(seg) == [1]
    h.click("markEmptySliceButton")   # again: unmarked
    assert unwrap(ui.pairsTableWidget).item(0, 2).text() == f"{len(painted)} / 36"
    assert bridge.empty_slices(seg) == []


def _red_view_on(h, volume, k):
    """The Red view as Slicer's layout makes it (slice and composite nodes), showing ``volume``
    at axial slice ``k``."""
    red = slicer.vtkMRMLSliceNode()
    red.SetSingletonTag("Red")
    h.scene.AddNode(red)
    composite = slicer.vtkMRMLSliceCompositeNode()
    composite.SetSingletonTag("Red")
    h.scene.AddNode(composite)
    composite.SetBackgroundVolumeID(volume.GetID())
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    ras = ijk_to_ras.MultiplyPoint([3.0, 4.0, float(k), 1.0])
    for r in range(3):
        red.GetSliceToRAS().SetElement(r, 3, ras[r])
    red.UpdateMatrices()
    return red


@pytest.mark.slow   # two trainings in child processes
def test_training_shows_a_live_preview_and_update_continues_the_model(harness, colin_crop, monkeypatch):
    import json

    from MedTransferLib.core.launch import waiting_spare
    from MedTransferLib.data.io import read_image
    from MedTransferLib.package.store import ModelPackage

    monkeypatch.setenv("MEDTRANSFER_SPARE", "1")   # as in Slicer: a spare process waits for each next task
    h = harness
    h.load()
    h.enter()
    entered = waiting_spare()
    assert entered is not None and entered.alive()
    ui, p = h.ui, h.widget.logic.getParameterNode()
    volume, seg, _, painted = colin_pair(h.scene, colin_crop, every=8)
    h.click("addAllPairsButton")
    ui.epochsSpinBox.value = 1
    assert not ui.updateButton.enabled and "Train first" in ui.updateButton.toolTip
    assert not ui.suggestSliceButton.enabled
    _red_view_on(h, volume, 7)
    # a preview after every step's worth of time (--preview-seconds 0: still ≤ 10 % of the time)
    quick_training(h.widget.logic, steps=4, extra=["--preview-seconds", "0"])
    h.click("trainButton")
    run = h.widget.panel.panel.last_run
    # the panel tells the training which slices the Red view shows, before its first preview:
    # case 0, slice 7 and its neighbours
    assert json.loads((run / "preview" / "view.json").read_text()) == {"case": 0, "slices": [6, 7, 8]}
    assert _task(h).job.warm and _task(h).job.pid == entered.proc.pid and waiting_spare() is None
    h.wait_for(lambda: not _busy(h), 600, "training")
    assert _task(h).state == "finished", _task(h).error
    spare = waiting_spare()   # the next one, started when the training ended
    assert spare is not None and spare.alive() and spare is not entered
    shown = [e for e in _task(h).events if e.get("event") == "preview"]
    assert shown and all(e["viewed"] == [6, 7, 8] for e in shown)
    previews = [s for s in _nodes(h.scene, "vtkMRMLSegmentationNode") if s.GetName() == "MedTransfer preview"]
    assert len(previews) == 1 and bridge.segment_names(previews[0]) == ["Caudate_L", "Putamen_L"]
    drawn = bridge.segmentation_to_label(previews[0], volume, bridge.labels_from_segments(previews[0], [
        "Caudate_L", "Putamen_L"]))
    written, _ = read_image(run / "preview" / "preview.nrrd", "preview")
    assert np.array_equal(drawn, written)   # the node holds the last preview file, as written
    assert any(line.startswith("preview: step") for line in ui.logTextEdit.toPlainText().splitlines())
    first_model = p.modelFolder
    # Next slice: the Red view moves to the slice the last preview suggests, ≥ 3 slices from painted ones
    suggested = [e["suggest"] for e in shown if e["suggest"]][-1][0]
    assert ui.suggestSliceButton.enabled and min(abs(suggested - k) for k in painted) >= 3
    h.click("suggestSliceButton")
    red = h.scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    assert bridge.slice_index_in_view(volume, red) == suggested
    assert f"slice {suggested} of 'Colin'" in ui.segmentsStatusLabel.text

    # Update: continue that model for a time budget, into a new run folder, the preview replaced in place
    h.click("updateButton")
    viewed = [suggested - 1, suggested, suggested + 1]
    update_run = h.widget.panel.panel.last_run
    assert json.loads((update_run / "preview" / "view.json").read_text()) == {"case": 0, "slices": viewed}
    assert _task(h).job.warm and _task(h).job.pid == spare.proc.pid
    h.wait_for(lambda: not _busy(h), 600, "the update")
    assert _task(h).kind == "update" and _task(h).state == "finished", _task(h).error
    # the model being continued is previewed after the first step, on the slices in view
    first = next(e for e in _task(h).events if e.get("event") == "preview")
    assert first["step"] == 1 and first["viewed"] == viewed and first["weights"] == "current"
    last = waiting_spare()
    assert last is not None and last.alive()
    h.widget.cleanup()   # Slicer closing: no spare is left behind
    assert waiting_spare() is None and last.proc.poll() is not None
    assert h.widget.panel.panel.last_run != run and p.modelFolder != first_model
    m = ModelPackage.load(p.modelFolder).manifest
    assert m.training["init_from"] == first_model and m.training["max_seconds"] == 60
    assert m.training["epochs"] == 4 and m.strategy["strategy"] == "finetune"
    assert [s for s in _nodes(h.scene, "vtkMRMLSegmentationNode") if s.GetName() == "MedTransfer preview"] == previews
    assert ui.statusLabel.text.startswith("Model updated, written to")
    assert h.user.errors() == []
