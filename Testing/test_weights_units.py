"""Reading weight files and loading them strictly, on tiny files written here: each container
layout, the prefixes, and every refusal with its count and examples."""

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import MedTransferLib as mt
from MedTransferLib.models.backbones.weights import load_strict, read_state_dict


def _net():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 3, 1))


def test_every_checkpoint_layout_gives_the_same_plain_state_dict(tmp_path):
    state = {k: v.clone() for k, v in _net().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    assert read_state_dict(tmp_path / "w.safetensors").keys() == state.keys()
    for key in ("state_dict", "model", "model_state_dict", "net"):
        torch.save({key: state, "epoch": 3}, tmp_path / f"{key}.pth")
        got = read_state_dict(tmp_path / f"{key}.pth")
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")   # DataParallel's prefix
    assert read_state_dict(tmp_path / "ddp.pth").keys() == state.keys()
    torch.save({"state_dict": state, "model": {"x": torch.zeros(1)}}, tmp_path / "first.pth")
    assert read_state_dict(tmp_path / "first.pth").keys() == state.keys()       # the first known key wins


def test_files_that_are_not_plain_tensors_are_refused_by_name(tmp_path):
    with pytest.raises(mt.MedTransferError, match=r"weights file '.*none.pth' does not exist; give a .safetensors"):
        read_state_dict(tmp_path / "none.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    with pytest.raises(mt.MedTransferError, match="is not a valid safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "numbers.pth")
    with pytest.raises(mt.MedTransferError, match="holds no state dict of tensors"):
        read_state_dict(tmp_path / "numbers.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(mt.MedTransferError, match="holds no state dict of tensors"):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "code.pth").write_bytes(pickle.dumps(print))   # a pickle naming a function
    with pytest.raises(mt.MedTransferError, match=r"was refused: it is not a plain tensor checkpoint .*UnpicklingError"):
        read_state_dict(tmp_path / "code.pth")


def test_strict_loading_counts_and_names_what_does_not_fit():
    net = _net()
    state = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    fresh = _net()
    load_strict(fresh, dict(state), "test")
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in state)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}   # older files lack it
    load_strict(_net(), old, "old file")
    missing = {k: v for k, v in state.items() if not k.startswith("2.")}
    with pytest.raises(mt.MedTransferError, match=r"weights from ours do not fit this architecture: 2 missing "
                                                  r"\(e.g. 2.bias, 2.weight\); pick the backbone"):
        load_strict(_net(), missing, "ours")
    extra = dict(state, **{"9.weight": torch.zeros(1), "8.weight": torch.zeros(1), "7.a": torch.zeros(1),
                           "7.b": torch.zeros(1)})
    with pytest.raises(mt.MedTransferError, match=r"4 unexpected \(e.g. 7.a, 7.b, 8.weight\)"):
        load_strict(_net(), extra, "x")
    wrong = dict(state, **{"0.weight": torch.zeros(2, 1, 5, 5)})
    with pytest.raises(mt.MedTransferError, match=r"1 wrong shape \(e.g. 0.weight \(2, 1, 5, 5\)≠\(2, 1, 3, 3\)\)"):
        load_strict(_net(), wrong, "x")
    both = {k: v for k, v in extra.items() if not k.startswith("2.")}
    with pytest.raises(mt.MedTransferError, match=r"2 missing .*; 4 unexpected"):
        load_strict(_net(), both, "x")
    # a head we replace may be absent, present or of another shape
    head = dict(missing, **{"2.weight": torch.zeros(9, 9), "2.extra": torch.zeros(1)})
    target = _net()
    before = target[2].weight.clone()
    load_strict(target, head, "x", ignore_prefixes=("2.",))
    assert torch.equal(target[2].weight, before) and torch.equal(target[0].weight, state["0.weight"])
