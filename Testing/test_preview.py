"""The live preview while training (`--preview DIR`): when it runs, what it predicts, that it
costs at most a tenth of the time, that it changes nothing in training, and that the label map
it writes is the network's prediction in the case's geometry."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import OBLIQUE, Events, write_blob_datalist

import MedTransferLib as mt
from MedTransferLib.app.cli import main
from MedTransferLib.core.case import IGNORE, Case, Geometry
from MedTransferLib.core.progress import Reporter
from MedTransferLib.inference import windows
from MedTransferLib.inference.suggest import slice_uncertainty, suggest_slices
from MedTransferLib.package.store import ModelPackage
from MedTransferLib.training.hooks import LoopState, TimeBudget
from MedTransferLib.training.preview import (
    PREVIEW_FILE,
    VIEW_FILE,
    Preview,
    SlicePreview,
    coarse_to_fine,
    read_view,
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTarget:
    """Slices of two cases (100 and 30); writing costs ``per_slice`` seconds of the fake clock."""

    whole_volume = False
    cases = 2

    def __init__(self, clock, per_slice=0.05):
        self.clock, self.per_slice, self.calls, self.times = clock, per_slice, [], []

    def slices(self, case):
        return (100, 30)[case]

    def covered(self, case):
        seen = {s for c, sl in self.calls if c == case for s in sl}
        return len(seen) / self.slices(case)

    def suggest(self, case):
        return [case]

    def to_case(self, case, slices):   # every case stored in the network's voxel order
        return list(slices)

    def from_view(self, case, view):
        return view

    def write(self, case, slices, path):
        self.calls.append((case, list(slices)))
        self.times.append(self.clock.now)
        self.clock.now += self.per_slice * len(slices)
        return path


def _state():
    modes = []
    strategy = SimpleNamespace(adapt_bn_first=False, train_mode=lambda model: modes.append("train"))
    return LoopState(torch.nn.Linear(2, 2), strategy, None, Events()), modes


def test_coarse_to_fine_lists_every_slice_once_and_any_prefix_spreads_over_the_volume():
    for n in (1, 7, 64, 65, 181):
        order = coarse_to_fine(n)
        assert sorted(order) == list(range(n))
    order = coarse_to_fine(181)
    assert order[:3] == [0, 64, 128]
    # the first 12 slices leave no gap wider than 16 slices (evenly: 181 / 12 ≈ 15)
    first = sorted(order[:12]) + [181]
    assert max(np.diff([0] + first)) <= 16


def test_the_view_file_names_the_case_and_slices_and_bad_files_are_ignored(tmp_path):
    def n(case):
        return (100, 30)[case]

    assert read_view(tmp_path, 2, n) == (0, [])   # no file
    (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 1, "slices": [29, 3, 30, -1, 3]}))
    assert read_view(tmp_path, 2, n) == (1, [3, 29])   # outside the case dropped, sorted, once
    (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 2, "slices": [3]}))
    assert read_view(tmp_path, 2, n) == (0, [])
    for bad in ("{", "[1, 2]", json.dumps({"case": "x"}), json.dumps({"slices": ["a"]})):
        (tmp_path / VIEW_FILE).write_text(bad)
        assert read_view(tmp_path, 2, n) == (0, [])


def test_previews_come_on_time_show_the_viewed_slices_and_cost_at_most_a_tenth(tmp_path):
    clock = Clock()
    target = FakeTarget(clock)
    hook = Preview(tmp_path, target, every=5.0, clock=clock)
    s, modes = _state()
    hook.start(s)
    (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 0, "slices": [50, 51]}))
    for step in range(1, 201):          # a step takes 0.5 s
        clock.now += 0.5
        s.step = step
        assert hook.step_end(s) is False
        if step == 9:
            assert target.calls == []   # 4.5 s: not yet
        if step == 10:
            assert len(target.calls) == 1
    previews = [f for e, f in s.reporter.seen if e == "preview"]
    assert len(previews) == len(target.calls) >= 10 and len(modes) == len(previews)
    # the first preview: the viewed slices and the first 16 slices coarse to fine
    assert target.calls[0] == (0, sorted({50, 51} | set(coarse_to_fine(100)[:16])))
    assert all({50, 51} <= set(sl) for _, sl in target.calls)
    # each later preview costs ≤ 10 % of the time since the previous one ended
    assert s.aside == pytest.approx(sum(0.05 * len(sl) for _, sl in target.calls))
    assert s.aside / clock.now <= 0.10 + 18 * 0.05 / clock.now   # the first's cost is not known beforehand
    costs, gaps = [0.05 * len(sl) for _, sl in target.calls], np.diff(target.times)
    assert all(c <= 0.10 * gap + 1e-6 for c, gap in zip(costs[1:], gaps[1:]))
    # the later ones fill the volume: after a few previews every slice has been predicted
    assert previews[-1]["covered"] == 1.0 and previews[0]["viewed"] == [50, 51]
    assert previews[0]["slices"] == 18 and previews[0]["case"] == 0


def test_a_continued_model_is_previewed_after_its_first_step_then_on_the_usual_schedule(tmp_path):
    """An Update starts from a model that is already useful: guided by the slices just painted,
    it is shown at once (``first=0``), not after the first ``every`` seconds; the next preview
    follows ``every`` seconds after it."""
    clock = Clock()
    target = FakeTarget(clock, per_slice=1 / 64)   # binary fractions: exact clock arithmetic
    hook = Preview(tmp_path, target, every=5.0, first=0.0, clock=clock)
    s, _ = _state()
    hook.start(s)
    for step in range(1, 15):           # a step takes 0.5 s
        clock.now += 0.5
        s.step = step
        hook.step_end(s)
    previews = [f for e, f in s.reporter.seen if e == "preview"]
    # at 0.5 s (16 slices, 0.25 s), then 5 s after that one ended
    assert [p["step"] for p in previews] == [1, 11] and target.times == [0.5, 5.75]


def test_cheap_previews_predict_as_many_slices_as_a_tenth_of_the_interval_allows(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, per_slice=1 / 64)             # binary fractions: exact clock arithmetic
    hook = Preview(tmp_path, target, every=4.0, clock=clock)
    s, _ = _state()
    hook.start(s)
    for step in range(1, 41):
        clock.now += 0.5
        s.step = step
        hook.step_end(s)
    first, second = target.calls[0][1], target.calls[1][1]
    assert len(first) == 16 and target.times[0] == 4.0        # before any cost is known
    # the first ended at 4.25; the second 4 s later: a tenth of 4 s at 1/64 s a slice is 25.6 slices
    assert target.times[1] == 8.25 and len(second) == 25
    assert second == sorted(coarse_to_fine(100)[16:41])       # the next ones, coarse to fine


def test_when_the_viewed_slices_alone_cost_more_the_previews_come_less_often(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, per_slice=0.5)
    hook = Preview(tmp_path, target, every=1.0, clock=clock)
    s, _ = _state()
    hook.start(s)
    (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 1, "slices": list(range(10))}))   # 5 s each time
    for step in range(1, 3001):
        clock.now += 0.1
        s.step = step
        hook.step_end(s)
    assert all(set(range(10)) <= set(sl) for _, sl in target.calls)
    starts = np.diff(target.times)
    # 10 viewed slices cost 5 s: at most a tenth of the time means ≥ 45 s between previews, not 1 s
    assert len(target.times) >= 3 and starts.min() >= 45
    costs = [0.5 * len(sl) for _, sl in target.calls]
    assert all(c <= 0.10 * gap + 1e-6 for c, gap in zip(costs, starts))   # each ≤ a tenth of its interval


def _recording(clock, s, per_slice=0.05):
    """A fake target that also keeps the model's weight at each preview; ``(target, weights)``."""
    seen = []

    class Recording(FakeTarget):
        def write(self, case, slices, path):
            seen.append(s.model.weight.detach().clone())
            return super().write(case, slices, path)

    return Recording(clock, per_slice), seen


def test_once_validated_a_preview_shows_the_best_weights_and_training_keeps_its_own(tmp_path):
    clock = Clock()
    s, _ = _state()
    target, seen = _recording(clock, s)
    hook = Preview(tmp_path, target, every=1.0, clock=clock)
    hook.start(s)
    own = s.model.weight.detach().clone()
    clock.now = 1.0
    hook.step_end(s)
    assert torch.equal(seen[-1], own)                          # nothing validated yet: the current weights
    s.best_state = {"weight": torch.full((2, 2), 7.0), "bias": torch.zeros(2)}
    clock.now = 100.0
    hook.step_end(s)
    assert torch.equal(seen[-1], torch.full((2, 2), 7.0))     # the best validated weights
    assert torch.equal(s.model.weight, own)                    # and training's own weights back
    assert [f["weights"] for e, f in s.reporter.seen if e == "preview"] == ["current", "best validated"]


def test_the_time_budget_does_not_count_a_preview_as_a_step():
    clock = Clock()
    budget = TimeBudget(10.0, clock=clock)
    s, _ = _state()
    budget.start(s)
    for step in range(1, 4):
        clock.now += 1.0
        if step == 2:               # a 3-second preview during step 2's hooks
            clock.now += 3.0
            s.aside += 3.0
        s.step = step
        budget.step_end(s)
    assert budget.longest == pytest.approx(1.0)
    clock.now += 2.0                # an epoch end of 2 s after the preview: its own cost only
    budget.epoch_end(s)
    assert budget.closing == pytest.approx(2.0)


def test_the_last_preview_shows_the_finished_model_at_the_usual_cost(tmp_path):
    clock = Clock()
    s, _ = _state()
    target, seen = _recording(clock, s, per_slice=1 / 64)
    hook = Preview(tmp_path, target, every=4.0, clock=clock)
    hook.start(s)
    (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 0, "slices": [97, 99]}))
    assert hook.last_cost(0.0) == 0.0                       # nothing measured yet
    for step in range(1, 13):                               # one preview at 4.0: 18 slices, ends at 4.28125
        clock.now += 0.5
        s.step = step
        hook.step_end(s)
    assert len(target.calls) == 1 and target.times[0] == 4.0
    # at 6.28125: a tenth of the 2 s since the preview (more than the 2 viewed slices' cost)
    assert s.after == 0.2
    clock.now = 14.28125                                    # training over 10 s after the preview
    s.best_state = {"weight": torch.full((2, 2), 7.0), "bias": torch.zeros(2)}   # already restored by the loop
    own = s.model.weight.detach().clone()
    hook.end(s)
    first, last = [f for e, f in s.reporter.seen if e == "preview"]
    assert first["seconds"] == 0.28 and first["step"] == 8      # 18 slices at 1/64 s, at step 8
    # the viewed slices and the next ones: a tenth of 10 s at 1/64 s a slice is 64 slices
    assert last["weights"] == "final" and last["viewed"] == [97, 99] and last["slices"] == 64
    assert last["step"] == 12 and last["seconds"] == 1.0 and last["suggest"] == [0]
    assert torch.equal(seen[-1], own)                       # the model as it is, not the stored best
    assert s.aside == (18 + 64) / 64


def test_a_whole_volume_last_preview_is_left_out_when_it_would_cost_too_much(tmp_path):
    clock = Clock()

    class Whole(FakeTarget):
        whole_volume = True

    for gap, expected in ((200.0, 2), (100.0, 1)):         # 30 slices at 0.5 s: 15 s; a tenth of 200 s allows it
        target = Whole(clock, per_slice=0.5)
        hook = Preview(tmp_path, target, every=1.0, clock=clock)
        s, _ = _state()
        (tmp_path / VIEW_FILE).write_text(json.dumps({"case": 1, "slices": []}))
        hook.start(s)
        clock.now += 1.0
        s.step = 1
        hook.step_end(s)                                    # the whole case once: 15 s
        assert s.after == 0.0                               # a tenth of no time: it would be left out
        clock.now += gap
        assert hook.last_cost(clock.now) == (15.0 if expected == 2 else 0.0)
        hook.end(s)
        assert len(target.calls) == expected and target.calls[0] == (1, list(range(30)))
    hook = Preview(tmp_path, Whole(clock), every=1.0, clock=clock)
    s, _ = _state()
    hook.start(s)
    hook.end(s)                                             # no cost measured: no whole-volume preview
    assert hook.target.calls == []
    # exactly at the share (15 s, an eighth of 120 s): still shown
    hook = Preview(tmp_path, Whole(clock, per_slice=0.5), every=1.0, overhead=0.125, clock=clock)
    s, _ = _state()
    hook.start(s)
    clock.now += 1.0
    s.step = 1
    hook.step_end(s)
    clock.now += 120.0
    assert hook.last_cost(clock.now) == 15.0
    hook.end(s)
    assert len(hook.target.calls) == 2


def test_the_extra_slices_follow_the_time_since_the_last_preview(tmp_path):
    clock = Clock()
    target = FakeTarget(clock, per_slice=1 / 64)
    hook = Preview(tmp_path / "new" / "preview", target, every=1.0, clock=clock)
    assert (tmp_path / "new" / "preview").is_dir()           # made with its parents
    s, _ = _state()
    hook.start(s)
    clock.now = 1.0
    hook.step_end(s)                                        # 16 slices, 0.25 s: ends at 1.25
    clock.now = 10.0
    hook.step_end(s)                                        # 8.75 s later
    assert len(target.calls[1][1]) == int(0.1 * 8.75 / (1 / 64))
    # the viewed slice alone when it already costs more than a tenth: one slice of a 30-slice case
    (tmp_path / "new" / "preview" / VIEW_FILE).write_text(json.dumps({"case": 1, "slices": [5]}))
    assert hook.plan(1, [5], 0.1) == [5]
    clock.now = 100.0
    hook.due = 0.0
    hook.per_slice = 10.0                                   # as if slices had become expensive
    hook.step_end(s)
    last = [f for e, f in s.reporter.seen if e == "preview"][-1]
    assert last["predicted"] == [5] and last["covered"] == 0.033   # 1 of 30
    assert hook.per_slice == 1 / 64                         # its measured cost, per slice


def test_the_budget_keeps_back_the_last_preview():
    clock = Clock()
    budget = TimeBudget(10.0, clock=clock)
    s, _ = _state()
    budget.start(s)
    stops = []
    while not stops or not stops[-1]:
        clock.now += 1.0
        s.step += 1
        s.after = 2.0                                      # the preview hook's estimate of its last one
        stops.append(budget.step_end(s))
    # after step 7, 10 - 7 - 2 = 1 s is left: one more step; after step 8 none (without the last
    # preview kept back, 10 steps)
    assert len(stops) == 8
    assert "~2 s kept" in s.reporter.seen[-1][1]["message"]


def _until_the_budget_stops(tmp_path, seconds, every, finish_steps=0.0):
    """The budget, then the preview (the loop's order), 1-s steps until the budget stops training,
    then the last preview: the last step, the times of the previews during training, whether one
    was due at the last step, and the weights each preview showed."""
    clock = Clock()
    s, _ = _state()
    target = FakeTarget(clock, per_slice=1 / 1024)
    budget = TimeBudget(seconds, clock=clock, finish_steps=finish_steps)
    hook = Preview(tmp_path, target, every=every, clock=clock)
    budget.start(s)
    hook.start(s)
    while not s.stopping:
        clock.now += 1.0
        s.step += 1
        budget.step_end(s)
        hook.step_end(s)
    during, due = list(target.times), clock.now >= hook.due
    hook.end(s)
    return s.step, during, due, [f["weights"] for e, f in s.reporter.seen if e == "preview"]


def test_no_preview_at_the_step_the_budget_stops_training_the_last_one_follows(tmp_path):
    # a preview due at the step where the budget stops would be followed at once by the last
    # preview (end()): only that one comes. Three steps' worth kept back for the package: the
    # budget stops at 8 s of 12, the job ending after more than half an interval
    step, during, due, shown = _until_the_budget_stops(tmp_path, 12.0, every=4.0, finish_steps=3)
    assert step == 8 and due and during == [4.0]   # none at step 8
    assert shown == ["current", "final"]


def test_no_periodic_preview_when_the_budget_ends_within_half_an_interval(tmp_path):
    # a preview due at 8 s of a 9.5-s budget would come 1-2 s before the last one (the finished
    # model): the user would see two previews in a row and training lose the time of one
    step, during, _, shown = _until_the_budget_stops(tmp_path, 9.5, every=4.0)
    assert step == 9 and during == [4.0]   # due again at 8 s: 1.5 s of the budget left
    assert shown == ["current", "final"]


def test_a_preview_comes_when_the_budget_ends_half_an_interval_away_or_more(tmp_path):
    clock = Clock()
    shown = []
    for ends_in in (2.0, 1.99):         # every 4 s: half an interval is 2 s
        s, _ = _state()
        hook = Preview(tmp_path, FakeTarget(clock), every=4.0, clock=clock)
        hook.start(s)
        clock.now += 4.0
        s.step, s.ends_in = 1, ends_in
        hook.step_end(s)
        shown.append(len(s.reporter.seen))
    assert shown == [1, 0]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_datalist(tmp_path_factory.mktemp("blobs"), (0.8, 0.9, 2.0), (5.0, -3.0, 1.0), OBLIQUE)


ARGS = ["--backbone", "resnet18", "--weights", "none", "--strategy", "finetune", "--batch-size", "2",
        "--patch", "64", "--val-fraction", "0", "--axis", "1", "--progress", "json"]


def test_the_preview_is_the_network_s_prediction_in_the_case_geometry(blobs, tmp_path, capsys, monkeypatch):
    # one step, then a preview at once (--preview-seconds 0), and the last one at the end: the
    # network previewed is the one saved
    preview = tmp_path / "preview"
    preview.mkdir()
    (preview / VIEW_FILE).write_text(json.dumps({"case": 1, "slices": [10, 30]}))
    assert main(["train", "--datalist", str(blobs), "--out", str(tmp_path / "run"), *ARGS, "--epochs", "1",
                 "--steps-per-epoch", "1", "--preview", str(preview), "--preview-seconds", "0"]) == 0
    events = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    shown = [e for e in events if e["event"] == "preview"]
    assert [e["weights"] for e in shown] == ["current", "final"]
    assert all(e["case"] == 1 and e["viewed"] == [10, 30] and e["path"] == str(preview / PREVIEW_FILE)
               for e in shown)
    assert {10, 30} <= set(shown[1]["predicted"])
    img = sitk.ReadImage(str(preview / PREVIEW_FILE))
    ref = sitk.ReadImage(str(blobs.parent / "img1.nii.gz"))
    assert img.GetSize() == ref.GetSize() and np.allclose(img.GetSpacing(), ref.GetSpacing())
    assert np.allclose(img.GetOrigin(), ref.GetOrigin()) and np.allclose(img.GetDirection(), ref.GetDirection())
    got = sitk.GetArrayFromImage(img)                     # (k, j, i); axis 1 = j
    first = sorted({10, 30} | set(coarse_to_fine(40)[:16]))
    assert shown[0]["predicted"] == first and shown[0]["covered"] == round(len(first) / 40, 3)
    predicted = sorted(set(first) | set(shown[1]["predicted"]))   # the last one's extra slices vary with its timing
    assert shown[1]["covered"] == round(len(predicted) / 40, 3)
    # a preview predicts each slice alone (its slices are scattered); Apply also smooths along the
    # slices (inference/windows.py): the same network with that off
    monkeypatch.setattr(windows, "SMOOTH_PIXELS", 0.0)
    full = mt.predict(tmp_path / "run", mt.read_case(blobs.parent / "img1.nii.gz")).label
    others = [j for j in range(40) if j not in predicted]
    assert np.mean(got[:, predicted, :] == full[:, predicted, :]) > 0.999
    assert not got[:, others, :].any()                    # not predicted yet: empty
    assert set(np.unique(got)) <= {0, 1, 2} and got.any()


def test_previews_change_nothing_in_training(blobs, tmp_path):
    config = dict(backbone="resnet18", weights=None, strategy="finetune", epochs=2, steps_per_epoch=3, batch_size=2,
                  patch=64, val_fraction=0)
    quiet = Reporter(stream=None, bar=False)
    plain = mt.train(blobs, tmp_path / "plain", reporter=quiet, **config)
    events = []
    shown = mt.train(blobs, tmp_path / "shown", reporter=Reporter(sink=events.append, stream=None, bar=False),
                     **config, preview=str(tmp_path / "p"), preview_seconds=0)
    assert sum(e["event"] == "preview" for e in events) >= 1
    a, b = ModelPackage.load(plain.package).state_dict(), ModelPackage.load(shown.package).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)        # BatchNorm back in training mode, no randomness used


def test_a_classifier_has_no_preview():
    from MedTransferLib.training.skeleton import Task

    with pytest.raises(mt.MedTransferError, match="--preview shows a segmentation"):
        Task().preview_target()


def test_slice_uncertainty_is_the_expected_number_of_wrong_voxels():
    p = np.zeros((2, 3, 1, 2), np.float32)
    p[0, :, 0, 0] = [0.5, 0.3, 0.2]      # wrong with probability 0.5
    p[0, :, 0, 1] = [0.1, 0.9, 0.0]      # 0.1
    p[1, :, 0, 0] = [1.0, 0.0, 0.0]      # certain
    p[1, :, 0, 1] = [0.2, 0.2, 0.6]      # 0.4
    assert slice_uncertainty(p) == pytest.approx([0.6, 0.4])


def test_suggestions_are_the_most_uncertain_slices_away_from_labelled_ones():
    u = np.array([9.0, 0, 0, 5, 1, 8, 7, 0, 2, 3, 0, 0])
    # by uncertainty 0, 5, 6, 3, 9, 8, 4; labelled: slice 1. 0 and 3 are within 3 of it, 6 and 4 of 5,
    # 8 of 9; 11 is certain (0) and never suggested
    assert suggest_slices(u, [1], n=1) == [5]
    assert suggest_slices(u, [1], n=3) == [5, 9]
    assert suggest_slices(u, [1], n=3, min_gap=1) == [0, 5, 6]
    assert suggest_slices({3: 1.0, 9: 2.0}, [8], n=2) == [3]   # only scored slices; 9 next to 8
    assert suggest_slices(np.zeros(5), [], n=1) == []


def test_the_slice_preview_writes_labels_in_the_case_geometry_and_suggests_from_its_probabilities(tmp_path):
    # a (k, j, i) = (4, 5, 6) case previewed along voxel axis 0 (i): slices are the last array axis
    geometry = Geometry((6, 5, 4), (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), OBLIQUE)
    label = np.full((4, 5, 6), IGNORE, np.uint8)
    label[:, :, 0] = 0                     # i = 0 labelled
    case = Case(np.zeros((4, 5, 6), np.float32), geometry, label)
    calls = []

    def predict(c, slices):                # probabilities (n, 3, H, W) with H, W = (k, j) = (4, 5)
        calls.append(list(slices))
        p = np.zeros((len(slices), 3, 4, 5), np.float32)
        for n, s in enumerate(slices):
            p[n, s % 3] = 0.6                  # class s % 3 everywhere, with probability 0.6
            p[n, (s + 1) % 3] = 0.4
            if s == 4:
                p[n, :, 0, 0] = [0.2, 0.4, 0.4]    # one voxel less sure; its first maximum is class 1
        return p

    preview = SlicePreview([case], 0, [3, 7], predict)
    assert preview.slices(0) == 6
    path = preview.write(0, [1, 4], tmp_path / "p.nrrd")
    got = sitk.ReadImage(str(path))
    assert got.GetSize() == (6, 5, 4) and np.allclose(got.GetSpacing(), geometry.spacing)
    assert np.allclose(got.GetDirection(), OBLIQUE) and np.allclose(got.GetOrigin(), geometry.origin)
    arr = sitk.GetArrayFromImage(got)
    expect = np.zeros((4, 5, 6), np.uint8)
    expect[:, :, 1] = 3                    # class 1 → value 3
    expect[:, :, 4] = 3                    # 4 % 3 = 1 → 3, and the uncertain voxel's first maximum is class 1 too
    assert np.array_equal(arr, expect)
    assert preview.covered(0) == pytest.approx(2 / 6)
    # uncertainty: 20 voxels × 0.4 on slice 1; slice 4 has one voxel at 0.6 instead
    assert preview.uncertainty[0] == pytest.approx({1: 8.0, 4: 8.2})
    assert preview.suggest(0) == [4]       # slice 1 is within 3 of the labelled slice 0
    preview.write(0, [2], tmp_path / "p.nrrd")   # later previews keep earlier slices
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert (arr[:, :, 2] == 7).all() and (arr[:, :, 1] == 3).all()


def test_a_preview_predicts_a_batch_of_slices_at_a_time(tmp_path):
    # 35 slices of a 40-slice case: three calls of 16, 16 and 3 slices (a whole preview's
    # probabilities at once cost more per slice than the first preview's measured), each slice's
    # classes and uncertainty as one call would give; a 3D model's whole volume stays one call
    geometry = Geometry((5, 4, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), OBLIQUE)
    case = Case(np.zeros((40, 4, 5), np.float32), geometry, np.zeros((40, 4, 5), np.uint8))
    calls = []

    def predict(c, slices):
        calls.append(list(slices))
        p = np.full((len(slices), 3, 4, 5), 0.2, np.float32)
        for n, z in enumerate(slices):
            p[n, z % 3] = 0.6
        return p

    other = Case(np.zeros((40, 4, 5), np.float32), geometry, np.zeros((40, 4, 5), np.uint8))
    preview = SlicePreview([other, case], 2, [3, 7], predict)
    preview.write(0, [0, 1], tmp_path / "other.nrrd")     # another case's map is its own
    calls.clear()
    wanted = list(range(2, 37))
    image = sitk.ReadImage(str(preview.write(1, wanted, tmp_path / "p.nrrd")))
    assert image.GetPixelID() == sitk.sitkUInt8           # a label map: Slicer reads it as labels
    arr = sitk.GetArrayFromImage(image)
    assert calls == [wanted[:16], wanted[16:32], wanted[32:]]
    lut = np.array([0, 3, 7])
    assert all((arr[z] == lut[z % 3]).all() for z in wanted) and not arr[[0, 1, 37, 38, 39]].any()
    assert sorted(preview.uncertainty[1]) == wanted
    calls.clear()
    whole = SlicePreview([case], 2, [3, 7], lambda c, slices: calls.append(list(slices)) or
                         np.ones((len(slices), 4, 5), np.uint8), whole_volume=True)
    whole.write(0, list(range(40)), tmp_path / "w.nrrd")
    assert calls == [list(range(40))]


def test_the_preview_of_a_volume_painted_on_some_slices_is_guided_by_them(tmp_path):
    # painted: slices 0 and 4 with class 1 (value 3) in a 2×2 square; the network is unsure (0.6
    # for class 2) everywhere. Between the painted slices the guide wins; painted slices are shown
    # as painted; beyond slice 4 (it holds a structure) the network decides.
    geometry = Geometry((6, 5, 7), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), OBLIQUE)
    label = np.full((7, 5, 6), IGNORE, np.uint8)
    for k in (0, 4):
        label[k] = 0
        label[k, 1:3, 1:3] = 3
    case = Case(np.zeros((7, 5, 6), np.float32), geometry, label)

    def predict(c, slices):
        p = np.full((len(slices), 3, 5, 6), 0.2, np.float32)
        p[:, 2] = 0.6
        return p

    preview = SlicePreview([case], 2, [3, 7], predict)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(preview.write(0, list(range(7)), tmp_path / "p.nrrd"))))
    square = np.zeros((5, 6), np.uint8)
    square[1:3, 1:3] = 3
    for k in range(5):
        assert np.array_equal(arr[k], square), k
    assert (arr[5:] == 7).all()
    # labelled all over (unpainted slices are background): the network alone
    full = Case(case.image, geometry, np.where(label == IGNORE, 0, label).astype(np.uint8))
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(SlicePreview([full], 2, [3, 7], predict).write(
        0, list(range(7)), tmp_path / "q.nrrd"))))
    assert (arr == 7).all()
