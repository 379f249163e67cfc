"""Resume in one process (the kill -9 test in test_reliability.py does it across processes): a run
stopped after its first epoch and resumed ends with exactly the weights of the run that was never
stopped — model, AdamW moments, schedule, random generators and the gradual unfreezing all come
back. Fast enough for the mutation runs (bench/mutation.py, group resume)."""

import pytest
from conftest import digest

import MedTransferLib as mt
from MedTransferLib.core.progress import Reporter
from MedTransferLib.core.rundir import read_state

ARGS = dict(backbone="efficientnet-lite0", strategy="gradual+discriminative", epochs=3, steps_per_epoch=2,
            batch_size=2, patch=64, patience=100)


@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_a_stopped_run_resumes_to_the_uninterrupted_weights(blob_datalist, tmp_path):
    whole = mt.train(blob_datalist, tmp_path / "whole", **ARGS)

    def stop_after_first_epoch(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            raise KeyboardInterrupt            # as Ctrl-C or Cancel would, once epoch 1 is saved

    with pytest.raises(KeyboardInterrupt):
        mt.train(blob_datalist, tmp_path / "cut", reporter=Reporter(sink=stop_after_first_epoch, stream=None), **ARGS)
    assert read_state(tmp_path / "cut")["state"] == "cancelled"
    notes = []
    resumed = mt.train(blob_datalist, tmp_path / "cut", resume=True,
                       reporter=Reporter(sink=notes.append, stream=None), **ARGS)
    assert any(e.get("message", "").startswith("resumed after epoch 1") for e in notes)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    assert digest(resumed.package / "model.safetensors") == digest(whole.package / "model.safetensors")
