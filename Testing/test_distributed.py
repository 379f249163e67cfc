"""Issue 8 (beyond one machine): `medtransfer train` under `torchrun --nproc_per_node 2` with the
gloo backend on CPU — real processes, real all-reduce — against the same run in one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import MedTransferLib as mt
from MedTransferLib.core.rundir import read_state

pytestmark = pytest.mark.slow   # real torchrun processes

ARGS = ["--backbone", "resnet18", "--weights", "none", "--strategy", "gradual+discriminative", "--epochs", "6",
        "--steps-per-epoch", "5", "--batch-size", "2", "--patch", "64", "--progress", "json"]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_train_under_torchrun_matches_one_process_and_only_rank_0_writes(blob_datalist, tmp_path):
    args = ARGS[:]
    args[args.index("gradual+discriminative")] = "finetune"   # random init: nothing to keep frozen
    two = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29631", "-m", "MedTransferLib",
                          "train", "--datalist", str(blob_datalist), "--out", str(tmp_path / "two"), *args],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    events = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("done") == 1          # one voice: rank 0
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    one = subprocess.run([sys.executable, "-m", "MedTransferLib", "train", "--datalist", str(blob_datalist),
                          "--out", str(tmp_path / "one"), *args], capture_output=True, text=True, env=_env(), timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    d2 = mt.ModelPackage.load(tmp_path / "two").manifest.metrics["best_val_dice"]
    d1 = mt.ModelPackage.load(tmp_path / "one").manifest.metrics["best_val_dice"]
    # two ranks see twice the batches of one process, so the runs differ; two processes must not be
    # worse (measured 2026-12-01: one 0.899, two 0.973; with the narrower decoder of 2026-12-04,
    # 30 steps from random weights: one 0.770, two 0.783)
    assert d1 > 0.7 and d2 >= d1 - 0.02, (d1, d2)
    assert read_state(tmp_path / "two")["state"] == "finished"
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["model", "run.json", "train_args.json"]


RANK_SCRIPT = """
import sys
import MedTransferLib as mt
from MedTransferLib.core import distributed
run = mt.train(sys.argv[1], sys.argv[2], backbone="efficientnet-lite0", strategy="gradual+discriminative",
               epochs=4, steps_per_epoch=3, batch_size=2, patch=64)
# every rank validates its own copy of the model after every epoch: identical scores to the last
# digit, epoch after epoch, mean identical weights; the training losses differ (own batches)
vals = [repr(h["val_dice"]) for h in run.history]
losses = [repr(h["train_loss"]) for h in run.history]
open(f"{sys.argv[2]}/rank{distributed.rank()}.txt", "w").write(" ".join(vals) + chr(10) + " ".join(losses))
"""


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_every_rank_ends_with_the_same_model_even_while_stages_unfreeze(blob_datalist, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29632", str(script),
                          str(blob_datalist), str(out)], capture_output=True, text=True, env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    vals0, losses0 = (out / "rank0.txt").read_text().splitlines()
    vals1, losses1 = (out / "rank1.txt").read_text().splitlines()
    assert vals0 == vals1 and len(vals0.split()) == 4
    assert losses0 != losses1        # each rank trained on its own batches
