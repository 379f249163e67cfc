"""Scenes and settings the harness tests share: real Colin27 data as a user would have it in
Slicer, and short training settings."""

from __future__ import annotations

import json
import time

import numpy as np

import MedTransferLib as mt
from MedTransferLib.core.labels import default_color
from MedTransferLib.slicer import bridge

STRUCTURES = ("Caudate_L", "Putamen_L")


def colin_pair(scene, crop: dict, every: int = 4, structures=STRUCTURES, name: str = "Colin"):
    """A volume node of the real Colin27 crop and a segmentation painted on every ``every``-th axial
    slice with two AAL structures (their expert outlines), as a user paints a few slices; also a
    label map node, which no volume selector may offer. Returns (volume, segmentation, label map,
    the slices that hold paint)."""
    case = mt.read_case(crop["image"])
    label, _ = mt.read_image(crop["label"], "label")
    names = json.loads(crop["datalist"].read_text(encoding="utf-8"))["labels"]
    values = {v: int(k) for k, v in names.items()}
    sparse = np.zeros(label.shape, np.uint8)
    painted = list(range(0, label.shape[0], every))
    labels = []
    for new, structure in enumerate(structures, start=1):
        keep = label == values[structure]
        keep[[k for k in range(label.shape[0]) if k not in painted]] = False
        sparse[keep] = new
        labels.append(mt.Label(new, structure, default_color(new)))
    painted = [k for k in painted if sparse[k].any()]   # a slice with nothing painted counts as unlabelled
    volume = bridge.case_to_volume_node(scene, case, name)
    seg = bridge.label_to_segmentation_node(scene, sparse, case.geometry, labels, f"{name} labels",
                                            reference_volume=volume)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} label map")
    return volume, seg, labelmap, painted


def quick_training(logic, steps: int = 2, extra=()):
    """Short trainings for tests: the panel's own arguments plus a step count and a small batch
    (the panel has no field for them). Everything else is what the panel sends."""
    from MedTransferLib.core.runner import Job

    def factory(args, python=None, env=None):
        if args[0] == "train" and "--resume" not in args:
            args = [*args, "--steps-per-epoch", str(steps), "--batch-size", "2", "--patch", "64", *extra]
        return Job(args, python=python, env=env)

    logic.jobFactory = factory


def tree_of(pid: int) -> list[int]:
    import psutil

    return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]


def all_gone(pids, timeout: float) -> bool:
    import psutil

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.05)
    return False
