"""Issue 5 (models): a package exports to TorchScript + labels.json that reproduce the model."""

import json

import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.cli import main
from MedTransferLib.package import ModelPackage

TINY = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=1, steps_per_epoch=1,
            batch_size=2, patch=64)


@pytest.mark.parametrize("mode", ["2.5d", "3d"])
def test_torchscript_export_reproduces_the_package(blob_datalist, tmp_path, mode):
    run = mt.train(blob_datalist, tmp_path / "run", mode=mode, **{**TINY, "patch": 64 if mode == "2.5d" else 32})
    assert main(["export", "--model", str(run.package), "--out", str(tmp_path / "exported")]) == 0
    scripted = torch.jit.load(str(tmp_path / "exported" / "model.torchscript.pt"))
    model = ModelPackage.load(run.package).build_model()
    shapes = [(1, 3, 64, 96), (2, 3, 128, 64)] if mode == "2.5d" else [(1, 1, 32, 32, 32), (1, 1, 64, 32, 64)]
    with torch.no_grad():
        for shape in shapes:   # other sizes than the trace example too
            x = torch.randn(shape)
            assert torch.allclose(scripted(x), model(x), atol=1e-4, rtol=1e-4)
    meta = json.loads((tmp_path / "exported" / "labels.json").read_text(encoding="utf-8"))
    assert [lab["name"] for lab in meta["labels"]] == ["bright", "dim"] and meta["mode"] == mode
    assert meta["preprocessing"]["modality"] == "MR" and "fingerprint" in meta["source_package"]
