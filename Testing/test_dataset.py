"""Point 3: 2.5D slabs, targets only on labelled slices, case-level validation split."""

import numpy as np
import pytest
import torch

import MedTransferLib as mt
from MedTransferLib.core.case import Case, Geometry
from MedTransferLib.data.augment import augment
from MedTransferLib.data.preprocessing import Preprocessing
from MedTransferLib.data.sampling import SlabSampler
from MedTransferLib.data.slabs import (
    Volume,
    from_slices_first,
    slab_indices,
    to_slices_first,
)
from MedTransferLib.data.split import split_train_val

GEO = Geometry((12, 10, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_slabs_are_adjacent_slices_clamped_at_the_ends():
    assert slab_indices(0, 10, 3).tolist() == [0, 0, 1]
    assert slab_indices(5, 10, 5).tolist() == [3, 4, 5, 6, 7]
    assert slab_indices(9, 10, 3).tolist() == [8, 9, 9]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicing_along_each_axis_round_trips(axis):
    vol = np.arange(8 * 10 * 12).reshape(8, 10, 12)
    s = to_slices_first(vol, axis)
    assert s.shape[0] == vol.shape[2 - axis]
    assert np.array_equal(from_slices_first(s, axis), vol)


def _case(label, image=None, cid="c"):
    image = np.random.default_rng(0).normal(size=label.shape).astype(np.float32) if image is None else image
    return Case(image, GEO, label, cid)


def test_only_labelled_slices_are_targets_and_ignore_survives():
    label = np.full((8, 10, 12), mt.IGNORE, np.uint8)
    label[2] = 0
    label[2, 3:6, 3:6] = 7
    vol = Volume.from_case(_case(label), Preprocessing(), 2, [7])
    train, val, _ = split_train_val([vol], 0.0, 0)
    assert train == [(0, 2)] and val == []
    assert set(np.unique(vol.target[2])) == {0, 1}
    assert (vol.target[[0, 1, 3]] == mt.IGNORE).all()


def test_several_cases_are_split_by_case():
    vols = []
    for i in range(5):
        label = np.zeros((8, 10, 12), np.uint8)
        label[:, 4:6, 4:6] = 1
        vols.append(Volume.from_case(_case(label, cid=f"c{i}"), Preprocessing(), 2, [1]))
    train, val, note = split_train_val(vols, 0.2, 0)
    assert {v for v, _ in train}.isdisjoint({v for v, _ in val})
    assert len({v for v, _ in val}) == 1 and "cases held out" in note


def test_one_case_holds_out_whole_labelled_slices_and_says_so():
    geo = Geometry((12, 10, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    label = np.full((20, 10, 12), mt.IGNORE, np.uint8)
    for s in range(0, 20, 2):          # 10 labelled slices with the structure
        label[s] = 0
        label[s, 4:6, 4:6] = 1
    label[1] = 0                       # and one labelled, empty slice
    image = np.random.default_rng(0).normal(size=(20, 10, 12)).astype(np.float32)
    vol = Volume.from_case(Case(image, geo, label), Preprocessing(), 2, [1])
    train, val, note = split_train_val([vol], 0.2, 0)
    assert len([s for _, s in val if s % 2 == 0]) == 2 and set(train).isdisjoint(val)
    assert sorted(s for _, s in train + val) == [0, 1] + list(range(2, 20, 2))
    assert "held out" in note


def test_one_case_with_few_labelled_slices_keeps_them_all_for_training_and_says_so():
    label = np.full((8, 10, 12), mt.IGNORE, np.uint8)
    for s in range(5):
        label[s] = 0
        label[s, 4:6, 4:6] = 1
    vol = Volume.from_case(_case(label), Preprocessing(), 2, [1])
    train, val, note = split_train_val([vol], 0.2, 0)
    assert val == [] and len(train) == 5
    assert "5 labelled slices holding structures" in note and "without early stopping" in note


def test_a_case_with_no_labelled_slice_is_refused():
    label = np.full((8, 10, 12), mt.IGNORE, np.uint8)
    with pytest.raises(mt.MedTransferError, match="no labelled slice"):
        split_train_val([Volume.from_case(_case(label, cid="empty"), Preprocessing(), 2, [1])], 0.2, 0)


def test_sampler_oversamples_structures_and_augmentation_keeps_labels_valid():
    label = np.full((8, 10, 12), mt.IGNORE, np.uint8)
    label[[1, 4, 6]] = 0
    label[4, 2:4, 2:4] = 1  # one small structure on one of three labelled slices
    vol = Volume.from_case(_case(label), Preprocessing(), 2, [1])
    sampler = SlabSampler([vol], [(0, 1), (0, 4), (0, 6)], 3, 2, seed=0)
    images, targets = sampler.sample(60)
    assert images.shape == (60, 3, 32, 32)
    hits = (targets == 1).any(axis=(1, 2)).mean()
    assert hits > 0.5  # uniform sampling would give 1/3
    x, y = augment(torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64)), np.random.default_rng(0))
    assert set(torch.unique(y).tolist()) <= {0, 1, mt.IGNORE}
    assert x.shape == images.shape
