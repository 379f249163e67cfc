"""Re-scores the models an interactive bench run saved, with variants of the guide
(inference/guide.py), on exactly the same painted slices: what each part of the guide adds,
without training again (the guided prediction of a given model is deterministic).

    .venv/bin/python bench/guide_rescore.py runs/bench_interactive [runs/bench_interactive_ct ...]

For each round of each run (its ``results.json`` and ``run<N>/model``): Dice on the
never-labelled slices (mean / worst structure) of

- ``network``: the network alone;
- ``plain``: the guide without its wide-gap rules (every gap treated as narrow);
- ``open ends``: wide gaps leave a structure painted on one side only to the network, outline hard;
- ``default``: the guide as shipped (open ends and a soft outline across gaps wider than
  ``WIDE_GAP_MM``).

Prints a Markdown table per run with the machine. Not a test: about a minute per round on 2 CPU cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import MedTransferLib as mt
    import MedTransferLib.inference.guide as guide
    from MedTransferLib.core.case import IGNORE, Case
    from MedTransferLib.core.labels import Label
    from MedTransferLib.data.metrics import evaluate, summary

    shipped = {"WIDE_GAP_MM": guide.WIDE_GAP_MM, "SOFT_MM": guide.SOFT_MM}
    variants = [("plain", {"WIDE_GAP_MM": float("inf")}),
                ("open ends", {"SOFT_MM": 1e-3}),     # σ(−d / 0.001 mm): a hard outline
                ("default", {})]
    np.seterr(over="ignore")                          # exp() of a hard outline saturates, as meant
    for folder in map(Path, argv):
        result = json.loads((folder / "results.json").read_text())
        datalist = folder / "ct_data" / "dataset.json" if result["data"] == "ct" else Path(mt.sample_data())
        data = json.loads(datalist.read_text())
        entry = data["training"][0]
        case = mt.read_case(datalist.parent / entry["image"], datalist.parent / entry["label"])
        ref = case.label
        labels = [Label(int(k), v, (0.5, 0.5, 0.5)) for k, v in data["labels"].items() if int(k) > 0]
        print(f"\n{folder} ({result['data']}, order {result['order']}; bench run {result['date']} on "
              f"{result['machine']})\n")
        print("| painted slices | network alone | plain guide | + open ends | + soft outline (default) |")
        print("|---:|---:|---:|---:|---:|")
        for row in result["rounds"]:
            painted_slices = row["slices"] + row["empty"]
            painted = np.full_like(ref, IGNORE)
            painted[painted_slices] = ref[painted_slices]
            held_out = [s for s in range(ref.shape[0]) if s not in set(painted_slices)]
            package = folder / f"run{len(row['slices'])}" / "model"

            def score(label):
                s = summary(evaluate(label, ref, labels, case.geometry, held_out, axis=2))
                return f"{s['mean_dice']:.3f} / {s['min_dice']:.3f}"

            cells = [score(mt.predict(package, Case(case.image, case.geometry)).label)]
            for _, change in variants:
                for name, value in {**shipped, **change}.items():
                    setattr(guide, name, value)
                try:
                    guided = mt.predict(package, Case(case.image, case.geometry, painted, case.case_id), guide=True)
                finally:
                    for name, value in shipped.items():
                        setattr(guide, name, value)
                cells.append(score(guided.label))
            print(f"| {len(row['slices'])} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import print_machine  # bench/machine.py

    print_machine()
    raise SystemExit(main(sys.argv[1:]))
