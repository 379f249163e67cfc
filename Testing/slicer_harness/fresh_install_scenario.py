"""Run by Testing/test_slicer_fresh_install.py in its own process, with torch, torchvision and
monai blocked (slicer_harness/blocker.py): a Slicer where the PyTorch extension is installed but
nothing of PyTorch yet. The module must load, its panel must work, Install must ask once, and
after it the whole path — Add all, Train, Cancel, Train, Apply, the tables — must run with
torch never imported into this (Slicer's) process."""

import sys

from PyQt5.QtWidgets import QMessageBox

from MedTransferLib.slicer import bridge
from slicer_harness import blocker
from slicer_harness.application import PyTorchUtilsLogic
from slicer_harness.scenes import all_gone, colin_pair, quick_training, tree_of


def test_fresh_install_to_tables_without_torch_in_slicers_process(make_harness, colin_crop):
    assert blocker.BLOCKED >= {"torch", "torchvision", "monai"}
    h = make_harness(absent={"torch", "torchvision", "monai"})
    h.load()                                   # setup: failed with ModuleNotFoundError before the fix
    h.enter()
    ui = h.ui
    assert ui.setupStatusLabel.text.startswith("Missing: torch, torchvision, monai")
    volume, seg, _, _ = colin_pair(h.scene, colin_crop)
    h.click("addAllPairsButton")               # the panel works before anything is installed
    assert ui.pairsTableWidget.rowCount == 1 and not ui.trainButton.enabled
    assert "Install" in ui.trainButton.toolTip

    h.user.answers.append(QMessageBox.Ok)
    h.click("installButton")
    assert len(h.user.questions()) == 1 and len(PyTorchUtilsLogic.calls) == 1
    assert [c[1] for c in h.packaging.calls] == [["monai>=1.3"]]
    assert ui.setupStatusLabel.text == "Dependencies installed." and ui.trainButton.enabled

    ui.epochsSpinBox.value = 1
    quick_training(h.widget.logic, steps=500)
    h.click("trainButton")
    task = lambda: h.widget.panel.panel.task   # noqa: E731
    h.wait_for(lambda: task().progress.step >= 1, 300, "training to start")
    tree = tree_of(task().job.pid)
    h.click("cancelButton")
    h.wait_for(lambda: not task().running, 10)
    assert task().state == "cancelled" and all_gone(tree, 5.0)

    quick_training(h.widget.logic, steps=2)
    h.click("trainButton")
    h.wait_for(lambda: not task().running, 600, "training")
    assert task().state == "finished", task().error

    from PyQt5 import QtCore

    from slicer_harness.pythonqt import unwrap

    unwrap(ui.applyVolumesSelector).setCheckState(volume, QtCore.Qt.Checked)
    h.click("applyButton")
    h.wait_for(lambda: not task().running, 300, "Apply")
    assert task().state == "finished", task().error
    tables = [bridge.table_node_rows(h.scene.GetNodesByClass("vtkMRMLTableNode").GetItemAsObject(i))
              for i in range(h.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    assert any(rows and rows[0].get("structure") == "Caudate_L" for rows in tables)
    assert h.user.errors() == [] and h.slot_errors == []
    assert not any(n.split(".")[0] in blocker.BLOCKED for n in sys.modules)
    assert blocker.ATTEMPTS == [], f"Slicer's process tried to import {blocker.ATTEMPTS}"
