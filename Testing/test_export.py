"""Issue 5 (models): a package exports to TorchScript + labels.json that reproduce the model."""

import json

import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.app.cli import main
from MedTransferLib.package.store import ModelPackage

TINY = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=1, steps_per_epoch=1,
            batch_size=2, patch=64)


@pytest.mark.parametrize("mode", ["2.5d", "3d"])
@pytest.mark.slow   # tracing and ONNX runtime
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


@pytest.mark.parametrize("mode", ["2.5d", "3d"])
@pytest.mark.slow   # tracing and ONNX runtime
def test_onnx_export_runs_in_onnxruntime_at_other_sizes_with_the_same_output(blob_datalist, tmp_path, mode):
    ort = pytest.importorskip("onnxruntime")
    run = mt.train(blob_datalist, tmp_path / "run", mode=mode, **{**TINY, "patch": 64 if mode == "2.5d" else 32})
    assert main(["export", "--model", str(run.package), "--out", str(tmp_path / "exported"),
                 "--format", "onnx"]) == 0
    assert not (tmp_path / "exported" / "model.torchscript.pt").exists()   # only what was asked
    session = ort.InferenceSession(str(tmp_path / "exported" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = ModelPackage.load(run.package).build_model()
    shapes = [(1, 3, 64, 96), (3, 3, 160, 64)] if mode == "2.5d" else [(1, 1, 32, 32, 32), (2, 1, 64, 32, 64)]
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(shape)
            got = session.run(None, {"image": x.numpy()})[0]
            assert got.shape == tuple(model(x).shape)
            assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-3, rtol=1e-3)


def test_export_names_what_it_cannot_do(blob_datalist, tmp_path, monkeypatch):
    import builtins

    from MedTransferLib.core.errors import MedTransferError
    from MedTransferLib.inference.export import export_package

    run = mt.train(blob_datalist, tmp_path / "run", **TINY)
    real_import = builtins.__import__

    def no_onnx(name, *args, **kw):
        if name == "onnx":
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(MedTransferError, match="pip install onnx"):
        export_package(run.package, tmp_path / "out", ["onnx"])
    assert not (tmp_path / "out" / "model.onnx").exists()
    with pytest.raises(MedTransferError, match="unknown"):
        export_package(run.package, tmp_path / "out", ["tflite"])
    (tmp_path / "file").write_text("")
    with pytest.raises(MedTransferError, match=r"cannot write '.*file/out' \(Not a directory\)"):
        export_package(run.package, tmp_path / "file" / "out", ["torchscript"])
