"""A 2.5D prediction smoothed along the slice axis (inference/windows.py): each slice's
log-probabilities averaged with its predicted neighbours', checked against a direct computation
over the whole stack, across batch boundaries and with scattered slices."""

import math

import numpy as np
import pytest
import torch
from conftest import OBLIQUE, write_blob_datalist

import MedTransferLib as mt
import MedTransferLib.inference.segment as segment
from MedTransferLib.core.progress import Reporter
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.inference import windows
from MedTransferLib.inference.windows import (
    predict_slices,
    slice_smoothing,
    smooth_weight,
)

C = 4


class Mixer(torch.nn.Module):
    """Logits from a fixed random 1×1 mix of the slab's channels: each slice its own scores."""

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(k, C, 1)
        torch.nn.init.normal_(self.conv.weight, std=2.0)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(5)
    image = rng.normal(size=(12, 8, 10)).astype(np.float32)       # (S, H, W), already standardised
    return image, Mixer(3), Preprocessing("MR"), torch.device("cpu")


def smoothed_by_definition(logp: np.ndarray, predicted: list[int], w: float) -> np.ndarray:
    """Softmax of ((1 - 2w) log p(z) + w Σ log p(z ± 1) over predicted neighbours) / the weights used."""
    have = set(predicted)
    out = []
    for z in predicted:
        total, norm = (1 - 2 * w) * logp[z], 1 - 2 * w
        for n in (z - 1, z + 1):
            if n in have:
                total, norm = total + w * logp[n], norm + w
        s = total / norm
        e = np.exp(s - s.max(0))
        out.append(e / e.sum(0))
    return np.stack(out)


@pytest.mark.parametrize("slices, batch", [(list(range(12)), 5), ([0, 1, 2, 5, 7, 8, 9, 11], 2), ([3, 4], 1)])
def test_each_slice_is_the_geometric_mean_of_it_and_its_predicted_neighbours(stack, slices, batch):
    image, model, prep, dev = stack
    alone = predict_slices(model, image, 3, prep, dev, list(range(12)), probabilities=True).astype(np.float64)
    w = 0.3
    want = smoothed_by_definition(np.log(alone), slices, w)
    got = predict_slices(model, image, 3, prep, dev, slices, batch_size=batch, probabilities=True, smooth=w)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, alone[slices], atol=1e-3)      # the data are such that it changes them
    labels = predict_slices(model, image, 3, prep, dev, slices, batch_size=batch, smooth=w)
    assert np.array_equal(labels, want.argmax(1))
    assert not np.array_equal(labels, alone[slices].argmax(1))


def test_the_guide_gets_the_smoothed_probabilities(stack):
    image, model, prep, dev = stack
    seen = []

    class Guide:
        def fuse(self, slices, probs):
            seen.append((list(slices), probs))
            return probs.argmax(1).astype(np.uint8)

    want = predict_slices(model, image, 3, prep, dev, list(range(12)), probabilities=True, smooth=0.25)
    predict_slices(model, image, 3, prep, dev, list(range(12)), batch_size=4, guide=Guide(), smooth=0.25)
    assert [s for s, _ in seen] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    np.testing.assert_allclose(np.concatenate([p for _, p in seen]), want, atol=1e-6)


def test_the_weight_is_a_gaussian_one_pixel_wide_sampled_at_the_slice_spacing(monkeypatch):
    g = math.exp(-0.5)                                            # isotropic: one pixel = one slice
    assert smooth_weight(1.0, 1.0) == pytest.approx(g / (1 + 2 * g))
    assert smooth_weight(0.5, 0.5) == pytest.approx(g / (1 + 2 * g))
    g = math.exp(-0.5 * (2.5 / 0.8) ** 2)                         # 2.5-mm slices, 0.8-mm pixels
    assert smooth_weight(2.5, 0.8) == pytest.approx(g / (1 + 2 * g)) and smooth_weight(2.5, 0.8) < 0.01
    # the finer in-plane side: spacing (i, j, k) = (0.8, 2.0, 0.9) along k is 0.9 mm against 0.8 mm
    assert slice_smoothing((0.8, 2.0, 0.9), 2) == pytest.approx(smooth_weight(0.9, 0.8))
    assert slice_smoothing((0.9, 2.0, 0.8), 0) == pytest.approx(smooth_weight(0.9, 0.8))
    for bad in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (1.0, -1.0), (float("nan"), 1.0), (1.0, float("nan"))):
        assert smooth_weight(*bad) == 0.0, bad                    # no spacing to go by: no smoothing
    monkeypatch.setattr(windows, "SMOOTH_PIXELS", 0.0)
    assert smooth_weight(1.0, 1.0) == 0.0


def test_apply_smooths_by_the_case_s_spacing_along_the_model_s_axis(tmp_path, monkeypatch):
    # what Apply (mt.predict) passes on: the weight of the case's own voxel spacing along the axis
    # the model predicts (here 1: j, 0.9 mm, against 0.8-mm pixels)
    datalist = write_blob_datalist(tmp_path, (0.8, 0.9, 2.0), (5.0, -3.0, 1.0), OBLIQUE)
    run = mt.train(datalist, tmp_path / "run", reporter=Reporter(stream=None, bar=False), backbone="resnet18",
                   weights=None, strategy="finetune", epochs=1, steps_per_epoch=1, batch_size=2, patch=64,
                   val_fraction=0, axis=1)
    seen = []
    plain = segment.predict_slices

    def spy(*args, **kw):
        seen.append(kw["smooth"])
        return plain(*args, **kw)

    monkeypatch.setattr(segment, "predict_slices", spy)
    mt.predict(run.package, mt.read_case(datalist.parent / "img1.nii.gz"))
    assert seen == [pytest.approx(smooth_weight(0.9, 0.8))]
