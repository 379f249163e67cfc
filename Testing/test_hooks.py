"""The training loop's hooks, each alone, on a tiny network: the step, early stopping, AdaBN,
checkpoints — and the loop calling them in order."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import Events

from MedTransferLib.core.errors import OutOfMemory
from MedTransferLib.training.checkpoints import Checkpoints
from MedTransferLib.training.hooks import (
    AdaBNFirst,
    EarlyStopping,
    Hook,
    LoopState,
    SmallBatchesFirst,
    TrainStep,
    Validation,
)
from MedTransferLib.training.loop import fit
from MedTransferLib.training.optim import Optimisation
from MedTransferLib.training.strategies import get_strategy


def _state(model=None, metric="val_dice"):
    model = model or torch.nn.Linear(2, 2)
    return LoopState(model, SimpleNamespace(adapt_bn_first=False), None, Events(), metric)


def test_the_step_is_plain_adamw_on_the_cpu():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(net.state_dict())
    w0 = net.weight.detach().clone()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    step = TrainStep(net, torch.nn.functional.cross_entropy, torch.optim.AdamW(net.parameters(), lr=0.1),
                     torch.device("cpu"))
    loss = step(x, y)
    ref_opt = torch.optim.AdamW(twin.parameters(), lr=0.1)
    ref = torch.nn.functional.cross_entropy(twin(x), y)
    ref.backward()
    ref_opt.step()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()))
    assert torch.equal(net.weight, twin.weight) and not torch.equal(net.weight, w0)


def test_out_of_memory_becomes_a_named_error_and_drops_the_gradients():
    class Hungry(torch.nn.Linear):
        def forward(self, x):
            raise torch.OutOfMemoryError("CPU out of memory")

    net = Hungry(3, 2)
    net.weight.grad = torch.ones_like(net.weight)
    step = TrainStep(net, torch.nn.functional.cross_entropy, torch.optim.AdamW(net.parameters()), torch.device("cpu"))
    with pytest.raises(OutOfMemory, match="batch of 5"):
        step(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    assert net.weight.grad is None


def test_early_stopping_keeps_the_best_calls_on_best_and_stops_after_patience():
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    calls = []
    hook = EarlyStopping(lambda: Validation(next(scores), {"extra": 1}), patience=2,
                         on_best=lambda hist, epoch, best: calls.append((len(hist), epoch, best)))
    s = _state()
    hook.start(s)
    stops = []
    for epoch in range(1, 5):
        s.epoch, s.record = epoch, {"epoch": epoch, "train_loss": 1.0}
        s.history.append(s.record)
        with torch.no_grad():
            s.model.weight.fill_(epoch)
        hook.epoch_end(s)
        stops.append(hook.should_stop(s))
    assert calls == [(1, 1, 0.5), (2, 2, 0.7)]
    assert stops == [False, False, False, True] and s.best == 0.7 and s.stale == 2
    assert torch.all(s.best_state["weight"] == 2)       # the weights of epoch 2
    assert s.history[2] == {"epoch": 3, "train_loss": 1.0, "val_dice": 0.6, "extra": 1}
    assert s.reporter.seen[-1][1]["message"].startswith("early stop: validation dice did not improve for 2")


def test_adabn_runs_once_and_not_on_resume():
    torch.manual_seed(0)
    class Net(torch.nn.Sequential):
        def stages(self):
            return [self]

    net = Net(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    batches = [torch.randn(4, 1, 8, 8) * 3 + 5 for _ in range(2)]
    hook = AdaBNFirst(lambda: iter(batches), torch.device("cpu"))
    s = _state(net)
    s.strategy = SimpleNamespace(adapt_bn_first=True)
    s.resumed = True
    hook.start(s)
    assert torch.equal(net[1].running_mean, torch.zeros(2))       # resumed: untouched
    s.resumed = False
    hook.start(s)
    with torch.no_grad():
        expected = torch.stack([net[0](b).mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(net[1].running_mean, expected, atol=1e-5)


def test_checkpoints_restore_what_they_saved(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=4, steps_per_epoch=2, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    opt = Optimisation(net, strategy, config)
    rng = np.random.default_rng(7)
    rng.random(3)
    s = LoopState(net, strategy, opt, Events(), epoch=2, step=4, stale=1, best=0.5,
                  history=[{"epoch": 1}, {"epoch": 2}], best_state={"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
    Checkpoints(tmp_path / "state", [rng]).epoch_end(s)
    expected_draw = rng.random()

    net2 = torch.nn.Linear(3, 2)
    rng2 = np.random.default_rng(0)
    hook = Checkpoints(tmp_path / "state", [rng2], resume=True)
    assert hook.resuming
    s2 = LoopState(net2, strategy, Optimisation(net2, strategy, config), Events())
    hook.start(s2)
    assert s2.first_epoch == 3 and s2.step == 4 and s2.stale == 1 and s2.best == 0.5
    assert s2.history == [{"epoch": 1}, {"epoch": 2}] and torch.equal(s2.best_state["weight"], torch.ones(2, 3))
    assert torch.equal(net2.weight, net.weight) and rng2.random() == expected_draw
    assert not Checkpoints(tmp_path / "fresh", []).resuming


def test_the_loop_calls_hooks_in_order_and_restores_the_best_weights():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=3, steps_per_epoch=2, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    order = []

    class Spy(Hook):
        def __init__(self, name):
            self.name = name

        def start(self, s):
            order.append(("start", self.name))

        def epoch_end(self, s):
            order.append((s.epoch, self.name, len(s.history)))

    scores = iter([0.9, 0.1, 0.2])
    weights_at_best = {}

    def validate():
        weights_at_best.setdefault("w", net.weight.detach().clone())
        return Validation(next(scores))

    history, metrics = fit(net, strategy, Optimisation(net, strategy, config), config, torch.device("cpu"),
                           lambda: (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), torch.nn.functional.cross_entropy,
                           Events(), "val_x", [Spy("a"), EarlyStopping(validate, patience=5), None, Spy("b")])
    assert order[:2] == [("start", "a"), ("start", "b")]
    assert order[2:] == [(e, n, e) for e in (1, 2, 3) for n in ("a", "b")]
    assert metrics["best_val_x"] == 0.9 and metrics["steps_run"] == 6 and not metrics["stopped_early"]
    assert torch.equal(net.weight, weights_at_best["w"])   # epoch 1's weights are back
    assert [h["val_x"] for h in history] == [0.9, 0.1, 0.2]


def test_without_validation_there_is_no_best_score_and_adabn_strategies_need_their_hook():
    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=1, steps_per_epoch=1, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    batch = lambda: (torch.randn(2, 3), torch.tensor([0, 1]))  # noqa: E731
    _, metrics = fit(net, strategy, Optimisation(net, strategy, config), config, torch.device("cpu"), batch,
                     torch.nn.functional.cross_entropy, Events(), "val_x")
    assert metrics["best_val_x"] is None and math.isfinite(metrics["train_seconds"])
    adabn = SimpleNamespace(adapt_bn_first=True)
    with pytest.raises(ValueError, match="AdaBNFirst"):
        fit(net, adabn, None, config, torch.device("cpu"), batch, None, Events())


def test_the_time_budget_stops_before_a_step_would_overrun_it():
    from MedTransferLib.training.hooks import TimeBudget

    ticks = iter([100.0, 101.0, 102.0, 103.5, 104.0])   # start, then the end of each step
    budget = TimeBudget(5.0, clock=lambda: next(ticks))
    s = _state()
    budget.start(s)
    ends = []
    for step in range(1, 5):
        s.step = step
        ends.append(budget.step_end(s))
    # after step 3 (3.5 s, longest step 1.5 s) a fourth would end at 5.0: still in; after step 4
    # (4.0 s) the next would end at 5.5: stop
    assert ends == [False, False, False, True] and budget.should_stop(s)
    assert "after step 4 (4 of 5 s;" in s.reporter.seen[-1][1]["message"]


def _budget(clock, seconds, **kwargs):
    """A TimeBudget on ``clock.now``, started on a new loop state."""
    from MedTransferLib.training.hooks import TimeBudget

    budget, s = TimeBudget(seconds, clock=lambda: clock.now, **kwargs), _state()
    budget.start(s)
    return budget, s


def _steps(budget, s, clock, first: int, seconds: list) -> list:
    """Steps ``first``, ``first + 1``, ... taking ``seconds`` each until the budget stops them:
    what each step's end returned."""
    stops = []
    for step, took in enumerate(seconds, start=first):
        clock.now += took
        s.step = step
        stops.append(budget.step_end(s))
        if stops[-1]:
            break
    return stops


def test_the_budget_counts_from_the_job_s_start_and_keeps_back_the_end_of_the_run():
    clock = SimpleNamespace(now=10.0)
    # the job started at 6.0 (4 s of start-up before the loop); the package costs 2 steps' worth,
    # the process's exit 1 s
    budget, s = _budget(clock, 20.0, since=6.0, finish_steps=2.0, exit_seconds=1.0)
    stops = _steps(budget, s, clock, 1, [1.0] * 3)   # three 1-second steps, then an epoch end of 3 s
    # after step 3 (at 13.0): 20 - 7 - 2 - 1 = 10 s left at 1 s a step, the job ends in 13 s
    assert (s.steps_due, s.ends_in) == (13, 13.0)
    clock.now += 3.0
    budget.epoch_end(s)
    assert budget.closing == 3.0 and budget.longest == 1.0
    # at 16.0: 20 - (16 - 6) - 3 (closing) - 2 * 1 (package) - 1 (exit) = 4 s left
    assert budget.left(clock.now) == 4.0
    stops += _steps(budget, s, clock, 4, [1.0] * 6)
    # the epoch end is not a step (longest stays 1 s); after step 6 (at 19.0) 1 s is left: one
    # more step fits; after step 7 (at 20.0: 14 s of the job) none
    assert budget.longest == 1.0 and stops == [False] * 6 + [True]
    assert "after step 7 (14 of 20 s; ~6 s kept to close the epoch, write the model and exit)" \
        in s.reporter.seen[-1][1]["message"]


def test_the_package_is_kept_back_at_the_average_step_not_the_first_slow_one():
    clock = SimpleNamespace(now=0.0)
    budget, s = _budget(clock, 20.0, since=0.0, finish_steps=2.0, exit_seconds=1.0)
    # the first step 4 s (its allocations), then 1 s each; after step 3 a 2-s preview, which is
    # not a step's time
    stops = _steps(budget, s, clock, 1, [4.0, 1.0, 1.0])
    clock.now += 2.0
    s.aside += 2.0
    stops += _steps(budget, s, clock, 4, [1.0] * 16)
    # after step k (k >= 3) the clock reads k + 5 and the steps took k + 3 s: left = 20 - (k + 5)
    # - 2 (k + 3) / k - 1, which falls under the longest step (4 s) after step 8 (3.25 s); kept
    # back at the longest step instead, training would have stopped after step 3
    assert budget.average() == 11.0 / 8 and budget.longest == 4.0
    assert stops == [False] * 7 + [True]
    assert "after step 8 (13 of 20 s; ~4 s kept" in s.reporter.seen[-1][1]["message"]
    # the last 10 steps only: a first run's half batches (0.5 s) then full ones (1 s) — the
    # package's forward passes cost what a step costs by then, not the run's average
    budget, s = _budget(clock, 100.0)
    assert budget.average() == 0.0
    assert _steps(budget, s, clock, 1, [0.5] * 15) == [False] * 15 and budget.average() == 0.5
    assert _steps(budget, s, clock, 16, [1.0] * 10) == [False] * 10
    assert budget.average() == 1.0 and budget.longest == 1.0


def test_progress_events_count_down_to_the_budget_s_end():
    s = _state()
    s.step = 10
    assert s.remaining(200, 5.0) == (200, 95.0)           # no budget: the schedule at 0.5 s a step
    s.steps_due, s.ends_in = 40, 20.0
    assert s.remaining(200, 5.0) == (40, 20.0)            # the budget ends the run: when the job ends
    s.steps_due = 500
    assert s.remaining(200, 5.0) == (200, 20.0)           # never past the schedule; it ends first
    s.ends_in = 100.0
    assert s.remaining(200, 5.0) == (200, 95.0)           # the schedule at 0.5 s a step
    s.ends_in = -1.0
    assert s.remaining(200, 5.0) == (200, 0.0)            # never below 0
    s.steps_due = 4
    assert s.remaining(200, 5.0) == (10, 0.0)             # never below the steps made
    s.step, s.steps_due, s.ends_in = 3, None, None
    assert s.remaining(10, 5.0) == (10, 11.7)             # 7 steps at 5/3 s, to a tenth of a second
    s.step = 1
    assert s.remaining(10, 2.0) == (10, 18.0)             # after the first step: 9 more at 2 s


def test_the_loop_ends_mid_epoch_on_the_budget_and_scores_that_epoch():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=3, steps_per_epoch=4, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    events = Events()

    class AfterSix(Hook):
        def step_end(self, s):
            s.steps_due, s.ends_in = 6, 0.5      # as a time budget estimates it
            return s.step == 6

        def should_stop(self, s):
            return s.step == 6

    history, metrics = fit(net, strategy, Optimisation(net, strategy, config), config, torch.device("cpu"),
                           lambda: (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), torch.nn.functional.cross_entropy,
                           events, "val_x", [EarlyStopping(lambda: Validation(0.5), patience=9), AfterSix()])
    assert metrics["steps_run"] == 6 and metrics["epochs_run"] == 2 and metrics["stopped_early"]
    steps = [f for e, f in events.seen if e == "step"]
    # the first step's event comes before any estimate: the schedule's 12 steps; then the budget's 6
    assert [f["steps_total"] for f in steps] == [12, 6, 6, 6, 6, 6]
    assert all(f["eta_s"] <= 0.5 for f in steps[1:])
    assert [h["val_x"] for h in history] == [0.5, 0.5]


def test_the_budget_s_estimates_follow_the_pace_and_a_resumed_run_s_own_steps():
    from MedTransferLib.training.hooks import TimeBudget

    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=10, steps_per_epoch=10, warmup_fraction=0.05)
    opt = Optimisation(net, get_strategy("finetune"), config)
    clock = SimpleNamespace(now=0.0)
    budget = TimeBudget(40.0, clock=lambda: clock.now, fit_schedule=True)
    s = LoopState(net, get_strategy("finetune"), opt, Events())
    budget.start(s)
    assert not budget.should_stop(s)
    for step in range(1, 12):              # ten steps of 0.5 s, then slower ones of 1 s
        clock.now += 0.5 if step <= 10 else 1.0
        s.step = step
        budget.step_end(s)
        if step == 10:                     # 35 s left at 0.5 s a step: 70 more
            assert opt.horizon == 80 and s.steps_due == 80 and s.ends_in == 35.0
    assert opt.horizon == 80                # the schedule is refitted every 10 steps, not at step 11
    # a resumed run (step 10 on) with 2-s steps: the pace counts its own steps only
    clock.now = 0.0
    budget = TimeBudget(10.0, clock=lambda: clock.now, since=0.0, finish_steps=2.0, exit_seconds=1.0)
    s = _state()
    s.step = 10
    budget.start(s)
    clock.now, s.step = 2.0, 11
    assert budget.step_end(s) is False      # 10 - 2 - 2 * 2 - 1 = 3 s left: one more 2-s step
    assert s.steps_due == 12
    clock.now, s.step = 4.0, 12
    assert budget.step_end(s) is True       # 1 s left
    event, fields = s.reporter.seen[-1]
    assert event == "note" and "after step 12 (4 of 10 s; ~5 s kept" in fields["message"]


def test_the_time_budget_fits_the_learning_rate_decay_to_the_steps_it_leaves():
    from MedTransferLib.training.hooks import TimeBudget

    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=10, steps_per_epoch=10, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    opt = Optimisation(net, strategy, config)
    clock = iter(float(t) for t in range(0, 1000))          # one second per step
    budget = TimeBudget(20.0, clock=lambda: next(clock), fit_schedule=True)
    s = LoopState(net, strategy, opt, Events())
    budget.start(s)
    assert opt.horizon == 100
    stopped = []
    while not stopped:
        opt.optimizer.step()
        opt.schedule.step()
        s.step += 1
        if budget.step_end(s):
            stopped.append(s.step)
    assert stopped == [20] and opt.horizon == 20               # 10 steps done, 10 more fit in 20 s
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)   # decayed by the end


def test_without_fitting_the_budget_leaves_the_planned_schedule():
    from MedTransferLib.training.hooks import TimeBudget

    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=10, steps_per_epoch=10, warmup_fraction=0.05)
    opt = Optimisation(net, get_strategy("finetune"), config)
    clock = iter(float(t) for t in range(0, 1000))
    budget = TimeBudget(20.0, clock=lambda: next(clock))
    s = LoopState(net, get_strategy("finetune"), opt, Events())
    budget.start(s)
    for step in range(1, 21):
        s.step = step
        budget.step_end(s)
    assert opt.horizon == 100


class _Staged(torch.nn.Module):
    """Two encoder stages (conv + BatchNorm) and a head: gradual unfreezing adds a parameter group
    per epoch, so a resumed run must replay them in order."""

    def __init__(self):
        super().__init__()
        self.s0 = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3))
        self.s1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.head = torch.nn.Conv2d(4, 2, 1)

    def stages(self):
        return [self.s0, self.s1]

    def forward(self, x):
        return self.head(torch.relu(self.s1(torch.relu(self.s0(x)))))


def _staged_run(folder, epochs, resume=False, stop_after=None):
    """A tiny gradual-unfreezing run with validation and checkpoints; numpy draws its batches."""
    torch.manual_seed(0)
    net = _Staged()
    config = SimpleNamespace(lr=1e-2, weight_decay=1e-2, epochs=epochs, steps_per_epoch=3, warmup_fraction=0.2)
    strategy = get_strategy("adabn+gradual:1")      # AdaBN first: not again when resuming
    rng = np.random.default_rng(5)
    opt = Optimisation(net, strategy, config)

    def batch():
        x = torch.from_numpy(rng.normal(size=(2, 1, 6, 6)).astype(np.float32))
        return x, (x[:, 0] > 0).long()

    xv = torch.from_numpy(np.random.default_rng(9).normal(size=(4, 1, 6, 6)).astype(np.float32))

    def validate():   # a score that depends only on the weights: the same in every run
        net.eval()
        with torch.no_grad():
            return Validation(-float(torch.nn.functional.cross_entropy(net(xv), (xv[:, 0] > 0).long())))

    events = Events()

    class Stop(Hook):
        def should_stop(self, s):
            return s.epoch == stop_after

    def adapt_inputs():
        for i in range(2):
            yield torch.from_numpy(np.random.default_rng(i).normal(2, 3, size=(4, 1, 6, 6)).astype(np.float32))

    hooks = [AdaBNFirst(adapt_inputs, torch.device("cpu")), EarlyStopping(validate, 9),
             Checkpoints(folder, [rng], resume), Stop()]
    history, metrics = fit(net, strategy, opt, config, torch.device("cpu"), batch,
                           torch.nn.functional.cross_entropy, events, "val_x", hooks)
    return net, opt, history, metrics, events


def test_a_resumed_run_replays_the_unfrozen_groups_and_ends_bit_identical(tmp_path):
    net, opt, history, metrics, _ = _staged_run(tmp_path / "whole", 4)
    # the same run stopped after epoch 2 (its checkpoint written), then resumed to epoch 4
    _, _, first, _, _ = _staged_run(tmp_path / "part", 4, stop_after=2)
    assert len(first) == 2
    net2, opt2, history2, metrics2, events = _staged_run(tmp_path / "part", 4, resume=True)
    assert [h["epoch"] for h in history2] == [1, 2, 3, 4]
    assert history2 == history                                    # losses and scores, exactly
    a, b = net.state_dict(), net2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)                 # the best weights, bit for bit
    assert len(opt2.optimizer.param_groups) == len(opt.optimizer.param_groups) == 3   # head + 2 stages
    assert [g["lr"] for g in opt2.optimizer.param_groups] == [g["lr"] for g in opt.optimizer.param_groups]
    assert opt2.schedule.last_epoch == opt.schedule.last_epoch == 12
    assert metrics2["best_val_x"] == metrics["best_val_x"] and metrics2["steps_run"] == 12
    state = opt2.optimizer.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg"], opt.optimizer.state_dict()["state"][i]["exp_avg"]) for i in state)
    note = [f["message"] for e, f in events.seen if e == "note" and "resumed" in f.get("message", "")]
    assert note == ["resumed after epoch 2 (step 6 of 12)"]


def test_resume_reads_the_previous_state_when_a_crash_fell_between_the_two_renames(tmp_path):
    from MedTransferLib.training.checkpoints import load_state

    _staged_run(tmp_path / "run", 1)
    (tmp_path / "run").rename(tmp_path / "run.old")             # the new one not yet in place
    state, tensors = load_state(tmp_path / "run")
    assert state["epoch"] == 1 and any(k.startswith("opt.") for k in tensors)
    with pytest.raises(Exception, match="no resumable training state"):
        load_state(tmp_path / "nothing")


def test_the_first_epochs_train_on_small_batches_and_a_resumed_run_takes_up_where_it_was():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-2, weight_decay=0.0, epochs=4, steps_per_epoch=3, warmup_fraction=0.05)
    strategy = get_strategy("finetune")
    size, seen = {"n": 16}, []

    def next_batch():
        seen.append(size["n"])
        return torch.randn(size["n"], 3), torch.randint(0, 2, (size["n"],))

    def set_batch(n):
        size["n"] = n

    fit(net, strategy, Optimisation(net, strategy, config), config, torch.device("cpu"), next_batch,
        torch.nn.functional.cross_entropy, Events(), "val_x", [SmallBatchesFirst(2, 8, 16, set_batch)])
    assert seen == [8] * 6 + [16] * 6
    # a run resumed in epoch 2 is still in the small phase; one resumed in epoch 3 is past it
    for first_epoch, expected in ((2, 8), (3, 16)):
        hook, s = SmallBatchesFirst(2, 8, 16, set_batch), _state()
        size["n"], s.first_epoch = 0, first_epoch
        hook.start(s)
        assert size["n"] == expected
