"""Point 2: modality presets, mapping to the backbone's statistics, replayed from the manifest."""

import numpy as np
import pytest

import MedTransferLib as mt
from MedTransferLib.data.preprocessing import (
    IMAGENET_MEAN,
    Preprocessing,
    detect_modality,
    imagenet_target_stats,
)


def test_mr_preset_clips_percentiles_and_z_scores():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 50.0, size=(20, 30, 30)).astype(np.float32)
    img[0, 0, 0] = 1e6  # an outlier the percentile clip must remove
    z = Preprocessing(modality="MR").standardise(img)
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
    assert z.max() < 10


def test_ct_preset_uses_a_fixed_hu_window():
    hu = np.array([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]], np.float32)
    z = Preprocessing(modality="CT", ct_window=(-1000, 1000)).standardise(hu)
    assert np.allclose(z.ravel(), [-1, -1, 0, 1, 1])


def test_modality_is_detected_from_intensities():
    ct = np.full((4, 8, 8), -1000.0)
    ct[:, 2:6, 2:6] = 40
    assert detect_modality(ct) == "CT"
    assert detect_modality(np.abs(ct)) == "MR"


def test_mapping_to_backbone_statistics():
    """ImageNet-normalised backbones get mean 0 / std 1; Lite0 (TF normalisation) gets its own."""
    mean, std = imagenet_target_stats(IMAGENET_MEAN, (0.229, 0.224, 0.225))
    assert np.allclose(mean, 0) and np.allclose(std, 1)
    mean, std = imagenet_target_stats((0.498,) * 3, (0.502,) * 3)
    prep = Preprocessing(target_mean=mean, target_std=std)
    z = np.random.default_rng(1).normal(size=(1000, 3, 4, 4)).astype(np.float32)
    x = prep.to_backbone(z)
    assert np.allclose(x.mean(axis=(0, 2, 3)), mean, atol=0.02)
    assert np.allclose(x.std(axis=(0, 2, 3)), std, atol=0.02)


def test_preprocessing_round_trips_through_the_manifest():
    prep = Preprocessing(modality="CT", ct_window=(-200, 300), target_mean=(0.1, 0.2, 0.3), target_std=(1, 2, 3))
    again = Preprocessing.from_dict(prep.to_dict())
    img = np.linspace(-500, 500, 1000, dtype=np.float32).reshape(10, 10, 10)
    assert np.array_equal(prep.standardise(img), again.standardise(img))
    with pytest.raises(mt.MedTransferError, match="newer MedTransfer"):
        Preprocessing.from_dict({**prep.to_dict(), "bias_field_correction": True})


def test_constant_image_is_refused():
    with pytest.raises(mt.MedTransferError, match="constant"):
        Preprocessing(modality="MR").standardise(np.full((4, 4, 4), 7.0))
