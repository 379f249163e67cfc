"""Measurements behind two default choices, on the sample task (Dice on never-labelled slices):

1. Loss: MONAI ``DiceLoss(batch=True)`` over all foreground classes + voxel-averaged
   cross-entropy (a MONAI-tutorial loss) vs ours (class-balanced cross-entropy + batch Dice
   over the classes present in the batch), both for 150 steps.
2. Validation with one sparsely labelled case: holding out 1 of the 5 labelled slices that
   hold structures (early stopping on it) vs training on all of them for the full schedule.

    .venv/bin/python bench/design_choices.py --out runs/bench_design
Dice is deterministic on CPU for a given seed, so these numbers do not depend on machine load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from MedTransferLib.app.demo import run_demo
from MedTransferLib.core.case import IGNORE
from MedTransferLib.data import split as dataset
from MedTransferLib.training import segmentation as trainer


def tutorial_loss():
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, ignore_index=IGNORE)

    def loss(logits, target):
        return F.cross_entropy(logits, target, ignore_index=IGNORE) + dice(logits, target[:, None])

    return loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench_design")
    a = p.parse_args()
    out = Path(a.out)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__}
    quiet = open("/dev/null", "w")

    ours = trainer.loss_function
    trainer.loss_function = tutorial_loss
    results["loss: tutorial CE + MONAI batch Dice, 150 steps"] = run_demo(out / "tutorial_loss", epochs=3, log=quiet)
    trainer.loss_function = ours
    results["loss: ours, 150 steps"] = run_demo(out / "our_loss", epochs=3, log=quiet)

    results["validation: all 5 structure slices trained, 800 steps"] = run_demo(out / "no_holdout", log=quiet)
    dataset.MIN_FG_SLICES_FOR_VALIDATION = 3  # force the hold-out of 1 of the 5
    results["validation: 1 of 5 held out, early stopping"] = run_demo(out / "holdout", log=quiet)

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"Measured {results['date']}, torch {results['torch']}, Colin27 sample task\n")
    print("| setting | mean Dice | min Dice | Dice = 0 | steps |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        if isinstance(r, dict):
            zeros = sum(d == 0 for d in r["dice"].values())
            print(f"| {name} | {r['mean_dice']:.3f} | {r['min_dice']:.3f} | {zeros} of 8 | {r['steps']} |")


if __name__ == "__main__":
    from machine import print_machine  # bench/machine.py

    print_machine()
    sys.exit(main())
