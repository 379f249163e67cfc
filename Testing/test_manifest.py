"""The typed manifest: JSON in and out, versions, and what a package does with it."""

import json

import pytest
import torch

from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.core.labels import Label
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.package.manifest import FORMAT_VERSION, Inference, Manifest, Slicing
from MedTransferLib.package.store import (
    MANIFEST,
    ModelPackage,
    fingerprint,
    save_package,
)


def _manifest(**kw) -> Manifest:
    base = dict(task="segmentation", mode="3d", labels=[Label(3, "liver", (0.9, 0.1, 0.1))],
                preprocessing=Preprocessing(modality="CT", target_mean=(0.5,), target_std=(0.25,)),
                model={"backbone": "unet", "in_channels": 1, "num_classes": 2},
                slicing=Slicing(axis=0, slices=1, channels=1), inference=Inference(patch=[32, 48, 64], overlap=0.5),
                history=[{"epoch": 1, "loss": 0.5}], metrics={"best_val_dice": 0.75})
    base.update(kw)
    return Manifest(**base)


def _json(m: Manifest) -> dict:
    return json.loads(json.dumps(dict(m.to_json(), format_version=FORMAT_VERSION)))


def test_round_trip_gives_an_equal_manifest_read_by_attribute():
    m = _manifest()
    back = Manifest.from_json(_json(m))
    assert back == m
    assert back.inference.patch == [32, 48, 64] and back.inference.size is None
    assert back.slicing.axis == 0 and back.labels[0].value == 3 and back.preprocessing.target_std == (0.25,)
    d = _json(m)
    assert "classes" not in d and "calibration" not in d and d["inference"] == {"patch": [32, 48, 64], "overlap": 0.5}


def test_a_newer_major_version_is_refused_and_unknown_fields_of_this_one_are_kept():
    d = _json(_manifest())
    with pytest.raises(MedTransferError, match="format version 2, newer"):
        Manifest.from_json(dict(d, format_version=FORMAT_VERSION + 1))
    with pytest.raises(MedTransferError, match="format version True"):
        Manifest.from_json(dict(d, format_version=True))
    later = Manifest.from_json(dict(d, added_later={"x": 1}))
    assert later.extra == {"added_later": {"x": 1}} and later.to_json()["added_later"] == {"x": 1}


@pytest.mark.parametrize("change, what", [
    (lambda d: d.pop("labels"), "labels"),
    (lambda d: d["model"].pop("backbone"), "backbone"),
    (lambda d: d.update(task="detection"), "task 'detection'"),
    (lambda d: d.update(mode="4d"), "mode '4d'"),
    (lambda d: d.update(inference={}), "inference patch"),
    (lambda d: d.update(task="classification", inference={"size": 224}), "inference size or classes"),
    (lambda d: d["slicing"].update(axis="first"), "first"),
])
def test_a_garbled_manifest_is_named(change, what):
    d = _json(_manifest())
    change(d)
    with pytest.raises(MedTransferError, match=f"my model lacks or garbles .*{what}"):
        Manifest.from_json(d, "my model")


def test_a_saved_package_carries_the_manifest_checksums_and_fingerprint(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    m = _manifest(shift={"fractions": {"liver": [0.1]}})
    path = save_package(tmp_path / "model", net, m)
    raw = json.loads((path / MANIFEST).read_text())
    assert raw["fingerprint"] == fingerprint(raw) and len(raw["weights"]["sha256"]) == 64
    assert "files" not in raw   # no extra tensor files → no entry
    pkg = ModelPackage.load(path)
    assert pkg.manifest.fingerprint == raw["fingerprint"]
    assert pkg.manifest.shift == {"fractions": {"liver": [0.1]}} and pkg.mode == "3d" and pkg.axis == 0
    assert pkg.manifest == Manifest.from_json(raw)
    assert m.fingerprint == "" and m.weights is None   # the caller's manifest is not changed
