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


@pytest.fixture
def tiny_package(tmp_path):
    torch.manual_seed(0)
    extra = {"reference_stats.safetensors": {"mean": torch.arange(3.0)}}
    m = _manifest(strategy={"strategy": "frozen", "advice": {"reason": "little data"}},
                  training={"weights": "pretrained", "strategy": "auto"},
                  provenance={"inputs": [{"case_id": "a", "labelled_slices": 4}, {"case_id": "b", "labelled_slices": 3}]},
                  metrics={"best_val_dice": 0.75, "epochs_run": 6}, complete=False)
    return save_package(tmp_path / "run" / "model", torch.nn.Linear(3, 2), m, extra)


def test_every_damaged_or_edited_package_is_refused_with_its_reason(tiny_package, tmp_path):
    import shutil

    def copy():
        dst = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_package, dst)
        return dst

    with pytest.raises(MedTransferError, match="does not exist"):
        ModelPackage.load(tmp_path / "nothing")
    cases = {
        "has no manifest.json": lambda m: (m / MANIFEST).unlink(),
        "not valid JSON": lambda m: (m / MANIFEST).write_text("{broken"),
        "not a MedTransfer manifest": lambda m: (m / MANIFEST).write_text('{"format": "other"}'),
        "changed after training": lambda m: (m / MANIFEST).write_text(
            (m / MANIFEST).read_text().replace('"liver"', '"spleen"')),
        "has no model.safetensors": lambda m: (m / "model.safetensors").unlink(),
        "does not match the manifest's checksum": lambda m: (m / "model.safetensors").write_bytes(
            (m / "model.safetensors").read_bytes()[:-4] + b"0000"),
        "reference_stats.safetensors is missing or does not match": lambda m: (
            m / "reference_stats.safetensors").write_bytes(b"x"),
    }
    for message, damage in cases.items():
        m = copy()
        damage(m)
        with pytest.raises(MedTransferError, match=message):
            ModelPackage.load(m)
    m = copy()
    raw = json.loads((m / MANIFEST).read_text())
    raw["files"] = {"../outside.safetensors": "0" * 64}
    raw["fingerprint"] = fingerprint(raw)
    (m / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(MedTransferError, match="outside the package; refused"):
        ModelPackage.load(m)
    assert ModelPackage.load(tiny_package).labels[0].name == "liver"   # the original is intact


def test_a_run_folder_or_the_previous_model_after_a_crash_loads(tiny_package):
    import os

    run = tiny_package.parent
    assert ModelPackage.load(run).path == tiny_package                 # a run folder: its model/
    os.replace(tiny_package, run / "model.old")                         # killed between the renames
    assert ModelPackage.load(run).path == run / "model.old"
    assert ModelPackage.load(tiny_package).path == run / "model.old"


def test_summary_and_description_say_what_the_model_is(tiny_package):
    pkg = ModelPackage.load(tiny_package)
    s = pkg.summary()
    assert s == {"task": "segmentation", "mode": "3d", "structures": ["liver"], "backbone": "unet",
                 "weights": "pretrained", "strategy": "auto", "strategy_reason": "little data", "modality": "CT",
                 "cases": 2, "labelled_slices": 7, "epochs_run": 6, "validation": ("dice", 0.75), "complete": False,
                 "fingerprint": pkg.manifest.fingerprint[:12]}
    assert pkg.describe().splitlines() == [
        "segmentation (3d): liver", "backbone unet (weights: pretrained), strategy auto",
        "trained on 2 case(s), 7 labelled slices, modality CT, 6 epochs", "why this strategy: little data",
        "best validation dice: 0.750", "checkpoint of an unfinished run"]
    assert torch.equal(pkg.extra("reference_stats.safetensors")["mean"], torch.arange(3.0))
    assert pkg.extra("other.safetensors") == {}


def test_copy_to_writes_a_verified_copy_and_replaces_an_older_one(tiny_package, tmp_path):
    pkg = ModelPackage.load(tiny_package)
    dest = tmp_path / "saved" / "copy"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    copy = pkg.copy_to(dest)
    assert copy.manifest == pkg.manifest and not (dest / "stale.txt").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "model.safetensors",
                                                      "reference_stats.safetensors"]
    assert pkg.copy_to(tiny_package) is pkg                            # onto itself: nothing to do


def test_the_saved_manifest_is_this_version_and_names_its_weights_file(tmp_path):
    path = save_package(tmp_path / "m", torch.nn.Linear(3, 2), _manifest(format_version=0))
    raw = json.loads((path / MANIFEST).read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["format"] == "medtransfer-model"
    assert set(raw["weights"]) == {"file", "sha256"} and raw["weights"]["file"] == "model.safetensors"
    assert fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})   # key order is not content
    assert fingerprint({"a": 1}) == fingerprint({"a": 1, "fingerprint": "anything"})
    for bad in ("a/b.safetensors", "a\\b.safetensors", "stats.bin", "model.safetensors"):
        with pytest.raises(ValueError, match="bad extra file name"):
            save_package(tmp_path / "x", torch.nn.Linear(3, 2), _manifest(), {bad: {"t": torch.zeros(1)}})


def test_a_classifier_summary_names_classes_and_leaves_out_what_it_lacks(tmp_path):
    m = _manifest(task="classification", mode="2.5d", classes=["normal", "lesion"],
                  inference=Inference(size=224), strategy={"name": "frozen"}, training={"strategy": "auto"},
                  provenance={"inputs": [{"case_id": "a"}]}, metrics={"best_val_balanced_accuracy": None,
                                                                    "epochs_run": 3}, complete=True)
    pkg = ModelPackage.load(save_package(tmp_path / "c", torch.nn.Linear(3, 2), m))
    s = pkg.summary()
    assert "structures" not in s and s["classes"] == ["normal", "lesion"]
    assert s["strategy"] == "frozen" and s["strategy_reason"] == "" and s["cases"] == 1
    assert s["labelled_slices"] == 0 and s["validation"] is None and s["complete"] is True
    lines = pkg.describe().splitlines()
    assert lines[0] == "classification (2.5d): normal, lesion"
    assert "no validation score (too few labelled slices to hold some out)" in lines
    assert not any(line.startswith("why this strategy") or "unfinished" in line for line in lines)
    bare = ModelPackage.load(save_package(tmp_path / "b", torch.nn.Linear(3, 2), _manifest(provenance={})))
    assert bare.summary()["cases"] == 0 and bare.summary()["labelled_slices"] == 0


def test_a_classifier_manifest_round_trips_and_an_older_one_gets_the_defaults():
    m = _manifest(task="classification", mode="2.5d", classes=["normal", "lesion"],
                  slicing=Slicing(axis=2, slices=3, channels=2),
                  inference=Inference(size=224, aggregation="mean of slice logits"),
                  calibration={"temperature": 1.5}, shift={"ood": {"threshold": 2.0}})
    back = Manifest.from_json(_json(m))
    assert back == m and back.classes == ["normal", "lesion"] and back.inference.size == 224
    assert back.inference.aggregation == "mean of slice logits" and back.slicing.channels == 2
    assert back.calibration == {"temperature": 1.5}
    old = _json(_manifest(mode="2.5d", inference=Inference()))
    for key in ("task", "mode", "inference"):
        old.pop(key)
    old["slicing"].pop("channels")
    old["extra"] = "a field named extra"
    first = Manifest.from_json(old)
    assert (first.task, first.mode, first.inference, first.slicing.channels) == ("segmentation", "2.5d", Inference(), 1)
    assert first.classes is None and first.extra == {"extra": "a field named extra"}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(files=["x"]), "my model lacks or garbles 'files'"),
    (lambda d: d.update(task="classification", inference={"size": 224}),
     "my model lacks or garbles 'inference size or classes'"),
    (lambda d: d.update(task="classification", classes=["a", "b"]),
     "my model lacks or garbles 'inference size or classes'"),
    (lambda d: d.update(inference={}), "my model lacks or garbles 'inference patch'"),
    (lambda d: d.update(format_version=FORMAT_VERSION + 1),
     f"my model has format version {FORMAT_VERSION + 1}, newer than this MedTransfer reads ({FORMAT_VERSION}); "
     "update MedTransfer"),
])
def test_the_messages_name_the_model_and_the_field_exactly(change, message):
    d = _json(_manifest())
    change(d)
    with pytest.raises(MedTransferError) as err:
        Manifest.from_json(d, "my model")
    assert str(err.value) == message
    with pytest.raises(MedTransferError, match="^manifest "):   # the default name
        Manifest.from_json(d)


def test_a_package_rebuilds_the_decoder_widths_it_was_trained_with(tmp_path):
    """Models trained before the decoder was narrowed (256-128-64-32-16) keep loading as they were
    trained; a new run records the new widths. A broken version (the widths from today's default
    instead of the package's config) fails the strict weight load."""
    from MedTransferLib.models.segmentation import DECODER_CHANNELS, SegmentationNet
    from MedTransferLib.training.config import TrainConfig
    from MedTransferLib.training.start import build_for_training

    torch.manual_seed(0)
    wide = [256, 128, 64, 32, 16]
    cfg = {"backbone": "efficientnet-lite0", "kind": "encoder", "spatial_dims": 2, "in_channels": 3,
           "num_classes": 3, "stem": "mean", "decoder_channels": wide}
    net = SegmentationNet.from_config(cfg, weights=None).eval()
    assert net.head[0].in_channels == 16 and list(DECODER_CHANNELS) != wide
    pkg = ModelPackage.load(save_package(tmp_path / "old", net, _manifest(mode="2.5d", model=cfg)))
    rebuilt = pkg.build_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    for mode in ("2.5d", "3d"):
        model, new = build_for_training(TrainConfig(mode=mode, weights=None), 1, 2)
        assert new["decoder_channels"] == [128, 64, 32, 16, 8] and model.head[0].in_channels == 8
