"""The shape interpolation alone, without a network: how close the guide's interpolation of the
painted slices (inference/guide.py) comes to the truth, against Slicer's *Fill between slices*
(ITK's MorphologicalContourInterpolator) and against the linear interpolation the guide used
before its monotone cubic, at exactly the slices bench/interactive.py paints (the same
``choose``; two slices beyond the structures marked empty, as there).

    .venv/bin/pip install itk-morphologicalcontourinterpolation      # for the Fill column
    .venv/bin/python bench/interpolation.py [--data colin|ct] [--order even random]
                     [--budgets 3 5 8 12 19] [--out runs/bench_interpolation]

For each order and budget: mean / worst-structure Dice on the never-painted slices of Fill between
slices, the linear interpolation (``guide.CUBIC = False``) and the monotone cubic (as shipped).
Then what the reference itself allows: the interpolation with every other slice painted over the
structures (the densest painting that leaves slices to fill), and how alike consecutive reference
slices are. Prints Markdown tables with the machine. Not a test: about a minute per order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from interactive import choose, fill_between_slices, plan  # noqa: E402  (bench/interactive.py)
from machine import print_machine  # noqa: E402  (bench/machine.py)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["colin", "ct"], default="colin")
    ap.add_argument("--order", nargs="+", choices=["even", "random"], default=["even", "random"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[3, 5, 8, 12, 19])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_interpolation")
    a = ap.parse_args(argv)
    import MedTransferLib as mt
    import MedTransferLib.inference.guide as guide
    from MedTransferLib.core.labels import Label
    from MedTransferLib.data.metrics import dice, evaluate, summary
    from MedTransferLib.data.slabs import from_slices_first, to_slices_first

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.data == "ct":
        from ct_phantom import write as write_phantom

        datalist = write_phantom(out / "ct_data")
    else:
        datalist = mt.sample_data()
    data = json.loads(Path(datalist).read_text())
    entry = data["training"][0]
    case = mt.read_case(Path(datalist).parent / entry["image"], Path(datalist).parent / entry["label"])
    ref = case.label                                          # (k, j, i): k is axial
    labels = [Label(int(k), v, (0.5, 0.5, 0.5)) for k, v in data["labels"].items() if int(k) > 0]
    lut = np.zeros(int(ref.max()) + 1, np.uint8)             # label value → class index
    for i, lab in enumerate(labels, start=1):
        lut[lab.value] = i
    values = np.array([0] + [lab.value for lab in labels], ref.dtype)
    extent, empty = plan(ref, labels)
    lo, hi = min(min(v) for v in extent.values()), max(max(v) for v in extent.values())
    classes = to_slices_first(lut[ref], 2)
    spacing = case.geometry.spacing

    def score(label, painted):
        held = [s for s in range(ref.shape[0]) if s not in set(painted)]
        s = summary(evaluate(label, ref, labels, case.geometry, held, axis=2))
        return s["mean_dice"], s["min_dice"]

    def interpolated(painted, cubic):
        guide.CUBIC = cubic
        try:
            g = guide.interpolate(classes, painted, len(labels) + 1, (spacing[1], spacing[0]), spacing[2])
        finally:
            guide.CUBIC = True
        return values[from_slices_first(g.classes, 2)]

    def cells(*scores):
        return " | ".join("ITK aborted" if m is None else f"{m:.3f} / {w:.3f}" for m, w in scores)

    def fill(painted):
        import subprocess

        try:
            return score(fill_between_slices(ref, painted, out)[0], painted + empty)
        except subprocess.CalledProcessError:      # the ITK filter aborted (SIGABRT) on some inputs
            return None, None

    print(f"\n{data.get('name', a.data)}: mean / worst-structure Dice on the never-painted slices "
          f"(the guide also gets slices {empty}, marked empty)")
    for order in a.order:
        print(f"\n{order} slices\n\n| painted slices | Fill between slices | linear | monotone cubic (shipped) |")
        print("|---:|---:|---:|---:|")
        have: list[int] = []
        for n in a.budgets:
            have = choose(extent, n, order, a.seed, have)
            row = [fill(have), score(interpolated(have + empty, False), have + empty),
                   score(interpolated(have + empty, True), have + empty)]
            print(f"| {len(have)} | {cells(*row)} |", flush=True)
    print("\nEvery other slice painted over the structures (the densest painting that leaves slices to fill):\n")
    print("| painted slices | Fill between slices | linear | monotone cubic (shipped) |")
    print("|---|---:|---:|---:|")
    for start in (lo, lo + 1):
        have = list(range(start, hi + 1, 2))
        row = [fill(have), score(interpolated(have + empty, False), have + empty),
               score(interpolated(have + empty, True), have + empty)]
        print(f"| {len(have)} ({start}, {start + 2}, …) | {cells(*row)} |", flush=True)
    # how alike consecutive reference slices are, pairs starting on even and on odd slices: a
    # reference resampled from thicker slices repeats each of them (alike in one, not the other)
    pairs = {0: [], 1: []}
    for z in range(lo, hi):
        for lab in labels:
            a_, b_ = ref[z] == lab.value, ref[z + 1] == lab.value
            if a_.any() and b_.any():
                pairs[z % 2].append(dice(a_, b_))
    print("\nDice of consecutive reference slices (both holding the structure), mean over structures and "
          f"slices: pairs (even, odd) {np.mean(pairs[0]):.3f}, pairs (odd, even) {np.mean(pairs[1]):.3f}")
    return 0


if __name__ == "__main__":
    print_machine()
    raise SystemExit(main(sys.argv[1:]))
