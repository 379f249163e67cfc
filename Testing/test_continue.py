"""Continuing a trained model (`--from`) and training to a time budget (`--max-seconds`)."""

import json

import pytest
import torch
from conftest import write_blob_datalist

import MedTransferLib as mt
from MedTransferLib.app.cli import main
from MedTransferLib.core.defaults import EXIT_SECONDS
from MedTransferLib.core.progress import Reporter
from MedTransferLib.package.store import ModelPackage

TINY = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=2, steps_per_epoch=2, batch_size=2,
            patch=64, val_fraction=0)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """Two synthetic cases (the suite's blobs) and a tiny model trained on them."""
    folder = tmp_path_factory.mktemp("blobs")
    datalist = write_blob_datalist(folder)
    return datalist, mt.train(datalist, folder / "first", reporter=Reporter(stream=None, bar=False), **TINY)


def _weights(package):
    return ModelPackage.load(package).state_dict()


def test_from_starts_with_the_whole_earlier_network(first, tmp_path):
    datalist, run = first
    events = []
    # a learning rate so small that one step leaves every weight where it started: what the run
    # starts from is then what it ends with
    cont = mt.train(datalist, tmp_path / "more", reporter=Reporter(sink=events.append, stream=None, bar=False),
                    **dict(TINY, init_from=str(run.package.parent), strategy="auto", epochs=1, steps_per_epoch=1,
                           lr=1e-12, weight_decay=0.0))
    before, after = _weights(run.package), _weights(cont.package)
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert len(weights) > 50 and any(k.startswith("head") or "decoder" in k for k in weights)
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in weights)
    fresh = mt.train(datalist, tmp_path / "fresh", reporter=Reporter(stream=None, bar=False),
                     **dict(TINY, epochs=1, steps_per_epoch=1, lr=1e-12, weight_decay=0.0))
    assert not all(torch.allclose(before[k], _weights(fresh.package)[k], atol=1e-6) for k in weights)
    m = ModelPackage.load(cont.package).manifest
    assert m.training["init_from"] == str(run.package.parent) and m.strategy["strategy"] == "finetune"
    assert m.preprocessing == ModelPackage.load(run.package).manifest.preprocessing
    assert "continuing a model trained on this task" in next(e["message"] for e in events
                                                              if e["event"] == "note" and "auto →" in e["message"])


def test_from_refuses_other_structures_or_settings(first, tmp_path):
    datalist, run = first
    data = json.loads(datalist.read_text())
    data["labels"] = {"0": "background", "1": "bright", "2": "faint"}
    renamed = datalist.with_name("renamed.json")
    renamed.write_text(json.dumps(data))
    with pytest.raises(mt.MedTransferError, match=r"learnt other structures \(this data adds 2 'faint'; lacks 2 "
                                                  r"'dim'\): .*--backbone package:"):
        mt.train(renamed, tmp_path / "a", **dict(TINY, init_from=str(run.package)))
    with pytest.raises(mt.MedTransferError, match="trained with slices 3; continue it with the same settings "
                                                  r"\(slices 5 given\)"):
        mt.train(datalist, tmp_path / "b", **dict(TINY, init_from=str(run.package), slices=5))


@pytest.mark.slow   # end to end through a whole training: CI runs it; the quick set has its unit tests
def test_the_cli_continues_with_a_short_schedule_and_keeps_a_time_budget(first, tmp_path, capsys):
    datalist, run = first
    args = ["train", "--datalist", str(datalist), "--backbone", "resnet18", "--weights", "none", "--batch-size", "2",
            "--patch", "64", "--val-fraction", "0", "--steps-per-epoch", "1", "--progress", "json"]
    assert main(args + ["--out", str(tmp_path / "cont"), "--from", str(run.package.parent)]) == 0
    m = ModelPackage.load(tmp_path / "cont").manifest
    assert m.training["epochs"] == 4 and m.metrics["epochs_run"] == 4
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "budget"), "--epochs", "50", "--max-seconds", "0.01"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    pkg = ModelPackage.load(tmp_path / "budget")
    assert pkg.manifest.metrics["steps_run"] == 1 and pkg.manifest.metrics["stopped_early"]
    assert pkg.manifest.complete and any("time budget" in e.get("message", "") for e in events)
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "x"), "--max-seconds", "abc"])
    assert main(args + ["--out", str(tmp_path / "y"), "--max-seconds", "-1"]) == 2


def test_from_takes_the_models_mode_and_slices_unless_they_are_given(first, tmp_path):
    datalist, _ = first
    three = mt.train(datalist, tmp_path / "3d", reporter=Reporter(stream=None, bar=False), mode="3d", backbone="unet",
                     weights=None, epochs=1, steps_per_epoch=1, batch_size=2, patch=32, val_fraction=0)
    args = ["train", "--datalist", str(datalist), "--from", str(three.package.parent), "--steps-per-epoch", "1",
            "--epochs", "1", "--batch-size", "2", "--patch", "32", "--progress", "json"]
    assert main(args + ["--out", str(tmp_path / "cont")]) == 0      # no --mode: the model's 3D
    assert ModelPackage.load(tmp_path / "cont").mode == "3d"
    assert main(args + ["--out", str(tmp_path / "other"), "--mode", "2.5d"]) == 2   # given: checked, refused
    assert not (tmp_path / "other" / "model").exists()
    five = mt.train(datalist, tmp_path / "five", reporter=Reporter(stream=None, bar=False), **{**TINY, "slices": 5})
    args[4] = str(five.package.parent)
    assert main(args[:-4] + ["--patch", "64", "--out", str(tmp_path / "cont5")]) == 0   # no --slices: the model's 5
    assert ModelPackage.load(tmp_path / "cont5").slices == 5


def test_an_update_shows_its_starting_model_at_once_a_new_run_after_the_interval(first, tmp_path, capsys):
    datalist, run = first
    args = ["train", "--datalist", str(datalist), "--backbone", "resnet18", "--weights", "none", "--batch-size", "2",
            "--patch", "64", "--val-fraction", "0", "--steps-per-epoch", "2", "--progress", "json"]

    def previews(out, *extra):
        capsys.readouterr()
        assert main(args + ["--out", str(tmp_path / out), "--preview", str(tmp_path / out / "preview"), *extra]) == 0
        events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        return [(e["step"], e["weights"]) for e in events if e["event"] == "preview"]

    # the default interval (25 s on a CPU) is far longer than these runs: only the first step's
    # preview of the continued model and the finished model's
    assert previews("update", "--from", str(run.package.parent)) == [(1, "current"), (8, "final")]
    assert previews("new", "--epochs", "2") == [(4, "final")]


def test_an_update_holds_nothing_out_so_every_correction_trains(first, tmp_path):
    # two cases, half held out for validation — except in a brief continuation (the panel's
    # Update: --from, no more epochs than the patience of 4), which early stopping could not end:
    # a case or slice held out there would never learn the user's correction
    from conftest import Events

    from MedTransferLib.data.split import SHORT_RUN_NOTE

    datalist, run = first
    seen = {}
    for name, extra in (("update", dict(init_from=str(run.package), epochs=4)),
                        ("longer", dict(init_from=str(run.package), epochs=5)),
                        ("new", dict(epochs=2))):
        events = Events()
        mt.train(datalist, tmp_path / name, reporter=events, **{**TINY, "val_fraction": 0.5, "steps_per_epoch": 1,
                                                                 **extra})
        start = next(f for e, f in events.seen if e == "start")
        notes = [f["message"] for e, f in events.seen if e == "note" and f["message"].startswith("validation")]
        seen[name] = (start["train_slices"], start["val_slices"], notes)
    total = sum(seen["new"][:2])
    assert seen["update"] == (total, 0, [SHORT_RUN_NOTE])
    for name in ("longer", "new"):
        assert seen[name][1] > 0 and seen[name][2] == ["validation: 1 of 2 cases held out (img0)"], seen[name]


def test_the_budget_counts_the_job_s_start_up_too(first, tmp_path):
    # the reporter's clock is the job's: a reporter started 1000 s ago leaves nothing of 500 s,
    # so the run stops after its first step (counted from the loop, 50 epochs would run)
    datalist, _ = first
    reporter = Reporter(stream=None, bar=False)
    reporter.t0 -= 1000.0
    run = mt.train(datalist, tmp_path / "late", reporter=reporter, **dict(TINY, epochs=50, max_seconds=500))
    metrics = ModelPackage.load(run.package).manifest.metrics
    assert metrics["steps_run"] == 1 and metrics["stopped_early"]


def _spy_budget(monkeypatch) -> list:
    from MedTransferLib.training import skeleton

    made = []

    class Spy(skeleton.TimeBudget):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(skeleton, "TimeBudget", Spy)
    return made


def test_the_budget_keeps_back_the_package_s_reference_statistics(first, tmp_path, monkeypatch):
    made = _spy_budget(monkeypatch)
    datalist, _ = first
    mt.train(datalist, tmp_path / "spy", **dict(TINY, max_seconds=500))
    # two training volumes: about three steps' worth of reference statistics each, one to write,
    # one as a margin
    assert [b.finish_steps for b in made] == [8.0]
    assert [b.exit_seconds for b in made] == [EXIT_SECONDS] and EXIT_SECONDS > 0   # and the process's exit


def _batches(monkeypatch, datalist, out, **config):
    """The batch sizes a run draws, and its events and manifest."""
    from conftest import Events

    from MedTransferLib.data.sampling import SlabSampler

    seen, sample = [], SlabSampler.sample
    monkeypatch.setattr(SlabSampler, "sample", lambda self, n: (seen.append(n), sample(self, n))[1])
    events = Events()
    run = mt.train(datalist, out, reporter=events, **{**TINY, "batch_size": None, "patch": 128, **config})
    return seen, events, ModelPackage.load(run.package).manifest.training


def test_a_new_run_on_the_cpu_starts_on_half_batches(first, monkeypatch, tmp_path):
    datalist, _ = first
    seen, events, training = _batches(monkeypatch, datalist, tmp_path / "new", epochs=3, small_batch_epochs=2,
                                      device="cpu")
    # the automatic batch at 128-pixel crops is 16: epochs 1-2 on 8, epoch 3 on 16
    assert seen == [8] * 4 + [16] * 2
    assert training["batch_size"] == 16 and training["first_batch_size"] == 8
    assert any("the first 2 epoch(s) train on batches of 8, then 16" in f.get("message", "")
               for e, f in events.seen if e == "note")


@pytest.mark.parametrize("config", [dict(small_batch_epochs=0), dict(batch_size=12), "from"])
def test_no_half_batches_when_off_when_the_batch_is_given_or_when_continuing(first, monkeypatch, tmp_path, config):
    datalist, run = first
    config = dict(init_from=str(run.package)) if config == "from" else config
    seen, events, training = _batches(monkeypatch, datalist, tmp_path / "run", epochs=2, device="cpu", **config)
    full = config.get("batch_size", 16)
    assert seen == [full] * 4 and training["first_batch_size"] is None
    assert not any("batches of" in f.get("message", "") for e, f in events.seen if e == "note")
