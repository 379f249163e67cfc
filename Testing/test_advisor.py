"""Issue 4, the advisor: data size and a label-free domain distance (stored BatchNorm statistics
vs the target activations), the two-by-two rule, `medtransfer advise`, `--strategy auto`, and the
same from Slicer nodes."""

import json

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.core.progress import Reporter
from MedTransferLib.training.advisor import (
    LITTLE_DATA,
    SIMILAR_DOMAIN,
    bn_distance,
    data_size,
    recommend,
)


def test_distance_is_zero_on_the_source_statistics_and_grows_with_shift():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8))
    x = torch.randn(64, 3, 16, 16)
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None   # cumulative: running stats = these inputs' statistics
    with torch.no_grad():
        net(x)
    same = bn_distance(net, [x])["distance"]
    shifted = bn_distance(net, [x * 3 + 2])["distance"]
    more = bn_distance(net, [x * 6 + 5])["distance"]
    assert same < 0.02 < shifted < more


def test_data_size_counts_cases_slices_and_voxels(colin_crop):
    dl = mt.load_datalist(colin_crop["datalist"])
    cases = dl.load_cases()
    size = data_size(cases, dl.labels, 2)
    label = cases[0].label
    assert size["cases"] == 1 and size["labelled_slices"] == 12       # every 3rd of 36
    holding = [s for s in range(0, 36, 3) if ((label[s] > 0) & (label[s] != 255)).any()]
    assert size["slices_with_structures"] == len(holding)
    assert size["voxels_per_class"]["Hippocampus_L"] == int((label == 1).sum())


@pytest.mark.parametrize("size,distance,expected", [
    (5, 0.1, "frozen"), (5, 2.0, "gradual:2+discriminative:0.5"), (500, 0.1, "finetune"), (500, 2.0, "finetune")])
def test_the_two_by_two(size, distance, expected):
    strategy, lr, reason = recommend(size, distance, True, epochs=16)
    assert recommend(5, 2.0, True, epochs=3)[0] == "gradual:1+discriminative:0.5"   # paced to the run
    assert strategy == expected and f"{distance:.2f}" in reason and str(size) in reason
    assert recommend(size, distance, False)[0] == "finetune"      # nothing pretrained to keep


def test_advise_on_real_mri_prints_the_numbers_behind_the_choice(colin_crop, capsys):
    from MedTransferLib.app.cli import main

    assert main(["advise", "--datalist", str(colin_crop["datalist"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"]["slices_with_structures"] < LITTLE_DATA
    assert len(out["domain"]["per_stage"]) == 5 and out["domain"]["distance"] > 0
    expected = "frozen" if out["domain"]["distance"] < SIMILAR_DOMAIN else "gradual:2+discriminative:0.5"
    assert out["strategy"] == expected
    assert main(["advise", "--datalist", str(colin_crop["datalist"])]) == 0
    text = capsys.readouterr().out
    assert "recommended: --strategy" in text and "domain distance" in text


def test_strategy_auto_trains_with_the_advisors_pick_and_records_it(colin_crop, tmp_path):
    assert mt.TrainConfig().strategy == "auto"   # the default
    events = []
    run = mt.train(colin_crop["datalist"], tmp_path, strategy="auto", epochs=1, steps_per_epoch=1,
                   batch_size=2, patch=64, val_fraction=0,
                   reporter=Reporter(sink=events.append, stream=None, bar=False))
    manifest = json.loads((run.package / "manifest.json").read_text(encoding="utf-8"))
    picked = manifest["strategy"]["advice"]["strategy"]
    assert manifest["strategy"]["strategy"] == picked != "auto"
    assert any(e.get("message", "").startswith(f"strategy auto → {picked}") for e in events)


def test_advise_from_slicer_nodes(tmp_path):
    slicer = pytest.importorskip("slicer")
    from conftest import blob_volume

    from MedTransferLib.slicer import bridge as sb

    scene = slicer.vtkMRMLScene()
    sb.segmentations_logic(scene)
    image, label = blob_volume()
    geo = mt.Geometry((48, 40, 16), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    vol = sb.case_to_volume_node(scene, mt.Case(image, geo), "vol")
    labels = [mt.Label(1, "bright", (1, 0, 0)), mt.Label(2, "dim", (0, 1, 0))]
    seg = sb.label_to_segmentation_node(scene, label, geo, labels, "seg", reference_volume=vol)
    advice = sb.advise_from_nodes([(vol, seg)], ["bright", "dim"], backbone="efficientnet-lite0")
    assert advice.strategy in ("frozen", "gradual:2+discriminative:0.5") and advice.data["cases"] == 1
    assert np.isfinite(advice.domain["distance"])
