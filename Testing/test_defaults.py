"""One place for the training defaults and the strategy list, read by every front end."""

from dataclasses import fields

import pytest

from MedTransferLib.app.cli import build_parser
from MedTransferLib.core.defaults import STRATEGY_PRESETS, TRAINING
from MedTransferLib.training.config import TrainConfig
from MedTransferLib.training.strategies import get_strategy


def test_the_python_api_and_the_cli_default_to_the_same_values():
    config = TrainConfig()
    assert {f.name: getattr(config, f.name) for f in fields(config) if f.name in TRAINING} == TRAINING
    args = build_parser().parse_args(["train", "--datalist", "d.json", "--out", "o"])
    cli = {k: getattr(args, k) for k in TRAINING if hasattr(args, k)}
    assert set(TRAINING) - set(cli) == {"weight_decay", "warmup_fraction"}   # no flags for these
    assert cli.pop("epochs") is None        # 16, or CONTINUE_EPOCHS with --from (cmd_train decides)
    assert cli.pop("mode") is None and cli.pop("slices") is None   # TRAINING's, or the --from model's
    assert cli == {k: v for k, v in TRAINING.items() if k in cli}


@pytest.mark.parametrize("name", STRATEGY_PRESETS)
def test_every_strategy_the_panel_offers_is_one_the_engine_knows(name):
    get_strategy("finetune" if name == "auto" else name)


@pytest.mark.parametrize("bad", [-1, -3])
def test_a_negative_number_of_small_batch_epochs_is_refused_with_the_fix(bad):
    from MedTransferLib.core.errors import MedTransferError

    TrainConfig(small_batch_epochs=0).check()   # 0 turns it off
    with pytest.raises(MedTransferError, match=f"--small-batch-epochs must be 0 \\(off\\) or more, not {bad}"):
        TrainConfig(small_batch_epochs=bad).check()
