"""Issue 3: the 3D path end to end on real data, sparse-label masking in 3D patches, memory-bounded
sliding-window prediction, and trained models / MONAI bundles as pretrained sources."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import OBLIQUE, blob_volume, digest, write_volume

import MedTransferLib as mt
from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.progress import Reporter
from MedTransferLib.package.store import MANIFEST, ModelPackage

TINY3D = dict(mode="3d", epochs=1, steps_per_epoch=2, batch_size=2, patch=32, seed=0)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory, colin_crop):
    """A short 3D run on the real Colin27 crop: EfficientNet-Lite0's ImageNet weights inflated."""
    out = tmp_path_factory.mktemp("run3d")
    events = []
    before = digest(colin_crop["image"], colin_crop["label"])
    run = mt.train(colin_crop["datalist"], out, reporter=Reporter(sink=events.append, stream=None, bar=False),
                   mode="3d", epochs=2, steps_per_epoch=3, batch_size=2, patch=64, seed=0)
    assert digest(colin_crop["image"], colin_crop["label"]) == before
    return run, events


def test_3d_training_writes_a_3d_package_that_predicts_in_the_input_geometry(run3d, colin_crop, tmp_path):
    run, events = run3d
    manifest = json.loads((run.package / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["mode"] == "3d" and manifest["model"]["spatial_dims"] == 3
    assert manifest["model"]["backbone"] == "efficientnet-lite0" and manifest["inference"]["patch"] == [64, 64, 64]
    assert manifest["slicing"]["slices"] == 1
    assert sum(e["event"] == "validation" for e in events) == 2
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    case = mt.read_case(colin_crop["image"])
    path = write_volume(tmp_path / "oblique.nrrd", case.image, (0.9, 1.1, 1.3), (3.0, 2.0, 1.0), OBLIQUE)
    oblique = mt.read_case(path)
    pred = mt.predict(run.package, oblique)
    assert pred.label.shape == oblique.image.shape and pred.label.dtype == np.uint8
    assert set(np.unique(pred.label)) <= set(range(9))
    rows = mt.evaluate(pred.label.astype(int), mt.read_case(colin_crop["label"]).image.astype(int),
                       [(lab.value, lab.name) for lab in ModelPackage.load(run.package).labels], oblique.geometry)
    assert len(rows) == 8 and all(0 <= r["dice"] <= 1 for r in rows)


def test_3d_patches_learn_only_from_training_slices():
    """Every plane of a patch's target is labelled exactly when its slice is a training slice:
    never a held-out slice, never an unlabelled one, always a training one. The image's value on
    each plane is its slice index, so the test knows which slice each plane came from."""
    from MedTransferLib.data.sampling import PatchSampler3D
    from MedTransferLib.data.slabs import Volume

    _, label = blob_volume(shape=(24, 40, 48))
    depth = label.shape[0]
    image = np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None] + 1000, label.shape).copy()
    target = label.copy()                            # every slice carries labels: only the mask hides them
    vol = Volume(image, target, "blob")
    train_slices = {s for s in range(0, depth, 4) if s != 8}    # slice 8 held out, the rest unlabelled
    sampler = PatchSampler3D([vol], [(0, s) for s in sorted(train_slices)], 3, (16, 32, 32), seed=0)
    images, targets = sampler.sample(64)
    assert images.shape == (64, 1, 16, 32, 32) and targets.shape == (64, 16, 32, 32)
    seen = set()
    for img, tgt in zip(images, targets):
        planes = img[0, :, 0, 0].astype(int) - 1000   # the slice each plane came from (no padding here)
        labelled = (tgt != IGNORE).any(axis=(1, 2))
        expected = np.array([s in train_slices for s in planes])
        assert np.array_equal(labelled, expected), (planes, labelled)
        seen.update(int(s) for s in planes[labelled])
    assert seen == train_slices                       # every training slice was drawn somewhere
    assert (targets == 1).any() and (targets == 2).any()


def _monai_labels(model, image, prep, patch, overlap=0.25, sw_batch_size=2):
    """MONAI's own sliding window on a standardised (D, H, W) or (C, D, H, W) volume → labels."""
    from monai.inferers import sliding_window_inference

    from MedTransferLib.data.slabs import with_channels

    x = torch.from_numpy(np.ascontiguousarray(with_channels(image)))[None]
    with torch.inference_mode():
        scores = sliding_window_inference(x, roi_size=tuple(patch), sw_batch_size=sw_batch_size, overlap=overlap,
                                          predictor=lambda t: model(prep.to_backbone(t)).float(),
                                          mode="gaussian", padding_mode="replicate")
    return scores[0].argmax(0).numpy()


@pytest.mark.parametrize("crop", [np.s_[:, :, :], np.s_[:40, 5:50, :]])   # whole; thinner than a window
def test_streamed_sliding_window_gives_monai_labels_from_a_buffer_one_window_deep(run3d, colin_crop, crop):
    from MedTransferLib.inference.windows import Slabs, predict_volume_3d

    run, _ = run3d
    pkg = ModelPackage.load(run.package)
    model = pkg.build_model().eval()
    prep = pkg.preprocessing
    raw = mt.read_case(colin_crop["image"]).image[crop]
    fitted = []
    image = prep.standardise(raw, fitted)
    patch = pkg.manifest.inference.patch
    reads = []

    def read(zs, ys, xs):             # lazily standardised blocks of the raw image
        reads.append((zs, ys, xs))
        return prep.apply(raw[zs, ys, xs], fitted)

    ours = predict_volume_3d(model, Slabs((1,) + image.shape, read), prep, torch.device("cpu"), patch, 9)
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    np.testing.assert_array_equal(ours, _monai_labels(model, image, prep, patch))
    # never more input than one window, and every voxel read
    assert all(s.stop - s.start <= p for block in reads for s, p in zip(block, patch))
    for axis in range(3):
        assert min(b[axis].start for b in reads) == 0 and max(b[axis].stop for b in reads) == image.shape[axis]


def test_streamed_sliding_window_with_two_images_per_case_and_padding(colin_crop):
    """Two channels standardised window by window (each with its own fitted parameters), a
    volume thinner than the window on two axes, 3 windows per pass: MONAI's labels."""
    from MedTransferLib.data.preprocessing import Preprocessing
    from MedTransferLib.inference.windows import Slabs, predict_volume_3d
    from MedTransferLib.models.backbones.monai3d import build_unet

    torch.manual_seed(0)
    model = build_unet(2, 4).eval()
    raw = mt.read_case(colin_crop["image"]).image[:20, :30]
    two = np.stack([raw, raw.max() - raw * 0.5])
    prep = Preprocessing("MR", channel_modalities=("MR", "MR"))
    fitted = []
    image = prep.standardise(two, fitted)
    slabs = Slabs(image.shape, lambda zs, ys, xs: prep.apply(two[:, zs, ys, xs], fitted))
    ours = predict_volume_3d(model, slabs, prep, torch.device("cpu"), (32, 32, 32), 4, batch_size=3)
    assert ours.shape == raw.shape
    np.testing.assert_array_equal(ours, _monai_labels(model, image, prep, (32, 32, 32), sw_batch_size=3))


def test_blocks_of_a_standardised_image_equal_the_whole(colin_crop):
    from MedTransferLib.data.histogram import learn_landmarks
    from MedTransferLib.data.preprocessing import Preprocessing

    raw = mt.read_case(colin_crop["image"]).image
    for prep in (Preprocessing("MR"), Preprocessing("CT"),
                 Preprocessing("MR", histogram_landmarks=learn_landmarks([raw, raw[:, ::-1] * 1.3]))):
        fitted = []
        whole = prep.standardise(raw, fitted)
        assert len(fitted) == 1
        np.testing.assert_array_equal(prep.apply(raw[7:19], fitted), whole[7:19])
    two = np.stack([raw, raw * 2.0])
    prep = Preprocessing("MR", channel_modalities=("MR", "MR"))
    fitted = []
    whole = prep.standardise(two, fitted)
    assert len(fitted) == 2
    np.testing.assert_array_equal(prep.apply(two[:, 3:9], fitted), whole[:, 3:9])


@pytest.mark.slow   # two trainings
def test_a_trained_package_starts_the_next_task_in_2_5d_and_3d(blob_datalist, tmp_path):
    from MedTransferLib.package.sources import build_encoder

    first = mt.train(blob_datalist, tmp_path / "first", backbone="resnet18", weights=None, epochs=1,
                     steps_per_epoch=2, batch_size=2, patch=64)
    saved = ModelPackage.load(first.package).state_dict()
    enc = build_encoder(f"package:{first.package}", in_channels=3)
    assert torch.equal(enc.layer3[0].conv1.weight, saved["encoder.layer3.0.conv1.weight"])
    # 5 slices instead of 3: the trained stem is adapted, the rest carried over
    second = mt.train(blob_datalist, tmp_path / "second", backbone=f"package:{first.package}", slices=5,
                      epochs=1, steps_per_epoch=2, batch_size=2, patch=64)
    m2 = ModelPackage.load(second.package)
    assert m2.manifest.model["backbone"] == "resnet18" and m2.manifest.model["in_channels"] == 5
    assert m2.manifest.training["backbone"] == f"package:{first.package}"
    # and inflated into a 3D model
    third = mt.train(blob_datalist, tmp_path / "third", backbone=f"package:{first.package}", **TINY3D)
    assert ModelPackage.load(third.package).manifest.model["spatial_dims"] == 3
    with pytest.raises(mt.MedTransferError, match="does not exist"):
        build_encoder(f"package:{tmp_path / 'nothing'}")


def _bundle(root, network_def, out_channels=5):
    from monai.bundle import ConfigParser

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {"num_classes": out_channels, "network_def": network_def}
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    (root / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    torch.manual_seed(0)
    net = ConfigParser(json.loads(json.dumps(config))).get_parsed_content("network_def")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return net


UNET_DEF = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes",
            "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def test_a_monai_bundle_is_fine_tuned_on_new_labels(blob_datalist, tmp_path):
    """A bundle trained for 4 structures starts a 2-structure task: weights that fit are kept, the
    output layer is re-initialised, and the package predicts without the bundle."""
    bundle = tmp_path / "spleen_like_bundle"
    source = _bundle(bundle, UNET_DEF)
    events = []
    run = mt.train(blob_datalist, tmp_path / "run", reporter=Reporter(sink=events.append, stream=None, bar=False),
                   backbone=f"bundle:{bundle}", **{**TINY3D, "steps_per_epoch": 1})
    notes = " ".join(e.get("message", "") for e in events if e["event"] == "note")
    assert "re-initialised" in notes
    pkg = ModelPackage.load(run.package)
    assert pkg.manifest.model["network_def"]["_target_"] == "UNet"
    assert pkg.manifest.model["num_classes"] == 3
    shutil.rmtree(bundle)
    net = pkg.build_model()
    # a deep layer that fitted came from the bundle (and was then fine-tuned one step, so compare
    # the untouched BatchNorm-free shapes loosely: same tensor shape, strongly correlated)
    inner = dict(net.net.named_parameters())
    key = "model.1.submodule.0.conv.unit0.conv.weight"
    a, b = inner[key].detach().ravel(), dict(source.named_parameters())[key].detach().ravel()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    pred = mt.predict(run.package, mt.read_case(blob_datalist.parent / "img1.nii.gz"))
    assert pred.label.shape == (16, 40, 48)


@pytest.mark.parametrize("bad,match", [
    ({**UNET_DEF, "channels": "$__import__('os').system('touch pwned')"}, "expression"),
    ({"_target_": "os.system", "command": "touch pwned"}, "not a MONAI network"),
    ({**UNET_DEF, "_requires_": "x"}, "not allowed"),
])
def test_a_bundle_that_would_run_code_is_refused(tmp_path, bad, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "b"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps({"num_classes": 2, "network_def": bad}))
    torch.save({}, root / "models" / "model.pt")
    from MedTransferLib.models.backbones import build_network

    with pytest.raises(mt.MedTransferError, match=match):
        build_network(f"bundle:{root}", None, 1, 3)
    assert not (tmp_path / "pwned").exists()


def test_3d_mode_refuses_what_cannot_work(blob_datalist, tmp_path):
    with pytest.raises(mt.MedTransferError, match="cannot be inflated"):
        mt.train(blob_datalist, tmp_path / "a", backbone="convnext_tiny", weights=None, **TINY3D)
    with pytest.raises(mt.MedTransferError, match="multiple of 32"):
        mt.train(blob_datalist, tmp_path / "b", backbone="resnet18", weights=None, **{**TINY3D, "patch": 40})
    with pytest.raises(mt.MedTransferError, match="BatchNorm cannot"):
        mt.train(blob_datalist, tmp_path / "d", backbone="resnet18", weights=None, **{**TINY3D, "batch_size": 1})
    with pytest.raises(mt.MedTransferError, match="would stay random"):
        mt.train(blob_datalist, tmp_path / "c", backbone="unet", weights=None, strategy="frozen", **TINY3D)


@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_3d_through_the_cli(blob_datalist, tmp_path):
    from MedTransferLib.app.cli import main

    out = tmp_path / "run"
    assert main(["train", "--datalist", str(blob_datalist), "--out", str(out), "--mode", "3d",
                 "--backbone", "segresnet", "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "1", "--patch", "32", "--progress", "json"]) == 0
    img = blob_datalist.parent / "img1.nii.gz"
    assert main(["predict", "--model", str(out), "--image", str(img), "--out", str(tmp_path / "s.nii.gz"),
                 "--overlap", "0.5"]) == 0
    assert mt.read_case(tmp_path / "s.nii.gz").geometry.matches(mt.read_case(img).geometry) == []
