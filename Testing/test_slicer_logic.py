"""The module's Logic (the console API) run for real against slicer-core's MRML, with no Qt.

Everything it does — exporting nodes, the child-process runner, prediction into new nodes (in a
child: Slicer's process never runs torch), tables, the learning curve, model summary/copy/export,
advice, the setup report — runs on real MRML nodes and real processes. The panel itself runs in
test_slicer_module.py.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from conftest import OBLIQUE, blob_volume  # noqa: E402

import MedTransferLib as mt  # noqa: E402
from MedTransferLib.slicer import bridge as sb  # noqa: E402

pytestmark = pytest.mark.slow   # trains in child processes

ROOT = Path(__file__).resolve().parents[1]
GEO = mt.Geometry((48, 40, 16), (0.8, 0.8, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
TINY = dict(backbone="resnet18", weights="none", strategy="finetune", epochs=1, steps_per_epoch=1,
            batch_size=2, patch=64)


@pytest.fixture
def logic(monkeypatch):
    """The module's Logic (MedTransferLib.slicer.logic) on a real scene; children run this
    session's Python."""
    from MedTransferLib.slicer.logic import Logic

    scene = slicer.vtkMRMLScene()
    sb.segmentations_logic(scene)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    return Logic(python=sys.executable)


def _labelled(scene, name="MR", seed=0):
    image, label = blob_volume(seed=seed)
    vol = sb.case_to_volume_node(scene, mt.Case(image, GEO), name)
    sparse = label.copy()
    sparse[1::2] = 0
    labels = [mt.Label(1, "bright", (1.0, 0.5, 0.0)), mt.Label(2, "dim", (0.0, 0.5, 1.0))]
    seg = sb.label_to_segmentation_node(scene, sparse, GEO, labels, f"{name} seg", reference_volume=vol)
    return vol, seg


def test_console_api_trains_in_background_predicts_evaluates_and_manages_the_model(logic, tmp_path):
    scene = slicer.mrmlScene
    vol, seg = _labelled(scene)
    before = sb.node_array(vol).copy()
    made = []

    def factory(args, python=None, env=None):   # the runner passed into the Logic
        from MedTransferLib.core.runner import Job

        made.append(args)
        return Job(args, python=sys.executable, env=env)

    logic.jobFactory = factory
    pairs = logic.newTrainingList()
    assert pairs.add_all(scene) == [] and pairs.segments() == (["bright", "dim"], {})
    job = logic.trainInBackground(pairs.pairs(), ["bright", "dim"], str(tmp_path / "run"), **TINY)
    assert made and made[0][:2] == ["train", "--datalist"] and "--steps-per-epoch" in made[0]
    assert job.wait(timeout=300) == "finished", job.error
    table, chart = logic.learningCurve(job.progress.history)
    assert table.GetTable().GetNumberOfRows() == 1 and chart.GetNumberOfPlotSeriesNodes() >= 1

    vol2, _ = _labelled(scene, "MR2", seed=1)
    results = logic.predict([vol, vol2], job.package, referenceSegmentation=seg)
    assert [m[0] for m in made[1:]] == ["apply"]          # one child for both volumes
    assert len(results) == 2
    (seg_out, volumes, metrics), (seg_out2, _, _) = results
    assert sb.segment_names(seg_out) == ["bright", "dim"] and seg_out2.GetName() == "MR2 MedTransfer"
    assert {"dice", "hd95_mm"} <= set(sb.table_node_rows(metrics)[0])
    assert {"ood_score", "ood", "fraction", "fraction_flag"} <= set(sb.table_node_rows(volumes)[0])
    single = logic.predict(vol, job.package)        # one node in → one tuple out
    assert single[0].IsA("vtkMRMLSegmentationNode") and single[2] is None
    assert np.array_equal(sb.node_array(vol), before)

    text = logic.describeModel(job.package)
    assert "bright, dim" in text and logic.modelTask(job.package) == "segmentation"
    saved = logic.saveModel(job.package, str(tmp_path / "models"))
    assert Path(saved).name == "run" and mt.ModelPackage.load(saved).manifest.fingerprint
    paths = logic.exportModel(saved, str(tmp_path / "export"), formats=["torchscript"], askUser=False)
    assert paths["torchscript"].is_file() and paths["labels"].is_file()
    advice = logic.advise(pairs.pairs(), ["bright", "dim"], backbone="resnet18", weights="none")
    assert advice.strategy == "finetune" and advice.reason   # no pretrained weights → finetune
    setup = logic.doctorInBackground(str(tmp_path))
    assert setup.wait(300) == "finished", setup.error
    assert [c["key"] for c in setup.outputs["devices"]][0] == "auto"
    assert "efficientnet-lite0" in [b["name"] for b in setup.outputs["backbones"]]


def test_console_api_trains_a_classifier_in_background_and_fills_a_probability_table(logic, tmp_path):
    scene = slicer.mrmlScene
    vols = []
    for i in range(4):
        image, _ = blob_volume(seed=i)
        image = image * (1.0 if i % 2 else 0.3)        # two visibly different classes
        vols.append(sb.case_to_volume_node(scene, mt.Case(image.astype(np.float32), GEO), f"V{i}"))
    job = logic.trainClassifierInBackground(vols, ["dark", "bright", "dark", "bright"], str(tmp_path / "cls"),
                                            **{**TINY, "patch": 32})
    assert job.wait(timeout=300) == "finished", job.error
    assert logic.modelTask(job.package) == "classification"
    table = logic.classify(vols, job.package)
    rows = sb.table_node_rows(table)
    assert [r["case"] for r in rows] == ["V0", "V1", "V2", "V3"]
    assert all(abs(r["p_bright"] + r["p_dark"] - 1) < 1e-5 for r in rows)
    shifted = logic.classify(vols, job.package, prior="known:bright=0.99,dark=0.01")
    report = json.loads(shifted.GetAttribute("MedTransfer.Prior"))
    assert report["estimated_prior"] == {"bright": 0.99, "dark": 0.01}
    p_before = [r["p_bright"] for r in rows]
    p_after = [r["p_bright"] for r in sb.table_node_rows(shifted)]
    assert all(a >= b - 1e-9 for a, b in zip(p_after, p_before)) and p_after != p_before


def test_console_api_resumes_a_cancelled_training(logic, tmp_path):
    import time

    from MedTransferLib.core.rundir import read_state

    vol, seg = _labelled(slicer.mrmlScene)
    job = logic.trainInBackground([(vol, seg)], ["bright", "dim"], str(tmp_path / "run"),
                                  **{**TINY, "epochs": 30, "steps_per_epoch": 2, "patience": 100})
    while not any(e["event"] == "epoch" for e in job.events) and job.state == "running":
        job.poll()
        time.sleep(0.05)
    job.cancel()
    assert job.wait(timeout=60) == "cancelled" and read_state(tmp_path / "run")["state"] == "cancelled"
    again = logic.resumeInBackground(str(tmp_path / "run"))
    assert again.wait(timeout=300) == "finished", again.error
    assert any("resumed after epoch" in e.get("message", "") for e in again.events)
    assert read_state(tmp_path / "run")["state"] == "finished"
