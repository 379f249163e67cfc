"""Which labelled slices train and which validate: whole cases held out when there are several,
slices spread over the structures when there is one."""

from __future__ import annotations

import numpy as np

from MedTransferLib.core.case import IGNORE
from MedTransferLib.core.errors import MedTransferError
from MedTransferLib.data.slabs import Volume

MIN_FG_SLICES_FOR_VALIDATION = 10


SHORT_RUN_NOTE = ("validation: none (a brief continuation of a model cannot stop early, so all "
                  "labelled data trains, the latest corrections included)")


def split_train_val(volumes: list[Volume], val_fraction: float, seed: int, short_run: bool = False):
    """Split labelled slices into training and validation sets.

    Several cases: whole cases go to validation (never one case's slices on both sides).
    One case: whole labelled slices are held out, spread evenly over those with structures —
    when it has at least 10 of them; with fewer, all are needed for training (no validation).
    ``short_run`` (an Update: ``TrainConfig.brief_continuation``): nothing is held out.
    Returns ``(train, val, note)`` with train/val lists of ``(volume index, slice)``.
    """
    labelled = []
    for vi, vol in enumerate(volumes):
        lab = vol.target != IGNORE
        idx = np.nonzero(lab.any(axis=(1, 2)))[0]
        if len(idx) == 0:
            raise MedTransferError(f"case '{vol.case_id}' has no labelled slice; label at least one "
                                   f"slice or remove the case from the datalist")
        labelled.append(idx)
    rng = np.random.default_rng(seed)
    everything = [(vi, int(s)) for vi in range(len(volumes)) for s in labelled[vi]]
    if short_run:
        return everything, [], SHORT_RUN_NOTE
    if len(volumes) > 1 and val_fraction <= 0:   # every case trains (a test found case 0 alone did)
        return (everything, [],
                "validation: none (validation fraction 0); training runs for the full number of epochs "
                "without early stopping")
    if len(volumes) > 1:
        n_val = max(1, round(val_fraction * len(volumes)))
        order = rng.permutation(len(volumes))
        val_cases = set(order[:n_val].tolist())
        train = [(vi, int(s)) for vi in range(len(volumes)) if vi not in val_cases for s in labelled[vi]]
        val = [(vi, int(s)) for vi in sorted(val_cases) for s in labelled[vi]]
        note = (f"validation: {n_val} of {len(volumes)} cases held out "
                f"({', '.join(volumes[v].case_id for v in sorted(val_cases))})")
        return train, val, note
    vol = volumes[0]
    fg = [int(s) for s in labelled[0] if ((vol.target[s] > 0) & (vol.target[s] != IGNORE)).any()]
    empty = [int(s) for s in labelled[0] if int(s) not in set(fg)]
    # Holding out slices from a handful costs more than validation gives (measured on the sample
    # task with bench/design_choices.py: bench/RESULTS.md).
    n_val = round(val_fraction * len(fg)) if len(fg) >= MIN_FG_SLICES_FOR_VALIDATION else 0
    if n_val == 0:
        why = ("validation fraction 0" if val_fraction == 0 else
               f"one case with {len(fg)} labelled slices holding structures; at least "
               f"{MIN_FG_SLICES_FOR_VALIDATION} are needed before some are held out")
        note = (f"validation: none ({why}); training runs for the full number of epochs without "
                f"early stopping")
        return [(0, s) for s in labelled[0]], [], note

    def spread(items, n):
        if n <= 0:
            return []
        pos = (np.arange(n) + 0.5) * len(items) / n
        return [items[int(p)] for p in pos]

    val_slices = set(spread(fg, n_val)) | set(spread(empty, round(val_fraction * len(empty))))
    train = [(0, int(s)) for s in labelled[0] if int(s) not in val_slices]
    val = [(0, s) for s in sorted(val_slices)]
    note = (f"validation: one case, so {len(val)} of {len(labelled[0])} labelled slices are held out "
            f"({n_val} with structures: {sorted(set(spread(fg, n_val)))}); they are not trained on")
    return train, val, note
